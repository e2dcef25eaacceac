"""Integers beyond orjson's 64 bits in request bodies: read as written (orjson reads them as
floats), written back as read (orjson refuses them), so a body the EPP rewrites reaches the model
server with the client's integers; and the common body pays no second read."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from epp.requests import jsontext, parser
from epp.requests.errors import ErrorCode, RequestError
from epp.requests.parser import decode_body, parse_request

BIG = "100000000000000000000"  # 10**20: orjson reads 1e+20
BODY = (
    '{"model": "m", "prompt": "hi", "seed": ' + BIG + ', "logit_bias": {"50256": -100},'
    ' "extra": {"low": -9223372036854775809, "u64": 18446744073709551616, "i64": -9223372036854775808,'
    ' "long": [123456789012345678901234567890, 1.5, "' + BIG + '"]}}'
).encode()


def test_integers_beyond_64_bits_are_read_as_written() -> None:
    body = decode_body(BODY)
    assert body == json.loads(BODY)
    assert body["seed"] == 10**20 and body["extra"]["low"] == -(2**63) - 1
    assert body["extra"]["u64"] == 2**64 and body["extra"]["long"][0] == 123456789012345678901234567890
    assert orjson.loads(BODY)["seed"] == 1e20  # what the EPP read before


@pytest.mark.parametrize("compiled", [True, False])
def test_a_body_with_only_64_bit_integers_is_read_once(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orjson keeps -2**63 and 2**64 - 1 (runs of 19 and 20 digits: the scan notes them, the walk
    finds no float), and 19 digits inside a string are text (the Python check, without the C
    scan, notes them too): no second read. The body with 10**20 is read again."""
    if not compiled:
        monkeypatch.setattr(jsontext, "_compiled_scan", None)
    reads: list[bytes] = []
    monkeypatch.setattr(parser, "exact", lambda raw: reads.append(raw) or json.loads(raw))
    edges = b'{"model": "m", "a": -9223372036854775808, "b": 18446744073709551615, "c": 1.5}'
    in_text = b'{"model": "m", "prompt": "' + BIG.encode() + b'", "t": 1.5}'
    for raw in (edges, in_text):
        assert decode_body(raw) == json.loads(raw)
    assert reads == []
    assert decode_body(BODY) == json.loads(BODY) and reads == [BODY]


def test_dumps_writes_what_orjson_refuses_compactly_and_nothing_else() -> None:
    value = json.loads(BODY)
    assert jsontext.dumps(value) == json.dumps(value, separators=(",", ":")).encode()
    assert (
        jsontext.dumps({"b": 2**64, "a": "é"}, sort_keys=True)
        == '{"a":"é","b":18446744073709551616}'.encode()
    )
    assert jsontext.dumps({"a": 1}) == orjson.dumps({"a": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsontext.dumps({"a": object()})


def test_loads_keeps_integers_and_orjsons_errors() -> None:
    assert jsontext.loads(BODY) == json.loads(BODY)
    assert jsontext.loads(b"[" + BIG.encode() + b"]") == [10**20]
    with pytest.raises(orjson.JSONDecodeError):
        jsontext.loads(b'{"a": NaN}')


def test_the_prompt_hashed_from_a_tool_holds_the_integer_as_written() -> None:
    """A Responses tool whose schema holds 10**20: the prompt the prefix index hashes was written
    with 1e20 (and a body orjson could not write would have been a 500)."""
    raw = (
        b'{"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f",'
        b' "parameters": {"const": ' + BIG.encode() + b"}}]}"
    )
    request = parse_request(raw, "/v1/responses", {}, "r1")
    assert b'"const":' + BIG.encode() in request.prompt


@pytest.mark.parametrize(
    ("path", "field", "value", "message"),
    [
        (
            "/v1/completions",
            "prompt",
            [1, 2**64],
            "invalid completions request: prompt must be a string, a list of strings or token ids",
        ),
        (
            "/v1/embeddings",
            "input",
            [[-(2**63) - 1]],
            "invalid embeddings request: input must be a string, a list of strings, token ids or lists "
            "of token ids",
        ),
    ],
)
def test_token_ids_beyond_64_bits_are_still_a_400(path: str, field: str, value: Any, message: str) -> None:
    """As when orjson read them as floats: the block hashes hold 64-bit ids."""
    raw = json.dumps({"model": "m", field: value}).encode()
    with pytest.raises(RequestError) as raised:
        parse_request(raw, path, {}, "r1")
    assert (raised.value.status, raised.value.message) == (400, message)
    edge = json.dumps({"model": "m", field: [2**64 - 1, -(2**63)]}).encode()
    assert parse_request(edge, path, {}, "r1").token_ids == [2**64 - 1, -(2**63)]


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("value", [-(2**63) - 1, -(2**63) - 1024])
def test_an_integer_just_below_minus_2_63_alone_is_read_as_written(
    compiled: bool, value: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orjson reads -2**63 - 1 (down to -2**63 - 1024) as the float -2**63 exactly, a value within
    64 bits: when no other integer in the body is past them, the walk must still take it for one
    orjson could not keep, or the body is forwarded with `-9.223372036854776e18` in its seed."""
    if not compiled:
        monkeypatch.setattr(jsontext, "_compiled_scan", None)
    raw = b'{"model": "m", "prompt": "hi", "seed": ' + str(value).encode() + b"}"
    assert orjson.loads(raw)["seed"] == -(2.0**63)  # what orjson alone reads
    body = decode_body(raw)
    assert body["seed"] == value and type(body["seed"]) is int
    assert jsontext.loads(raw)["seed"] == value
    assert jsontext.dumps(body) == b'{"model":"m","prompt":"hi","seed":' + str(value).encode() + b"}"


@pytest.mark.parametrize("compiled", [True, False])
def test_a_body_opening_more_arrays_and_objects_than_the_limit_is_refused(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orjson spends ~0.8 us on each array it makes, on the event loop: a 16 MiB body of `[],`
    held every request 4 s. Past MAX_JSON_CONTAINERS the body is a 400 (with the C scan, before
    it is parsed); brackets inside strings do not count; the limit is the process's."""
    if not compiled:
        monkeypatch.setattr(jsontext, "_compiled_scan", None)
    monkeypatch.setitem(jsontext._limits, "containers", 10)

    def body(arrays: int, objects: int = 0, text: str = "") -> bytes:
        items = ["[]"] * arrays + ["{}"] * objects
        return f'{{"model": "m", "prompt": "{text}", "x": [{",".join(items)}]}}'.encode()

    assert decode_body(body(7, 1))["x"] == [[]] * 7 + [{}]  # 10 with the body and "x"
    assert decode_body(body(0, text="[{" * 1000))["prompt"] == "[{" * 1000
    for raw in (body(8, 1), body(0, 9)):
        with pytest.raises(RequestError) as refused:
            decode_body(raw)
        assert refused.value.code is ErrorCode.BAD_REQUEST
        assert refused.value.message == (
            "error unmarshaling request body: the body holds more than 10 JSON arrays and objects "
            "(--max-json-containers)"
        )
    jsontext.limit_containers(0)  # no limit
    assert len(decode_body(body(5000))["x"]) == 5000

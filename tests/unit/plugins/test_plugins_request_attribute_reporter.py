"""`request-attribute-reporter` and the CEL subset it evaluates: upstream's config through the
ext_proc stream, the usage it sees, and CEL's typing rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config, load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.extproc.pb import ext_proc
from epp.extproc.stream import ExtProcStream, StreamOptions
from epp.framework import PluginContext
from epp.params.strict import ConfigError
from epp.plugins.request_attribute_reporter import RequestAttributeReporter, usage_object
from epp.requestcontrol.cel import CelError, compile_expression
from epp.requests import Usage
from epp.scheduling.types import SchedulingResult
from tests.unit.extproc.test_extproc_stream import (
    body_msg,
    headers_msg,
    response_body_msg,
    response_headers_msg,
)
from tests.unit.plugin_helpers import plugin, request

README = (
    Path(__file__).parents[2]
    / "data"
    / "upstream"
    / "configs"
    / (
        "llmd-router-ebab687__pkg__epp__framework__plugins__requestcontrol__requestattributereporter__README.md.yaml"
    )
)
USAGE = {"usage": {"prompt_tokens": 10.0, "completion_tokens": 5.0, "total_tokens": 15.0}}


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("usage.prompt_tokens + usage.completion_tokens", 15.0),
        ("usage.completion_tokens\n", 5.0),
        ("has(usage.prompt_tokens) && has(usage.completion_tokens)", True),
        ("has(usage.prompt_token_details)", False),
        ("!has(usage.prompt_token_details) || usage.prompt_token_details.cached_tokens > 0.0", True),
        ("usage.prompt_tokens > 5 ? int(usage.prompt_tokens) * 2 : 0", 20),
        ("-7 / 2", -3),  # int division truncates toward zero
        ("-7 % 2", -1),
        ("(1 + 2) * 3 - 4", 5),
        ("double(3) / 2.0", 1.5),
        ("usage['total_tokens'] == 15", True),
        ("size('abc') + size(usage)", 6),
        ("'a' + \"b\" == 'ab'", True),
    ],
)
def test_cel_subset_values(expression: str, value: Any) -> None:
    result = compile_expression(expression)(USAGE)
    assert result == value and type(result) is type(value)


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("usage.prompt_tokens + 1", "no matching overload for double + int"),  # CEL: no implicit conversion
        ("usage.nope", "no such key: nope"),
        ("1 / 0", "division by zero"),
        ("x", "undeclared reference to 'x'"),
        ("usage.prompt_tokens && true", "expected a bool, got a double"),
        ("9223372036854775807 + 1", "int overflow"),
    ],
)
def test_cel_evaluation_errors(expression: str, error: str) -> None:
    with pytest.raises(CelError, match=re.escape(error)):
        compile_expression(expression)(USAGE)


@pytest.mark.parametrize(
    "expression",
    ["[1, 2]", "usage.all(k, k > 0)", "matches('a', 'b')", "a in b", "usage.", "has(usage)", "1 +"],
)
def test_cel_outside_the_subset_is_refused_at_compile_time(expression: str) -> None:
    with pytest.raises(CelError):
        compile_expression(expression)


def test_usage_object_is_upstreams_json() -> None:
    assert usage_object(None) == {"prompt_tokens": 0.0, "completion_tokens": 0.0, "total_tokens": 0.0}
    assert usage_object(Usage(3, 4, 2, 7))["prompt_token_details"] == {"cached_tokens": 2.0}


def reporter(expression: str, condition: str = "", namespace: str = "") -> RequestAttributeReporter:
    attribute: dict[str, Any] = {"key": {"name": "cost", "namespace": namespace}, "expression": expression}
    if condition:
        attribute["condition"] = condition
    return plugin(RequestAttributeReporter, {"attributes": [attribute]})


def done(p: RequestAttributeReporter, usage: Usage | None) -> object:
    return p.response_body_done(request(), SchedulingResult({}, "default"), usage)


def test_reporter_values_conditions_and_skips() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
    assert done(reporter("usage.total_tokens * 1.5"), usage) == {"envoy.lb": {"cost": 22.0}}  # truncated
    assert done(reporter("usage.total_tokens", namespace="ratelimit"), usage) == {"ratelimit": {"cost": 15.0}}
    assert done(reporter("usage.total_tokens", "usage.total_tokens > 100.0"), usage) == {}
    assert done(reporter("usage.completion_tokens"), None) == {}  # 0 is not reported
    assert done(reporter("usage.nope"), usage) == {}  # evaluation errors report nothing
    assert done(reporter("usage.total_tokens > 1.0"), usage) == {}  # not a number


@pytest.mark.parametrize(
    "expression",
    ["usage.completion_tokens / usage.prompt_tokens", "usage.prompt_tokens / usage.prompt_tokens"],
    ids=["inf", "nan"],
)
def test_a_ratio_over_zero_tokens_reports_nothing_rather_than_failing(
    expression: str, caplog: pytest.LogCaptureFixture
) -> None:
    """CEL divides doubles by zero into infinity or NaN (a cached share of a 0-token prompt), which
    int() refused: the plugin raised, the director logged a traceback for the response, and the
    metadata of every reporter after it in the list was lost with it."""
    usage = Usage(prompt_tokens=0, completion_tokens=5, total_tokens=5)
    assert done(reporter(expression), usage) == {}
    assert f"{expression!r} gave a non-finite number" in caplog.text


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ("[]", "attributes: List should have at least 1 item"),
        ("[{key: {name: a}, expression: '1'}, {key: {name: b}, expression: '2'}]", "at most 1 item"),
        (
            "[{key: {name: ''}, expression: '1'}]",
            "attributes[0].key.name: String should have at least 1 character",
        ),
        ("[{key: {name: a}, expression: 'usage.all(x, x)'}]", "attributes[0].expression: CEL: unexpected"),
    ],
)
def test_reporter_parameters_as_upstream(attributes: str, message: str) -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        f"plugins:\n- type: request-attribute-reporter\n  parameters: {{attributes: {attributes}}}\n"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(text)


def routed_under_the_readme_config() -> tuple[ExtProcStream, bytes]:
    """A request routed under upstream's README config, its response headers in, and the body
    the model server answers with (10 tokens in all)."""
    store = Datastore()
    store.upsert(EndpointSpec(name="a", address="10.0.0.1", port=8000))
    store.synced = True
    director, _ = build_director(load_config_file(README), store, PluginContext())
    stream = ExtProcStream(director, StreamOptions())
    list(stream.handle(headers_msg()))
    list(stream.handle(body_msg(orjson.dumps({"model": "m", "prompt": "hello"}))))
    list(stream.handle(response_headers_msg("application/json")))
    answer = orjson.dumps(
        {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}
    )
    return stream, answer


def test_upstream_readme_config_returns_the_cost_as_dynamic_metadata_on_the_last_body_reply() -> None:
    stream, answer = routed_under_the_readme_config()
    first = list(stream.handle(response_body_msg(answer[:20], end_of_stream=False)))
    last = list(stream.handle(response_body_msg(answer[20:], end_of_stream=True)))
    assert all(not r.HasField("dynamic_metadata") for r in first)
    metadata = last[-1].dynamic_metadata
    assert dict(metadata["envoy.lb"]) == {"x-gateway-inference-request-cost": 10.0}
    assert isinstance(last[-1], ext_proc.ProcessingResponse)


def test_a_response_ended_by_trailers_carries_the_cost_on_the_trailers_reply() -> None:
    """An HTTP/2 or gRPC model server's response ends with trailers, its last chunk not marked as
    the end: the body ends there, and the cost rides on the trailers reply."""
    stream, answer = routed_under_the_readme_config()
    body = list(stream.handle(response_body_msg(answer, end_of_stream=False)))
    assert all(not r.HasField("dynamic_metadata") for r in body)
    (trailers,) = stream.handle(ext_proc.ProcessingRequest(response_trailers=ext_proc.HttpTrailers()))
    assert trailers.HasField("response_trailers")
    assert dict(trailers.dynamic_metadata["envoy.lb"]) == {"x-gateway-inference-request-cost": 10.0}

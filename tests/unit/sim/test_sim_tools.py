"""Forced tool calls: the arguments drawn for a tool's schema (checked with jsonschema), the text a
sequence writes for a call, and vLLM's checks of `tools` and `tool_choice`."""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epp.sim.errors import ApiError
from epp.sim.openai_api import parse_chat
from epp.sim.schema_values import MAX_NESTING, schema_text
from epp.sim.tokens import token_pieces, tokenize
from epp.sim.tools import (
    MAX_CALL_CHARS,
    MIN_CALL_CHARS,
    ForcedTools,
    message_tool_calls,
    parse_tool_choice,
)

SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 12, "maxLength": 20},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 3},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "late": {"type": "boolean"},
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 3},
                "minItems": 4,
                "maxItems": 5,
            },
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}},
                "required": ["lat"],
                "additionalProperties": False,
            },
        },
        "required": ["city", "unit", "days", "ratio", "late", "tags", "where"],
        "additionalProperties": False,
    },
    {"type": "object", "properties": {}},
    {"type": "object", "required": ["only"]},
    {
        "type": "object",
        "properties": {"n": {"type": ["null", "integer"], "exclusiveMinimum": 5, "maximum": 6}},
    },
    {
        "type": "object",
        "properties": {"x": {"anyOf": [{"type": "integer", "minimum": 10}, {"type": "string"}]}},
    },
    {"type": "object", "properties": {"c": {"const": {"fixed": [1, 2]}}, "z": {"type": "null"}}},
    {
        "allOf": [
            {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
            {"properties": {"b": {"type": "string", "pattern": "^[a-z ]+$"}}, "required": ["b"]},
        ]
    },
    {
        "type": "object",
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["name", "children"],
            }
        },
        "properties": {
            "tree": {"$ref": "#/$defs/node"},
            "pair": {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "boolean"}],
                "minItems": 2,
                "maxItems": 2,
            },
        },
        "required": ["tree", "pair"],
    },
    {
        "type": "object",
        "properties": {"old": {"type": "integer", "minimum": 3, "exclusiveMinimum": True, "maximum": 4}},
    },
]


def schema_value(schema: Any, seed: int) -> Any:
    """The value drawn for `schema`, written whole."""
    text, whole = schema_text(schema, seed, 1 << 20)
    assert whole
    return json.loads(text)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s)[:60])
def test_arguments_satisfy_their_schema(schema: dict[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    for seed in range(40):
        value = schema_value(schema, seed)
        assert not list(validator.iter_errors(value)), (seed, value)
        assert schema_value(schema, seed) == value  # the same seed, the same arguments


KEYWORD_SCHEMAS: list[dict[str, Any]] = [
    # A required property no `properties` declares: drawn from `additionalProperties`...
    {"type": "object", "required": ["n"], "additionalProperties": {"type": "integer", "minimum": 5}},
    # ... or from every `patternProperties` entry its name matches (a declared one's too).
    {
        "type": "object",
        "properties": {"x_a": {"type": "integer"}},
        "patternProperties": {"^x_": {"minimum": 10, "maximum": 12}, "^y": {"type": "boolean"}},
        "required": ["x_a", "x_b", "yes"],
        "additionalProperties": False,
    },
    {"type": "object", "minProperties": 3},
    {"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 3, "maxProperties": 3},
    {
        "type": "object",
        "patternProperties": {"^tag_[0-9]+$": {"type": "string", "maxLength": 4}},
        "additionalProperties": False,
        "minProperties": 2,
    },
    {
        "type": "object",
        "properties": {"a": {}, "b": {}, "c": {}, "d": {}},
        "maxProperties": 2,
        "required": ["d"],
    },
    {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2, "uniqueItems": True},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "uniqueItems": True},
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 3},
        "minItems": 4,
        "uniqueItems": True,
    },
    {
        "type": "array",
        "items": {"type": "object", "properties": {"k": {"enum": ["a", "b"]}}, "required": ["k"]},
        "minItems": 2,
        "uniqueItems": True,
    },
    {
        "type": "object",
        "properties": {"v": {"type": ["string", "integer"], "not": {"type": "string"}}},
        "required": ["v"],
    },
    {"type": "object", "properties": {"v": {"not": {"type": "string"}}}, "required": ["v"]},
    {
        "type": "object",
        "properties": {"v": {"enum": ["a", "b", "c"], "not": {"enum": ["a", "b"]}}},
        "required": ["v"],
    },
    {
        "type": "object",
        "properties": {"v": {"type": "integer", "minimum": 1, "maximum": 2, "not": {"const": 1}}},
        "required": ["v"],
    },
    {"type": "object", "properties": {"a": {}, "b": {}}, "not": {"required": ["a", "b"]}},
    {
        "type": "object",
        "properties": {"card": {"type": "string"}},
        "required": ["card"],
        "dependentRequired": {"card": ["billing", "name"]},
        "additionalProperties": {"type": "integer"},
    },
    {"type": "object", "required": ["x"], "dependencies": {"x": ["y"]}},
    {"type": "number", "minimum": 4, "maximum": 4.02, "not": {"type": "integer"}},  # 4.0 is an integer
    # allOf parts both apply: the tighter bounds, the common type, the common enum values.
    {"allOf": [{"type": ["integer", "string"], "maximum": 3}, {"type": "number", "minimum": 2}]},
    {"allOf": [{"enum": [1, "a", None]}, {"enum": ["a", None, 2]}, {"type": "string"}]},
    {
        "type": "object",
        "properties": {"a": {}, "b": {}, "c": {}},
        "required": ["a"],
        "maxProperties": 2,
        "dependentRequired": {"a": ["c"]},
    },
]


@pytest.mark.parametrize("schema", KEYWORD_SCHEMAS, ids=lambda s: json.dumps(s)[:70])
def test_arguments_satisfy_the_object_array_and_not_keywords(schema: dict[str, Any]) -> None:
    """`additionalProperties`/`patternProperties` for undeclared properties (an undeclared required
    one was drawn as a string), `minProperties`/`maxProperties`, `uniqueItems`, `not` and
    `dependentRequired` (draft 7's `dependencies` lists): each was ignored."""
    draft = jsonschema.Draft7Validator if "dependencies" in schema else jsonschema.Draft202012Validator
    validator = draft(schema)
    for seed in range(40):
        value = schema_value(schema, seed)
        assert not list(validator.iter_errors(value)), (seed, value)
        assert schema_value(schema, seed) == value


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "required": ["n"], "additionalProperties": False},
            "the tool's parameters require 'n', which no property or pattern allows "
            "(additionalProperties is false)",
        ),
        (
            {"type": "object", "properties": {"a": {}}, "required": ["a", "b"], "maxProperties": 1},
            "the tool's parameters require 2 properties but allow at most 1 (maxProperties)",
        ),
        (
            {"type": "object", "properties": {"a": {}}, "additionalProperties": False, "minProperties": 2},
            "the tool's parameters need 2 properties (minProperties); the simulator found 1 name they allow",
        ),
        (
            {"type": "array", "items": {"enum": [1, 2]}, "minItems": 3, "uniqueItems": True},
            "the tool's parameters need 3 unique items (minItems, uniqueItems) and no more could be drawn",
        ),
        (
            {
                "type": "object",
                "properties": {"v": {"type": "string", "not": {"type": "string"}}},
                "required": ["v"],
            },
            "the tool's parameters allow no type that `not` does not exclude",
        ),
        (
            {
                "type": "object",
                "properties": {"v": {"enum": ["a"], "not": {"const": "a"}}},
                "required": ["v"],
            },
            "the tool's parameters exclude every `enum` value by its type or with `not`",
        ),
        (
            {"type": "object", "required": ["a", "b"], "not": {"required": ["a", "b"]}},
            "the tool's parameters require every property that `not` forbids together: 'a', 'b'",
        ),
        (
            {"type": "object", "properties": {"v": {"not": {"minimum": 3}}}, "required": ["v"]},
            "the simulator draws `not` only of type, const, enum, required and anyOf, not of: minimum",
        ),
        (
            {"type": "number", "minimum": 4, "maximum": 4, "not": {"type": "integer"}},
            "the tool's parameters allow only whole numbers, which `not` excludes",
        ),
        (
            {"allOf": [{"type": "string"}, {"type": ["integer", "null"]}]},
            "the tool's parameters combine `allOf` parts that allow no type in common",
        ),
        (
            {"type": "object", "patternProperties": {"(": {}}, "required": ["a"]},
            "the tool's parameters have a patternProperties pattern that is not a regular expression: '('",
        ),
    ],
    ids=lambda v: json.dumps(v)[:50] if isinstance(v, dict) else "",
)
def test_a_schema_no_value_satisfies_is_a_400(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(ApiError) as raised:
        schema_text(schema, 0, 1 << 20)
    assert (raised.value.status, raised.value.param, raised.value.message) == (400, "tools", message)


def keyword_schemas(depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Schemas mixing the keywords drawn for objects, arrays and `not`, often unsatisfiable."""
    leaf = st.sampled_from(
        [
            {"type": "string"},
            {"type": "integer", "minimum": 0, "maximum": 3},
            {"type": "boolean"},
            {"enum": [1, 2, "a", None]},
            {},
            {"type": ["integer", "string"]},
            {"type": "number"},
        ]
    )
    inner = leaf if depth >= 2 else keyword_schemas(depth + 1)
    names = st.sampled_from(["p0", "p1", "q1"])
    counts = st.integers(0, 4)
    obj = st.fixed_dictionaries(
        {
            "type": st.just("object"),
            "properties": st.dictionaries(st.sampled_from(["p0", "p1"]), inner, max_size=2),
        },
        optional={
            "required": st.lists(names, max_size=2),
            "additionalProperties": st.one_of(st.booleans(), leaf),
            "patternProperties": st.dictionaries(
                st.sampled_from(["^p", "^q", "^x_[0-9]+$"]), leaf, max_size=1
            ),
            "minProperties": counts,
            "maxProperties": counts,
            "dependentRequired": st.dictionaries(names, st.lists(names, min_size=1, max_size=2), max_size=1),
        },
    )
    array = st.fixed_dictionaries(
        {"type": st.just("array"), "items": inner, "minItems": st.integers(0, 3)},
        optional={"uniqueItems": st.booleans(), "maxItems": st.integers(3, 5)},
    )
    banned = st.sampled_from(
        [
            {"type": "string"},
            {"type": ["integer", "null"]},
            {"const": 1},
            {"enum": [None, "a"]},
            {"required": ["p0"]},
            {"required": ["p0", "p1"]},
        ]
    )
    base = leaf | obj | array if depth < 2 else leaf
    return st.tuples(base, st.none() | banned).map(
        lambda pair: pair[0] if pair[1] is None else {**pair[0], "not": pair[1]}
    )


@settings(max_examples=400, deadline=None)
@given(keyword_schemas(), st.integers(0, 1000))
def test_any_mix_of_the_keywords_is_drawn_valid_or_refused(schema: dict[str, Any], seed: int) -> None:
    """Whatever the mix, the arguments validate against the schema, or the schema is a 400."""
    try:
        text, whole = schema_text(schema, seed, 1 << 16)
    except ApiError as refused:
        assert (refused.status, refused.param) == (400, "tools")
        return
    if whole:
        assert not list(jsonschema.Draft202012Validator(schema).iter_errors(json.loads(text))), text


def test_draft4_exclusive_bounds() -> None:
    schema = SCHEMAS[-1]
    validator = jsonschema.Draft4Validator(schema)
    assert all(validator.is_valid(schema_value(schema, seed)) for seed in range(20))
    assert {schema_value(schema, seed)["old"] for seed in range(20)} == {4}


def test_a_named_call_writes_its_arguments() -> None:
    forced = ForcedTools("named", {"f": SCHEMAS[0]})
    plan = forced.plan(7, 1000)
    assert plan.name == "f" and plan.arguments(0, len(plan.text)) == plan.text
    jsonschema.validate(json.loads(plan.text), SCHEMAS[0])
    assert "".join(plan.pieces) == plan.text and len(plan.pieces) == len(tokenize(plan.text))


def test_a_required_call_writes_vllms_list_of_one_call() -> None:
    """vLLM's guided decoding for "required": `[{"name", "parameters"}]`; the call's arguments
    are the `parameters` (as vLLM re-serialises them, json.dumps)."""
    forced = ForcedTools("required", {"a": {"type": "object", "required": ["x"]}, "b": None})
    names = set()
    for seed in range(10):
        plan = forced.plan(seed, 1000)
        (written,) = json.loads(plan.text)
        names.add(written["name"])
        assert plan.name == written["name"]
        assert plan.arguments(0, len(plan.text)) == json.dumps(written["parameters"])
        assert plan.arguments(0, plan.start) == ""  # nothing of the arguments before their span
        assert "".join(token_pieces(plan.text)) == plan.text
    assert names == {"a", "b"}
    assert json.loads(ForcedTools("required", {"b": None}).plan(1, 1000).text)[0]["parameters"] == {}


def test_finish_reasons_are_vllms() -> None:
    """OpenAI's rule, as vLLM follows it: a named call keeps the engine's reason, a required one
    that ended by itself is "tool_calls"."""
    named = ForcedTools("named", {"f": None}).plan(0, 1000)
    required = ForcedTools("required", {"f": None}).plan(0, 1000)
    assert (named.finish_reason("stop"), named.finish_reason("length")) == ("stop", "length")
    assert (required.finish_reason("stop"), required.finish_reason("length")) == ("tool_calls", "length")
    assert required.finish_reason(None) is None


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'


@pytest.mark.parametrize(
    ("fields", "param", "message"),
    [
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "The tool specified in `tool_choice` does not match any of the specified `tools`",
        ),
        ({"tool_choice": "required"}, "tool_choice", "When using `tool_choice`, `tools` must be set."),
        (
            {"tool_choice": "auto", "tools": None},
            "tool_choice",
            "When using `tool_choice`, `tools` must be set.",
        ),
        (
            {"tools": [TOOL], "tool_choice": "sometimes"},
            "tool_choice",
            'Invalid value for `tool_choice`: sometimes! Only named tools, "none", "auto" or "required" '
            "are supported.",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"function": "f"}},
            "tool_choice.function",
            f"Invalid value for `function`: `f` in `tool_choice`! {USAGE}",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"function": {}}},
            "tool_choice.function.name",
            f"Expected field `name` in `function` in `tool_choice`! {USAGE}",
        ),
        (
            {"tools": [TOOL], "tool_choice": {"function": {"name": ""}}},
            "tool_choice.function.name",
            f"Invalid `name` in `function`: `` in `tool_choice`! {USAGE}",
        ),
        (
            {"tools": []},
            "tools",
            "`tools` must not be an empty array. "
            "Either provide at least one tool or omit the field entirely.",
        ),
        ({"tools": [{"type": "function"}]}, "tools", "'tools[0]' must be"),
        ({"tools": [{"function": {"name": "f", "parameters": "x"}}]}, "tools", "'tools[0]' must be"),
        ({"tools": {"f": 1}}, "tools", "'tools' must be a list of function tools"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "custom", "function": {"name": "get_weather"}}},
            "tool_choice.type",
            "a named `tool_choice` must have type 'function'",
        ),
    ],
)
def test_tool_choice_is_checked_in_vllms_words(fields: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], **fields})
    assert info.value.status == 400 and info.value.param == param
    assert info.value.message.startswith(message)


def test_only_forced_choices_force_a_call() -> None:
    assert parse_tool_choice({"tools": [TOOL]}) is None  # vLLM's default: "auto"
    assert parse_tool_choice({"tools": [TOOL], "tool_choice": "auto"}) is None
    assert parse_tool_choice({"tools": [TOOL], "tool_choice": "none"}) is None
    assert parse_tool_choice({"tool_choice": "none"}) is None
    named = parse_tool_choice({"tools": [TOOL], "tool_choice": {"function": {"name": "get_weather"}}})
    assert named == ForcedTools("named", {"get_weather": {"type": "object"}})
    assert parse_tool_choice({"tools": [TOOL], "tool_choice": "required"}) == ForcedTools(
        "required", {"get_weather": {"type": "object"}}
    )


ENDLESS: dict[str, dict[str, Any]] = {
    "a billion items": {"type": "object", "properties": {"a": {"type": "array", "minItems": 10**9}}},
    "a billion characters": {"type": "object", "properties": {"a": {"type": "string", "minLength": 10**9}}},
    "a recursive $ref in ten properties": {
        "type": "object",
        "properties": {f"p{k}": {"$ref": "#"} for k in range(10)},
    },
}


@pytest.mark.parametrize("schema", ENDLESS.values(), ids=ENDLESS)
@pytest.mark.parametrize("mode", ["named", "required"])
def test_a_call_longer_than_max_tokens_is_drawn_only_that_far(schema: dict[str, Any], mode: str) -> None:
    """A value no answer can hold is written as far as `max_tokens` reaches, a prefix of the same
    text drawn further, and the call is not whole (finish_reason length). It was drawn whole
    first: 10**9 items, or 10**16 nested objects, held the event loop, and every simulated
    endpoint of the process with it, for good."""
    forced = ForcedTools(mode, {"f": schema})  # type: ignore[arg-type]
    short, longer = forced.plan(3, 20), forced.plan(3, 2000)
    for plan, limit in ((short, 20), (longer, 2000)):
        assert not plan.whole and limit <= len(plan.pieces) <= limit * 6 + 20
        assert plan.end == len(plan.text) and plan.arguments(0, len(plan.text)) == plan.text[plan.start :]
    assert longer.text.startswith(short.text)
    assert len(forced.plan(3, 10**6).text) <= MAX_CALL_CHARS + 100  # however large max_tokens is


def test_allof_parts_that_multiply_through_refs_are_resolved_once() -> None:
    """`allOf` parts that each `$ref` a schema of ten more merged 10**16 times, writing nothing:
    the drawing ran without end. Each part is resolved once at each depth; a thousand values of
    that schema are drawn at once too. More than `MAX_MERGES` parts in one value are refused."""
    bomb = {"type": "integer", "allOf": [{"$ref": "#/$defs/x"} for _ in range(10)]}
    many = {"$defs": {"x": bomb}, "type": "array", "minItems": 1000, "maxItems": 1000}
    text, whole = schema_text({**many, "items": {"$ref": "#/$defs/x"}}, 0, 1 << 20)
    assert whole and len(json.loads(text)) == 1000
    with pytest.raises(ApiError) as raised:
        ForcedTools("named", {"f": {"allOf": [{} for _ in range(10_001)]}}).plan(0, 100)
    assert (raised.value.status, raised.value.param) == (400, "tools")
    assert raised.value.message == "the tool's parameters merge more than 10000 `allOf` parts"
    # Counted for each value: 6000 items merging two parts each (12000 in all) are drawn.
    items = {
        "type": "array",
        "minItems": 6000,
        "maxItems": 6000,
        "items": {"allOf": [{"type": "integer"}, {}]},
    }
    text, whole = schema_text(items, 0, 1 << 20)
    assert whole and len(json.loads(text)) == 6000


def _item_read_slowly(shape: str) -> dict[str, Any]:
    """An array of items small to write whose reading is long: a `$ref` to a schema of many keys
    (followed above `MAX_DEPTH`), `allOf` parts to merge, a long `required` or `type` list (below
    it, 17 arrays of one item down, where an object writes only its required properties)."""
    item: dict[str, Any] = {
        "ref": {"$ref": "#/$defs/a"},
        "allOf": {"allOf": [{"properties": {f"p{i}": {"type": "null"}}} for i in range(100)]},
        "required": {"type": "object", "required": ["a"] * 20_000},
        "type": {"type": ["x"] * 20_000 + ["null"]},
    }[shape]
    schema: dict[str, Any] = {"type": "array", "minItems": 10**9, "items": item}
    for _ in range(0 if shape == "ref" else 17):
        schema = {"type": "array", "minItems": 1, "maxItems": 1, "items": schema}
    return {"$defs": {"a": {"type": "null", **{f"k{i}": 0 for i in range(50_000)}}}, **schema}


@pytest.mark.parametrize("shape", ["ref", "allOf", "required", "type"])
def test_a_schema_is_read_once_for_all_its_values(shape: str) -> None:
    """Every item of an array was read again (its `$ref` target copied, its `allOf` merged, its
    lists scanned) for the few characters it writes: 64 KiB of such items took 2.7 s (a `$ref`
    to 50000 keys) to 33 s (a `type` list of 20000) of CPU on the event loop; measured through
    the stack, 300 `allOf` parts and a large `max_tokens` held a simulator 84 s, out of rotation.
    A schema is read once per depth; the same text is drawn (here in under 0.05 s)."""
    started = time.process_time()
    text, whole = schema_text(_item_read_slowly(shape), 1, 64 * 1024)
    assert time.process_time() - started < 0.5
    assert not whole and text.startswith("[" if shape == "ref" else "[" * 18)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "required": 5},
        {"allOf": [{"type": "object", "properties": ["a"]}, {"required": 3}]},
    ],
    ids=json.dumps,
)
def test_a_keyword_of_the_wrong_type_is_ignored(schema: dict[str, Any]) -> None:
    """`"required": 5` or `"properties": []` in an `allOf` raised TypeError: a 500."""
    text, whole = schema_text(schema, 1, 1 << 20)
    assert whole and isinstance(json.loads(text), dict)


def nested(levels: int, kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        if kind == "object":
            schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
        elif kind == "array":
            schema = {"type": "array", "items": schema, "minItems": 1, "maxItems": 1}
        else:
            schema = {kind: [schema]}
    return schema


@pytest.mark.parametrize("kind", ["object", "array", "anyOf", "allOf"])
def test_a_schema_nested_deeper_than_the_drawing_goes_is_a_400(kind: str) -> None:
    """A schema nested 500 levels (the request's JSON holds 1024) ran the drawing out of Python's
    recursion limit: RecursionError, a 500. Within `MAX_NESTING` it is drawn whole."""
    text, whole = schema_text(nested(MAX_NESTING - 1, kind), 0, 1 << 20)
    assert whole and json.loads(text) is not None
    with pytest.raises(ApiError) as raised:
        schema_text(nested(500, kind), 0, 1 << 20)
    assert (raised.value.status, raised.value.param) == (400, "tools")
    assert raised.value.message == f"the tool's parameters nest deeper than {MAX_NESTING} levels"


@pytest.mark.parametrize("keyword", ["const", "enum"])
def test_a_const_or_enum_value_nested_past_what_json_writes_is_a_400(keyword: str) -> None:
    """A `const` (or `enum` entry) nested 1010 levels, sent to the simulator directly (the EPP
    refuses bodies past 254), is read by orjson (1024 levels) but not written by json.dumps:
    RecursionError, aiohttp's bare 500 "Server got itself in trouble"."""
    value: Any = []
    for _ in range(1010):
        value = [value]
    with pytest.raises(ApiError) as raised:
        ForcedTools("named", {"f": {keyword: value if keyword == "const" else [value]}}).plan(0, 100)
    assert (raised.value.status, raised.value.param) == (400, "tools")
    assert raised.value.message == f"the tool's parameters nest deeper than {MAX_NESTING} levels"


def test_a_required_call_cut_short_is_no_call_in_the_message() -> None:
    """vLLM reads a required call's text as `[{"name", "parameters"}]` and answers no call when it
    does not parse (`contextlib.suppress(ValidationError)` in its parser): a list cut short is
    none. The simulator answered the call with the cut arguments. A named call keeps them."""
    required = ForcedTools("required", {"f": SCHEMAS[0]}).plan(5, 1000)
    named = ForcedTools("named", {"f": SCHEMAS[0]}).plan(5, 1000)
    whole = len(required.text)
    (call,) = message_tool_calls(required, whole)
    assert call["function"] == {"name": "f", "arguments": required.text[required.start : required.end]}
    for cut in (required.start - 1, required.start + 3, required.end, whole - 1):
        assert message_tool_calls(required, cut) == [], cut
    (call,) = message_tool_calls(named, 7)
    assert call["function"] == {"name": "f", "arguments": named.text[:7]}
    endless = ForcedTools("required", {"f": ENDLESS["a billion items"]}).plan(5, 9)
    assert message_tool_calls(endless, len(endless.text)) == []


def test_the_sequences_of_one_request_share_what_is_drawn() -> None:
    """Each of `n` sequences drew up to 256 KiB: a request of n = 64 for a schema with no short
    value held the event loop 17 s (n = 1000, the queue's default: minutes). They share it now,
    each keeping at least `MIN_CALL_CHARS`; arguments that fit are drawn whole as before."""
    endless = ForcedTools("named", {"f": ENDLESS["a billion items"]})
    assert len(endless.plan(0, 10**5, 64).text) <= MAX_CALL_CHARS // 64 + 100
    assert MIN_CALL_CHARS <= len(endless.plan(0, 10**5, 1000).text) <= MIN_CALL_CHARS + 100
    ordinary = ForcedTools("named", {"f": SCHEMAS[0]})
    assert ordinary.plan(3, 10**5, 1000) == ordinary.plan(3, 10**5) and ordinary.plan(3, 10**5).whole


@pytest.mark.parametrize(
    "schema",
    [
        {
            "allOf": [
                {"not": {"type": "integer"}},
                {"not": {"type": "string"}},
                {"type": ["integer", "string", "boolean"]},
            ]
        },
        {"not": {"const": 1}, "allOf": [{"not": {"enum": [2]}}, {"enum": [1, 2, 3]}]},
        {
            "type": "object",
            "properties": {"a": {}, "b": {}},
            "allOf": [{"not": {"required": ["a"]}}, {"not": {"required": ["b"]}}],
        },
        {
            "allOf": [
                {"not": {"type": "string"}},
                {"not": {"const": 2}},
                {"type": ["string", "integer"], "minimum": 2, "maximum": 3},
            ]
        },
        {
            "allOf": [
                {"not": {"anyOf": [{"type": "string"}, {"const": 2}]}},
                {"type": ["string", "integer"], "minimum": 2, "maximum": 3},
            ]
        },
    ],
    ids=lambda s: json.dumps(s)[:60],
)
def test_each_allof_parts_not_is_escaped(schema: dict[str, Any]) -> None:
    """Merged `allOf` parts kept the last part's `not` alone: a value of the first's excluded type,
    const or property set was drawn (`49` where the first part says `not: {type: integer}`). A
    value escapes every part's `not`, i.e. a `not` of their `anyOf`, which is drawn too."""
    validator = jsonschema.Draft202012Validator(schema)
    for seed in range(20):
        value = schema_value(schema, seed)
        assert not list(validator.iter_errors(value)), (seed, value)


def test_allof_parts_whose_nots_leave_nothing_are_a_400() -> None:
    schema = {
        "allOf": [{"not": {"type": "integer"}}, {"not": {"type": "string"}}, {"type": ["integer", "string"]}]
    }
    with pytest.raises(ApiError) as raised:
        schema_text(schema, 0, 1 << 20)
    assert raised.value.message == "the tool's parameters allow no type that `not` does not exclude"


def test_many_allof_parts_with_a_not_and_deeply_nested_anyofs_in_a_not() -> None:
    """A `not` in each of 300 parts is one `anyOf` of 300 escaped together; `anyOf`s nested in a
    `not` past what is drawn are a 400, not a RecursionError (a 500)."""
    parts = [{"not": {"const": i}} for i in range(300)]
    for seed in range(5):
        value = schema_value({"allOf": [*parts, {"type": "integer", "minimum": 0, "maximum": 1000}]}, seed)
        assert 300 <= value <= 1000
    banned: dict[str, Any] = {"type": "string"}
    for _ in range(900):
        banned = {"anyOf": [banned]}
    with pytest.raises(ApiError) as raised:
        schema_text({"not": banned}, 0, 1 << 20)
    assert raised.value.message == "the tool's parameters nest `anyOf` in `not` deeper than 16 levels"


@pytest.mark.parametrize(
    "schema",
    [
        {
            "allOf": [
                {"type": "object", "additionalProperties": False},
                {"properties": {"b": {"type": "integer"}}},
            ]
        },
        {
            "allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
                {"properties": {"b": {"type": "integer"}}},
            ]
        },
        {
            "allOf": [
                {"type": "object", "additionalProperties": {"type": "integer"}},
                {"properties": {"b": {"type": "integer", "minimum": 5}, "c": {}}},
            ]
        },
        {
            "allOf": [
                {"type": "object", "patternProperties": {"^b": {"type": "integer"}}},
                {"properties": {"b": {"minimum": 1, "maximum": 9}}, "required": ["b"]},
            ]
        },
        {
            "allOf": [
                {"type": "object", "properties": {"a": {}}, "additionalProperties": False},
                {"patternProperties": {"^x_[0-9]+$": {"type": "integer"}}, "minProperties": 1},
            ]
        },
    ],
    ids=lambda s: json.dumps(s)[:60],
)
def test_each_allof_parts_additional_properties_applies_to_the_others_properties(
    schema: dict[str, Any],
) -> None:
    """An `allOf` part's `additionalProperties` applies to every name its own `properties` and
    `patternProperties` do not cover, those another part declares included: merged into one
    schema, a property the other part declared was drawn whatever the first said of it (`{"b":
    49}` where the first part allows no property)."""
    validator = jsonschema.Draft202012Validator(schema)
    for seed in range(20):
        value = schema_value(schema, seed)
        assert not list(validator.iter_errors(value)), (seed, value)


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {
                "allOf": [
                    {"type": "object", "properties": {"a": {}}, "additionalProperties": False},
                    {"properties": {"b": {}}, "required": ["b"]},
                ]
            },
            "the tool's parameters require 'b', which no property or pattern allows "
            "(additionalProperties is false)",
        ),
        (
            {
                "allOf": [
                    {"type": "object", "properties": {"a": {}}, "additionalProperties": False},
                    {"patternProperties": {"^x_[0-9]+$": {"type": "integer"}}, "minProperties": 2},
                ]
            },
            "the tool's parameters need 2 properties (minProperties); the simulator found 1 name they allow",
        ),
        (
            {"allOf": [{"properties": {f"p{i}": {}}, "additionalProperties": {}} for i in range(33)]},
            "the tool's parameters merge more than 32 `allOf` parts with an additionalProperties that is "
            "not true",
        ),
    ],
    ids=["required", "minProperties", "33 parts"],
)
def test_a_property_one_allof_part_needs_and_another_forbids_is_a_400(
    schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(ApiError) as raised:
        schema_text(schema, 0, 1 << 20)
    assert raised.value.message == message


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}},
            "dependentRequired": {"a": ["b"]},
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "c": {}},
            "dependencies": {"a": ["b"]},
            "additionalProperties": False,
            "minProperties": 1,
        },
        {
            "type": "object",
            "patternProperties": {"^x_": {}},
            "dependentRequired": {"x_": ["y"]},
            "additionalProperties": False,
            "minProperties": 1,
        },
    ],
    ids=["dependentRequired", "dependencies", "invented"],
)
def test_an_optional_property_whose_dependency_is_forbidden_is_left_out(schema: dict[str, Any]) -> None:
    """An optional property was drawn with what it depends on even when `additionalProperties`
    forbids that: the schema was a 400 (`require 'b', which no property or pattern allows`)
    though leaving the property out satisfies it."""
    draft = jsonschema.Draft7Validator if "dependencies" in schema else jsonschema.Draft202012Validator
    for seed in range(10):
        value = schema_value(schema, seed)
        assert not list(draft(schema).iter_errors(value)), (seed, value)


@pytest.mark.parametrize(
    "schema",
    [
        {
            "allOf": [
                {"type": "array", "items": {"type": "integer"}, "minItems": 2},
                {"prefixItems": [{"minimum": 2, "maximum": 5}]},
            ]
        },
        {
            "allOf": [
                {"type": "array", "prefixItems": [{"const": 1}], "minItems": 2},
                {"prefixItems": [{"type": "integer"}, {"const": "b"}]},
            ]
        },
        {
            "type": "array",
            "prefixItems": [{"type": "integer"}],
            "items": {"type": "boolean"},
            "minItems": 3,
            "allOf": [{"items": {"enum": [1, True]}}],
        },
    ],
    ids=["items and prefixItems", "two prefixItems", "outer prefixItems"],
)
def test_each_allof_parts_items_apply_at_each_position(schema: dict[str, Any]) -> None:
    """An `allOf` part's `prefixItems` replaced another's, and a part's `items` (every item past
    its own `prefixItems`, so every item when it has none) did not reach the other's `prefixItems`:
    `["team decode", 5]` for a part asking integers and one asking `prefixItems: [{minimum: 2}]`."""
    validator = jsonschema.Draft202012Validator(schema)
    for seed in range(20):
        value = schema_value(schema, seed)
        assert not list(validator.iter_errors(value)), (seed, value)

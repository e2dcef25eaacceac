"""A JSON value that satisfies a JSON schema, drawn deterministically from a seed: what a model
writes under vLLM's guided decoding for a forced tool call's arguments (the tool's `parameters`
schema). It covers what tool schemas use: types (one or a list), `enum`, `const`, objects with
`properties` and `required`, arrays with `items` or `prefixItems` and their size bounds, string
lengths, number bounds (inclusive and exclusive), `anyOf`/`oneOf` (the first branch), `allOf`
(merged) and local `$ref`s. `pattern`, `format` and `multipleOf` are not followed."""

from __future__ import annotations

import math
import random
from typing import Any

from epp.sim.tokens import output_text

MAX_DEPTH = 16
"""Deeper than this (a recursive `$ref`) an object gets only its required properties, an array
its fewest items, so a self-referencing schema still ends."""
_DEFAULT_SPAN = 100
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


def schema_value(schema: Any, seed: int) -> Any:
    """A value satisfying `schema`; the same for the same schema and seed."""
    return _Draw(schema, random.Random(seed)).value(schema, 0)


class _Draw:
    def __init__(self, root: Any, rng: random.Random) -> None:
        self._root = root
        self._rng = rng

    def value(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, dict):  # `true` or a malformed schema: anything goes
            return self._words(1, 3)
        schema = self._resolve(schema, depth)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self._rng.choice(schema["enum"])
        for branch in ("anyOf", "oneOf"):
            if isinstance(schema.get(branch), list) and schema[branch]:
                return self.value(schema[branch][0], depth + 1)
        kind = _type_of(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind in ("integer", "number"):
            return self._number(schema, kind == "integer")
        if kind == "boolean":
            return self._rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _resolve(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """`$ref` followed (a local JSON pointer) and `allOf` merged into one schema."""
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#") and depth < MAX_DEPTH:
            target: Any = self._root
            for step in filter(None, ref[1:].split("/")):
                key = step.replace("~1", "/").replace("~0", "~")
                target = target.get(key) if isinstance(target, dict) else None
            if isinstance(target, dict):
                rest = {k: v for k, v in schema.items() if k != "$ref"}
                return self._resolve({**target, **rest}, depth + 1)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for raw in parts:
                if isinstance(raw, dict):
                    part = self._resolve(raw, depth + 1)
                    properties = {**merged.get("properties", {}), **part.get("properties", {})}
                    required = [*merged.get("required", []), *part.get("required", [])]
                    merged = {**merged, **part, "properties": properties, "required": required}
            return merged
        return schema

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = [r for r in schema.get("required", []) if isinstance(r, str)]
        names = list(properties) if depth < MAX_DEPTH else []
        names += [r for r in required if r not in names]
        return {name: self.value(properties.get(name, {"type": "string"}), depth + 1) for name in names}

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        low = _whole(schema.get("minItems"), 0)
        high = _whole(schema.get("maxItems"), max(low, 3))
        count = low if depth >= MAX_DEPTH else min(max(low, self._rng.randint(1, 3)), high)
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        return [self.value(prefix[i] if i < len(prefix) else items, depth + 1) for i in range(count)]

    def _number(self, schema: dict[str, Any], integer: bool) -> int | float:
        low, low_open = _bound(schema, "minimum", "exclusiveMinimum", max)
        high, high_open = _bound(schema, "maximum", "exclusiveMaximum", min)
        if low is None:
            low, low_open = (high - _DEFAULT_SPAN if high is not None else 0), False
        if high is None:
            high, high_open = low + _DEFAULT_SPAN, False
        if integer:
            first = math.floor(low) + 1 if low_open or low != math.floor(low) else int(low)
            last = math.ceil(high) - 1 if high_open or high != math.ceil(high) else int(high)
            return self._rng.randint(first, last) if first <= last else first
        drawn = round(self._rng.uniform(low, high), 2)
        if (drawn < low or (low_open and drawn == low)) or (drawn > high or (high_open and drawn == high)):
            return (low + high) / 2
        return drawn

    def _string(self, schema: dict[str, Any]) -> str:
        low = _whole(schema.get("minLength"), 0)
        high = _whole(schema.get("maxLength"), None)
        text = self._words(1, 3)
        while len(text) < low:
            text += " " + self._words(1, 1)
        return text if high is None else text[:high]

    def _words(self, fewest: int, most: int) -> str:
        seed = self._rng.getrandbits(32)
        return "".join(output_text(seed, i) for i in range(self._rng.randint(fewest, most))).lstrip()


def _type_of(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        named = [k for k in kind if k in _TYPES]
        kind = next((k for k in named if k != "null"), named[0] if named else None)
    if kind in _TYPES:
        return str(kind)
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, tighter: Any) -> tuple[float | None, bool]:
    """The bound on one side and whether it is open (JSON schema's exclusive form, or draft 4's
    boolean `exclusiveMinimum` beside `minimum`)."""
    closed = schema.get(inclusive)
    closed = closed if _is_number(closed) else None
    opened = schema.get(exclusive)
    if opened is True and closed is not None:
        return closed, True
    if not _is_number(opened):
        return closed, False
    if closed is None or tighter(closed, opened) == opened:
        return opened, True
    return closed, False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any, default: int | None) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default

"""JSON text that satisfies a JSON schema, drawn deterministically from a seed: what a model
writes under vLLM's guided decoding for a forced tool call's arguments (the tool's `parameters`
schema). It covers what tool schemas use: types (one or a list), `enum`, `const`, objects with
`properties`, `required`, `patternProperties`, `additionalProperties`, `minProperties`,
`maxProperties` and `dependentRequired` (`schema_keywords`), arrays with `items` or `prefixItems`,
their size bounds and `uniqueItems`, string lengths, number bounds (inclusive and exclusive),
`not` (of `type`, `const`, `enum` or `required`), `anyOf`/`oneOf` (the first branch), `allOf`
(merged) and local `$ref`s. `pattern`, `format` and `multipleOf` are not followed; a keyword of the
wrong type (`"required": 5`, `"properties": []`) is ignored. A schema no value satisfies is a 400.

The text is written as it is drawn, up to a budget of characters: a schema whose shortest value is
longer than any answer can be (`minItems: 1000000000`, a recursive `$ref` fanning out) gives the
text written so far, as a model under guided decoding would have written it when `max_tokens` cut
it, instead of the whole value."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from epp.sim.errors import ApiError
from epp.sim.schema_keywords import (
    NO_REFUSAL,
    Refusal,
    canonical,
    first_escape,
    members,
    merge_parts,
    of_its_type,
    unsatisfiable,
)
from epp.sim.tokens import output_text

MAX_DEPTH = 16
"""Deeper than this (a recursive `$ref`) an object gets only its required properties, an array
its fewest items, and a `$ref` is no longer followed, so a self-referencing schema still ends."""
MAX_MERGES = 10_000
"""`allOf` parts merged for one value at most (counted again for each value): a schema's parts
are resolved once at each depth (`_Draw._resolved`), so parts that `$ref` schemas made of more
parts do not multiply; more than this in one value is refused."""
MAX_NESTING = 300
"""Levels of nesting a value is drawn to at most (a schema nested deeper is refused, 400): each
level is a call of the drawing's, which must stay well within Python's recursion limit."""
_DEFAULT_SPAN = 100
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_TRIES = 32
"""Draws of one value before it is taken that no other value like it can be drawn (an item
`uniqueItems` wants, a value a `not` excludes): a boolean's two values are both drawn by then but
once in four billion times."""


def schema_text(schema: Any, seed: int, budget: int) -> tuple[str, bool]:
    """(JSON text of a value satisfying `schema`, whether it is whole): the same for the same
    schema and seed, written as `json.dumps` writes it; cut once longer than `budget` characters
    (then it is not whole). ApiError 400 for a schema whose `allOf`s multiply past `MAX_MERGES`
    or that nests deeper than `MAX_NESTING`."""
    draw = _Draw(schema, random.Random(seed), budget)
    try:
        draw.value(schema, 0)
    except _Full:
        return "".join(draw.parts), False
    return "".join(draw.parts), True


class _Full(Exception):
    """The text reached its budget."""


class _Draw:
    def __init__(self, root: Any, rng: random.Random, budget: int) -> None:
        self._root = root
        self._rng = rng
        self._budget = budget
        self._merges = 0
        # (id of an `allOf` part of the schema, depth) -> the part resolved: resolving is the
        # same each time, and parts `$ref`ing schemas of more parts multiplied it 10**16-fold.
        # Keyed by id: parts are the request's own objects, alive for the whole drawing.
        self._resolved: dict[tuple[int, int], dict[str, Any]] = {}
        # (id of a schema, depth) -> (the schema, kept alive so the id stays its own, its reading).
        self._nodes: dict[tuple[int, int], tuple[dict[str, Any], _Node]] = {}
        self.parts: list[str] = []

    def _put(self, text: str) -> None:
        self.parts.append(text)
        self._budget -= len(text)
        if self._budget < 0:
            raise _Full

    def value(self, schema: Any, depth: int) -> None:
        _within(depth)
        if not isinstance(schema, dict):  # `true` or a malformed schema: anything goes
            self._put(_json(self._words(1, 3)))
            return
        node = self._node(schema, depth)
        if node.excluded and node.kind not in ("const", "enum", "branch"):
            if self._distinct(node.excluded, "", lambda: self._kind(node, depth)) is None:
                raise unsatisfiable("exclude with `not` every value the simulator drew")
        else:
            self._kind(node, depth)

    def _kind(self, node: _Node, depth: int) -> None:
        kind, resolved = node.kind, node.schema
        if kind == "const":
            self._put(_json(resolved["const"]))
        elif kind == "enum":
            self._put(_json(self._rng.choice(node.options)))
        elif kind == "branch":
            self.value(node.branch, depth + 1)
        elif kind == "object":
            self._object(node, depth)
        elif kind == "array":
            self._array(resolved, depth)
        elif kind in ("integer", "number"):
            self._put(_json(self._number(resolved, kind == "integer", node.fraction)))
        elif kind == "boolean":
            self._put(_json(self._rng.random() < 0.5))
        elif kind == "null":
            self._put("null")
        else:
            self._string(resolved)

    def _node(self, schema: dict[str, Any], depth: int) -> _Node:
        """`schema` as drawn at `depth`, read once: every value of it at that depth (the items of
        an array) is drawn from the same reading, so what reading costs (a `$ref`'s target
        copied, `allOf` parts merged, a `type` or `required` list scanned) is paid once, not
        once per value whatever its size: an array of a billion items whose item merged 300
        parts held the event loop 84 s. Kept with the schema, so its id names it alone."""
        key = (id(schema), depth)
        kept = self._nodes.get(key)
        if kept is None:
            self._merges = 0
            kept = self._nodes[key] = (schema, _read(self._resolve(schema, depth), depth))
        return kept[1]

    def _resolve(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """`$ref` followed (a local JSON pointer) and `allOf` merged into one schema."""
        _within(depth)
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
                self._merges += 1
                if self._merges > MAX_MERGES:
                    raise ApiError(
                        400, f"the tool's parameters merge more than {MAX_MERGES} `allOf` parts", "tools"
                    )
                if isinstance(raw, dict):
                    part = self._resolved.get((id(raw), depth + 1))
                    if part is None:
                        part = self._resolved[id(raw), depth + 1] = self._resolve(raw, depth + 1)
                    merged = merge_parts(merged, part)
            return merged
        return schema

    def _distinct(
        self, avoid: set[str] | frozenset[str], prefix: str, draw: Callable[[], None]
    ) -> str | None:
        """`prefix` and a value of `draw` whose canonical text is not in `avoid`, drawn up to _TRIES
        times (the text of each other one taken back): that text, or None with nothing written."""
        mark, budget = len(self.parts), self._budget
        for _ in range(_TRIES):
            self._put(prefix)
            start = len(self.parts)
            draw()
            drawn = canonical(json.loads("".join(self.parts[start:])))
            if drawn not in avoid:
                return drawn
            del self.parts[mark:]
            self._budget = budget
        return None

    def _object(self, node: _Node, depth: int) -> None:
        self._put("{")
        for index, (name, member) in enumerate(zip(node.names, node.members, strict=True)):
            self._put(("" if index == 0 else ", ") + _json(name) + ": ")
            self.value(member, depth + 1)
        self._put("}")

    def _array(self, schema: dict[str, Any], depth: int) -> None:
        low = _whole(schema.get("minItems"), 0)
        high = _whole(schema.get("maxItems"), max(low, 3))
        count = low if depth >= MAX_DEPTH else min(max(low, self._rng.randint(1, 3)), high)
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        seen: set[str] | None = set() if schema.get("uniqueItems") is True else None
        self._put("[")
        for i in range(count):
            item = prefix[i] if i < len(prefix) else items
            if seen is None:
                self._put(", " if i else "")
                self.value(item, depth + 1)
                continue
            drawn = self._distinct(seen, ", " if i else "", partial(self.value, item, depth + 1))
            if drawn is None and i < low:
                raise unsatisfiable(
                    f"need {low} unique items (minItems, uniqueItems) and no more could be drawn"
                )
            if drawn is None:
                break
            seen.add(drawn)
        self._put("]")

    def _number(self, schema: dict[str, Any], integer: bool, fraction: bool = False) -> int | float:
        """A number within the schema's bounds; an integer if `integer`, a non-whole one if
        `fraction` (a `not` excludes integers, and JSON Schema counts 4.0 as one)."""
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
        for candidate in (drawn, (low + high) / 2, drawn + 0.5, drawn - 0.5, low + 0.01, high - 0.01):
            within = (low < candidate or (not low_open and candidate == low)) and (
                candidate < high or (not high_open and candidate == high)
            )
            if within and not (fraction and float(candidate).is_integer()):
                return candidate
        if fraction:
            raise unsatisfiable("allow only whole numbers, which `not` excludes")
        return (low + high) / 2

    def _string(self, schema: dict[str, Any]) -> None:
        """Words up to `minLength` (cut at `maxLength`), written as they are drawn."""
        low = _whole(schema.get("minLength"), 0)
        high = _whole(schema.get("maxLength"), None)
        self._put('"')
        chunk, length = self._words(1, 3), 0
        while True:
            if high is not None:
                chunk = chunk[: high - length]
            self._put(_json(chunk)[1:-1])
            length += len(chunk)
            if length >= low or (high is not None and length >= high):
                break
            chunk = " " + self._words(1, 1)
        self._put('"')

    def _words(self, fewest: int, most: int) -> str:
        seed = self._rng.getrandbits(32)
        return "".join(output_text(seed, i) for i in range(self._rng.randint(fewest, most))).lstrip()


@dataclass(frozen=True, slots=True)
class _Node:
    """A schema resolved (`$ref` followed, `allOf` merged) and read for drawing at one depth."""

    schema: dict[str, Any]
    kind: str  # "const", "enum", "branch" (the first of `anyOf`/`oneOf`), or a JSON type
    branch: Any = None
    names: tuple[str, ...] = ()  # an object's properties drawn (`schema_keywords.members`)
    members: tuple[Any, ...] = ()  # the schema of each
    options: tuple[Any, ...] = ()  # the `enum` values a `not` leaves
    excluded: frozenset[str] = frozenset()  # canonical texts of the values a `not` excludes
    fraction: bool = False  # a number a `not` wants not whole (it excludes integers)


def _read(schema: dict[str, Any], depth: int) -> _Node:
    return first_escape(schema, lambda refusal: _read_escaping(schema, depth, refusal))


def _read_escaping(schema: dict[str, Any], depth: int, refusal: Refusal) -> _Node:
    """The schema read so that its values escape its `not` by `refusal`, or a 400 if none can."""
    if "const" in schema:
        if refusal.excludes(schema["const"]) or not of_its_type(schema, schema["const"]):
            raise unsatisfiable("exclude their `const` by its type or with `not`")
        return _Node(schema, "const")
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        options = tuple(v for v in schema["enum"] if of_its_type(schema, v) and not refusal.excludes(v))
        if not options:
            raise unsatisfiable("exclude every `enum` value by its type or with `not`")
        return _Node(schema, "enum", options=options)
    for branch in ("anyOf", "oneOf"):
        if isinstance(schema.get(branch), list) and schema[branch]:
            return _Node(schema, "branch", branch=schema[branch][0])
    kind = _type_of(schema, refusal)
    if kind != "object":
        fraction = kind == "number" and "integer" in refusal.types
        return _Node(schema, kind, excluded=refusal.values, fraction=fraction)
    names, schemas = members(schema, depth < MAX_DEPTH, refusal)
    return _Node(schema, kind, names=names, members=schemas, excluded=refusal.values)


def _within(depth: int) -> None:
    if depth > MAX_NESTING:
        raise _too_deep()


def _too_deep() -> ApiError:
    return ApiError(400, f"the tool's parameters nest deeper than {MAX_NESTING} levels", "tools")


def _json(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except RecursionError:  # a `const` or `enum` value nested past what json writes (~1000 levels)
        raise _too_deep() from None


def _type_of(schema: dict[str, Any], refusal: Refusal = NO_REFUSAL) -> str:
    """The type drawn: the schema's own (the first but null of a list), else what its keywords
    imply, else a string; one outside what `refusal` excludes (an object where it needs one)."""
    excluded = set(refusal.types) | ({"integer"} if "number" in refusal.types else set())
    if refusal.together:
        excluded |= set(_TYPES) - {"object"}
    kind = schema.get("type")
    named = [k for k in (kind if isinstance(kind, list) else [kind]) if k in _TYPES]
    if named:
        allowed = [k for k in named if k not in excluded]
        if not allowed:
            raise unsatisfiable("allow no type that `not` does not exclude")
        return next((k for k in allowed if k != "null"), allowed[0])
    if "properties" in schema or "required" in schema:
        implied = "object"
    elif "items" in schema or "prefixItems" in schema:
        implied = "array"
    else:
        implied = "string"
    return implied if implied not in excluded else next(k for k in _TYPES if k not in excluded)


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

"""The keywords of a tool schema that constrain a value as a whole, read for `schema_values`: which
properties an object gets and the schema of each (`properties`, `patternProperties`,
`additionalProperties`, `required`, `minProperties`, `maxProperties`, `dependentRequired` and
draft 7's list form of `dependencies`), and what a `not` excludes. A schema no value satisfies
(a required property `additionalProperties: false` forbids, more required properties than
`maxProperties`, a `not` that excludes every type the schema allows) is the simulator's 400,
param `tools`, saying which keywords clash.

`not` is drawn for the keywords tool schemas use in it: `type`, `const`, `enum` and `required`,
and `anyOf` of them. A value escapes a `not` by failing any one of them (an `anyOf` by escaping
each of its branches), so each is tried in that order until one can be failed (`refusals`); a `not`
holding another keyword (`minimum`, `pattern`...) is refused rather than drawn without it. `allOf`
parts that each have a `not` are merged into a `not` of their `anyOf`: a value escapes them all."""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeGuard, TypeVar

from epp.sim.errors import ApiError

T = TypeVar("T")
_ANY_STRING = {"type": "string"}
"""A property no keyword gives a schema (`additionalProperties` absent or true)."""
_NOT_KEYWORDS = frozenset({"type", "const", "enum", "required", "anyOf"})
_ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "default", "deprecated"})
_JSON_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_ESCAPE_TRIES = 64
"""Combinations tried of the ways to escape each branch of a `not`'s `anyOf` (each branch has up to
four: the product of many grows past any budget)."""
_NOT_NESTING = 16
"""`anyOf`s nested in a `not` that are drawn (beyond: a 400, not the interpreter's recursion)."""
_NAME_TRIES = 64
"""Names tried for each property `minProperties` adds (from the patterns' literal text, then
`property_1`, `property_2`...)."""


def unsatisfiable(message: str) -> ApiError:
    return ApiError(400, f"the tool's parameters {message}", "tools")


@dataclass(frozen=True, slots=True)
class Refusal:
    """One way to escape a `not`: a type outside `types`, a value outside `values` (canonical
    texts), and an object without one of the properties of each group of `together`, all at once
    (one of them for a `not` of one keyword). Empty: no `not`."""

    types: frozenset[str] = frozenset()
    values: frozenset[str] = frozenset()
    together: tuple[tuple[str, ...], ...] = ()

    def excludes(self, value: Any) -> bool:
        """Whether `value` (a `const` or an `enum` entry) fails to escape the `not` this way."""
        kind = json_type(value)
        return (
            kind in self.types
            or (kind == "integer" and "number" in self.types)
            or (bool(self.values) and canonical(value) in self.values)
            or (bool(self.together) and (not isinstance(value, dict) or bool(self.forbidden(value))))
        )

    def forbidden(self, names: Iterable[str]) -> tuple[str, ...]:
        """The first group of `together` all of whose properties are among `names` (empty: none)."""
        present = set(names)
        return next((group for group in self.together if present.issuperset(group)), ())

    def also(self, other: Refusal) -> Refusal:
        """This way and `other` at once (escaping two `not`s)."""
        return Refusal(self.types | other.types, self.values | other.values, self.together + other.together)


NO_REFUSAL = Refusal()


def refusals(schema: dict[str, Any]) -> Iterator[Refusal]:
    """The ways to escape the schema's `not`, to be tried in order (none: NO_REFUSAL alone). A
    `not` that is not an object is ignored as other keywords of the wrong type are, except `true`
    and `{}` (nothing escapes them)."""
    yield from _escapes(schema.get("not"))


def _escapes(banned: Any, depth: int = 0) -> Iterator[Refusal]:
    if depth > _NOT_NESTING:
        raise unsatisfiable(f"nest `anyOf` in `not` deeper than {_NOT_NESTING} levels")
    if banned is True or banned == {}:
        raise unsatisfiable("have a `not` that every value matches")
    if not isinstance(banned, dict):
        yield NO_REFUSAL
        return
    unknown = sorted(set(banned) - _NOT_KEYWORDS - _ANNOTATIONS)
    if unknown:
        raise ApiError(
            400,
            f"the simulator draws `not` only of type, const, enum, required and anyOf, not of: "
            f"{', '.join(unknown)}",
            "tools",
        )
    kinds = banned.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else []
    if kinds:
        yield Refusal(types=frozenset(k for k in kinds if isinstance(k, str)))
    values = [banned["const"]] if "const" in banned else []
    if isinstance(banned.get("enum"), list):
        values += banned["enum"]
    if "const" in banned or isinstance(banned.get("enum"), list):
        yield Refusal(values=frozenset(canonical(v) for v in values))
    together = banned.get("required")
    if isinstance(together, list):
        names = tuple(dict.fromkeys(n for n in together if isinstance(n, str)))
        # `required: []` holds for every object, and any `required` for every other value.
        yield Refusal(together=(names,)) if names else Refusal(types=frozenset(_JSON_TYPES))
    branches = banned.get("anyOf")
    if isinstance(branches, list) and branches:
        ways = [list(_escapes(branch, depth + 1)) for branch in branches]
        for combination in itertools.islice(itertools.product(*ways), _ESCAPE_TRIES):
            yield functools.reduce(Refusal.also, combination)


def first_escape(schema: dict[str, Any], read: Callable[[Refusal], T]) -> T:
    """`read(refusal)` for the first way to escape the schema's `not` that it does not refuse;
    the last refusal if it refuses every one."""
    failure: ApiError | None = None
    for refusal in refusals(schema):
        try:
            return read(refusal)
        except ApiError as error:
            failure = error
    assert failure is not None
    raise failure


def canonical(value: Any) -> str:
    """A JSON value's text for equality as JSON Schema sees it (`uniqueItems`, `const`): keys in
    order, 1.0 the same as 1, true not the same as 1."""
    return json.dumps(_normal(value), sort_keys=True)


def _normal(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


RESTRICTING: Any = object()
"""The key (no JSON text holds it) of the parts of a merged `allOf` that restrict the names they do
not declare (their `additionalProperties` is not true): a part's `additionalProperties` applies
to the names its own `properties` and `patternProperties` do not cover, those another part
declares included, so it is not merged with the others' (`members` reads each). The parts'
`properties` and `patternProperties` are merged: each applies wherever it names."""


MAX_RESTRICTING = 32
"""`allOf` parts with their own `additionalProperties` (not true) merged at most: each undeclared
property's value is drawn for all of theirs at once (beyond: a 400; tool schemas have one or two)."""


@dataclass(frozen=True, slots=True)
class _Restriction:
    """One schema's (or `allOf` part's) `additionalProperties` and the names it spares."""

    properties: dict[str, Any]
    patterns: list[tuple[re.Pattern[str], Any]]
    additional: Any

    @classmethod
    def of(cls, schema: dict[str, Any]) -> _Restriction:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        return cls(properties, _patterns(schema), schema.get("additionalProperties", True))

    def covers(self, name: str) -> bool:
        return name in self.properties or any(p.search(name) for p, _ in self.patterns)

    def allows(self, name: str) -> bool:
        return self.additional is not False or self.covers(name)


def restricting(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The schemas whose `additionalProperties` restricts `schema`'s undeclared names: its merged
    `allOf` parts' (RESTRICTING), else itself unless its `additionalProperties` is absent or true."""
    if RESTRICTING in schema:
        parts: list[dict[str, Any]] = schema[RESTRICTING]
        return parts
    return [] if schema.get("additionalProperties", True) is True else [schema]


def members(
    schema: dict[str, Any], optional: bool, refusal: Refusal
) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    """(the property names an object of `schema` gets, the schema of each). Every required one and
    what they depend on; with `optional`, each declared one too while `maxProperties`, the `not`
    and each `additionalProperties` (of every `allOf` part) allow; then invented names up to
    `minProperties`."""
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    patterns = _patterns(schema)
    restrictions = [_Restriction.of(part) for part in restricting(schema)]
    depends = _dependencies(schema)
    most = _count(schema.get("maxProperties"))
    fewest = _count(schema.get("minProperties")) or 0

    def allowed(name: str) -> bool:
        return all(restriction.allows(name) for restriction in restrictions)

    def complete(names: dict[str, None]) -> dict[str, None]:
        """`names` with what they depend on (dependentRequired), transitively."""
        pending = list(names)
        while pending:
            for needed in depends.get(pending.pop(), ()):
                if needed not in names:
                    names[needed] = None
                    pending.append(needed)
        return names

    def fits(names: dict[str, None]) -> bool:
        return (most is None or len(names) <= most) and not refusal.forbidden(names)

    required = schema.get("required")
    names = complete(
        dict.fromkeys(r for r in required if isinstance(r, str)) if isinstance(required, list) else {}
    )
    if most is not None and len(names) > most:
        raise unsatisfiable(f"require {len(names)} properties but allow at most {most} (maxProperties)")
    if not fits(names):
        quoted = ", ".join(repr(n) for n in refusal.forbidden(names))
        raise unsatisfiable(f"require every property that `not` forbids together: {quoted}")
    for name in properties if optional else ():
        grown = complete({**names, name: None})
        if fits(grown) and all(map(allowed, grown)):  # what it depends on allowed too
            names = grown
    for name in _invented(patterns):
        if len(names) >= fewest:
            break
        grown = complete({**names, name: None})
        if name not in names and fits(grown) and all(map(allowed, grown)):
            names = grown
    if len(names) < fewest:
        found = f"{len(names)} name" + ("" if len(names) == 1 else "s")
        raise unsatisfiable(
            f"need {fewest} properties (minProperties); the simulator found {found} they allow"
        )
    ordered = [n for n in properties if n in names] + [n for n in names if n not in properties]
    return tuple(ordered), tuple(_member(n, properties, patterns, restrictions) for n in ordered)


_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_BOTH_APPLY = ("items",)
"""Keywords whose schemas, in two `allOf` parts, both apply to the same values (each part's
`additionalProperties` to the names it does not declare: RESTRICTING)."""


def merge_parts(merged: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Two `allOf` parts as one schema that asks what both ask, for the keywords drawn: bounds
    the tighter of each, `type` and `enum` the values both allow (a 400 if none), `required`
    both lists, and a property, pattern or item schema both give, both at once."""
    out = {**merged, **part}
    for keyword in ("properties", "patternProperties"):
        first, second = merged.get(keyword), part.get(keyword)
        if isinstance(first, dict) and isinstance(second, dict):
            out[keyword] = {**first, **second}
            out[keyword].update({k: {"allOf": [first[k], second[k]]} for k in first.keys() & second.keys()})
        elif isinstance(first, dict):
            out[keyword] = first
    for keyword in _BOTH_APPLY:
        first, second = merged.get(keyword), part.get(keyword)
        if first is False or second is False:
            out[keyword] = False
        elif isinstance(first, dict) and isinstance(second, dict):
            out[keyword] = {"allOf": [first, second]}
        elif isinstance(first, dict):
            out[keyword] = first
    first_prefix, second_prefix = _prefix(merged), _prefix(part)
    if first_prefix or second_prefix:  # each position: what each part asks there
        out["prefixItems"] = [
            _both(_item_at(merged, first_prefix, i), _item_at(part, second_prefix, i))
            for i in range(max(len(first_prefix), len(second_prefix)))
        ]
    out[RESTRICTING] = restricting(merged) + restricting(part)
    if len(out[RESTRICTING]) > MAX_RESTRICTING:
        raise unsatisfiable(
            f"merge more than {MAX_RESTRICTING} `allOf` parts with an additionalProperties that is not true"
        )
    required = [r for s in (merged, part) if isinstance(s.get("required"), list) for r in s["required"]]
    out["required"] = list(dict.fromkeys(required))
    for keywords, tighter in ((_LOWER_BOUNDS, max), (_UPPER_BOUNDS, min)):
        for keyword in keywords:
            first, second = merged.get(keyword), part.get(keyword)
            if _is_bound(first) and _is_bound(second):
                out[keyword] = tighter(first, second)
            elif _is_bound(first):
                out[keyword] = first
    if "not" in merged and "not" in part:  # a value escapes both
        out["not"] = {"anyOf": _branches(merged["not"]) + _branches(part["not"])}
    if merged.get("uniqueItems") is True:
        out["uniqueItems"] = True
    kinds = [_types(s["type"]) for s in (merged, part) if isinstance(s.get("type"), str | list)]
    if len(kinds) == 2:
        common = [k for k in kinds[0] if k in kinds[1]] + (
            ["integer"]
            if ("number" in kinds[0]) != ("number" in kinds[1]) and "integer" in kinds[0] + kinds[1]
            else []
        )
        if not common:
            raise unsatisfiable("combine `allOf` parts that allow no type in common")
        out["type"] = list(dict.fromkeys(common))
    if isinstance(merged.get("enum"), list) and isinstance(part.get("enum"), list):
        allowed = {canonical(v) for v in part["enum"]}
        out["enum"] = [v for v in merged["enum"] if canonical(v) in allowed]
        if not out["enum"]:
            raise unsatisfiable("combine `allOf` parts whose `enum`s share no value")
    elif isinstance(merged.get("enum"), list):
        out["enum"] = merged["enum"]
    return out


def _branches(banned: Any) -> list[Any]:
    """The schemas a `not` excludes each of: those of a `not` of only an `anyOf` (as merged), else
    itself, so the `not` of many merged parts is one `anyOf`, not one nested per part."""
    if isinstance(banned, dict) and banned.keys() == {"anyOf"} and isinstance(banned["anyOf"], list):
        return list(banned["anyOf"])
    return [banned]


def _prefix(schema: dict[str, Any]) -> list[Any]:
    prefix = schema.get("prefixItems")
    return prefix if isinstance(prefix, list) else []


def _item_at(schema: dict[str, Any], prefix: list[Any], index: int) -> Any:
    """The schema an item at `index` must satisfy in `schema`: its `prefixItems` entry, else its
    `items` (None: any item)."""
    if index < len(prefix):
        return prefix[index]
    items = schema.get("items")
    return items if isinstance(items, dict | bool) else None


def _both(first: Any, second: Any) -> Any:
    if first is None or second is None:
        return second if first is None else first
    return {"allOf": [first, second]}


def of_its_type(schema: dict[str, Any], value: Any) -> bool:
    """Whether a `const` or `enum` value is of a type the schema's `type` allows (any, without
    one): an `allOf` may give both."""
    if not isinstance(schema.get("type"), str | list):
        return True
    kinds = _types(schema["type"])
    kind = json_type(value)
    return kind in kinds or (kind == "integer" and "number" in kinds)


def _types(kind: Any) -> list[str]:
    return [k for k in (kind if isinstance(kind, list) else [kind]) if isinstance(k, str)]


def _is_bound(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _member(
    name: str,
    properties: dict[str, Any],
    patterns: list[tuple[re.Pattern[str], Any]],
    restrictions: list[_Restriction],
) -> Any:
    """The schema one property's value must satisfy: its declaration and every pattern its name
    matches, and the `additionalProperties` of each part that does not cover it, all at once."""
    if not all(restriction.allows(name) for restriction in restrictions):
        raise unsatisfiable(
            f"require {name!r}, which no property or pattern allows (additionalProperties is false)"
        )
    applying = ([properties[name]] if name in properties else []) + [s for p, s in patterns if p.search(name)]
    applying += [r.additional for r in restrictions if isinstance(r.additional, dict) and not r.covers(name)]
    if len(applying) > 1:
        return {"allOf": applying}
    return applying[0] if applying else _ANY_STRING


def _patterns(schema: dict[str, Any]) -> list[tuple[re.Pattern[str], Any]]:
    patterns = schema.get("patternProperties")
    if not isinstance(patterns, dict):
        return []
    compiled = []
    for pattern, value in patterns.items():
        try:
            compiled.append((re.compile(pattern), value))
        except re.error:
            raise unsatisfiable(
                f"have a patternProperties pattern that is not a regular expression: {pattern!r}"
            ) from None
    return compiled


def _invented(patterns: list[tuple[re.Pattern[str], Any]]) -> Iterator[str]:
    """Names to add for `minProperties`: each pattern's text without anchors and with its
    classes' first characters (`^tag_[0-9]+$`: `tag_0`), numbered; then `property_N`."""
    for pattern, _ in patterns:
        stem = re.sub(r"\[(.)[^\]]*\][+*]?|[\^$]|\\.|[+*?]", lambda m: m.group(1) or "", pattern.pattern)
        for i in range(_NAME_TRIES):
            yield stem if i == 0 else f"{stem}{i}"
    for i in range(1, _NAME_TRIES + 1):
        yield f"property_{i}"


def _dependencies(schema: dict[str, Any]) -> dict[str, list[str]]:
    """name -> the names it requires: `dependentRequired`, and draft 7's `dependencies` entries
    that are lists (its schema entries are not drawn)."""
    found: dict[str, list[str]] = {}
    for keyword in ("dependencies", "dependentRequired"):
        table = schema.get(keyword)
        for name, needed in table.items() if isinstance(table, dict) else ():
            if isinstance(needed, list):
                found.setdefault(name, []).extend(n for n in needed if isinstance(n, str))
    return found


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

"""A small subset of CEL (Common Expression Language), enough for the expressions GIE's and llm-d's
`request-attribute-reporter` evaluates over a response's `usage`, with CEL's own semantics:

- literals: integers (`int`), decimals (`double`), `true`, `false`, `null`, single- or
  double-quoted strings;
- variables, field selection `a.b` and indexing `a["b"]` on maps (a missing key is an error);
- `has(a.b)` (field presence), conversions `int(x)`, `double(x)`, `size(x)`;
- unary `-`, `!`; `*`, `/`, `%`, `+`, `-` (int with int, double with double: CEL has no implicit
  numeric conversion; int division truncates; division by zero is an error); comparisons
  `== != < <= > >=` (numbers compare across int and double); `&&`, `||` (short-circuit);
  the conditional `c ? a : b`.

Anything else (macros, `in`, lists, other functions) is refused when the expression is compiled, so
a config never carries an expression this EPP would evaluate differently from the Go EPP. JSON
numbers in the data (protobuf Struct values, as upstream binds `usage`) are doubles."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Evaluator = Callable[[Mapping[str, Any]], Any]

_TOKEN = re.compile(
    r"""\s*(?:
    (?P<double>\d+\.\d*(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+|\.\d+(?:[eE][+-]?\d+)?)
  | (?P<int>\d+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||[-+*/%<>!?:().\[\],])
  )""",
    re.VERBOSE,
)
_FUNCTIONS = ("has", "int", "double", "size")


class CelError(ValueError):
    """An expression outside the supported subset, or one that fails to evaluate."""


def compile_expression(text: str) -> Evaluator:
    """Parse `text`; the result evaluates it against a mapping of variables."""
    parser = _Parser(_tokens(text), text)
    evaluator = parser.expression()
    if parser.peek() is not None:
        raise CelError(f"unexpected {parser.peek()!r} in {text.strip()!r}")
    return evaluator


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if match is None or match.end() == position:
            raise CelError(f"unsupported syntax at {stripped[position:]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens = tokens
        self.position = 0
        self.text = text.strip()

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise CelError(f"unexpected end of {self.text!r}")
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise CelError(f"expected {expected!r}, got {token[1]!r} in {self.text!r}")
        self.position += 1
        return token

    def expression(self) -> Evaluator:
        condition = self.binary(0)
        if self.peek() != "?":
            return condition
        self.take("?")
        then = self.expression()
        self.take(":")
        otherwise = self.expression()
        return lambda env: then(env) if _bool(condition(env)) else otherwise(env)

    _LEVELS: tuple[tuple[str, ...], ...] = (
        ("||",),
        ("&&",),
        ("==", "!=", "<", "<=", ">", ">="),
        ("+", "-"),
        ("*", "/", "%"),
    )

    def binary(self, level: int) -> Evaluator:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            op = self.take()[1]
            right = self.binary(level + 1)
            left = _combine(op, left, right)
        return left

    def unary(self) -> Evaluator:
        if self.peek() == "!":
            self.take()
            operand = self.unary()
            return lambda env: not _bool(operand(env))
        if self.peek() == "-":
            self.take()
            operand = self.unary()
            return lambda env: _negate(operand(env))
        return self.member()

    def member(self) -> Evaluator:
        return self.selection()[0]

    def selection(self) -> tuple[Evaluator, Evaluator | None, str | None]:
        """The member chain, and for a final `.field`: the holder's evaluator and the field."""
        value = self.primary()
        holder: Evaluator | None = None
        field: str | None = None
        while self.peek() in (".", "["):
            if self.take()[1] == ".":
                kind, name = self.take()
                if kind != "ident":
                    raise CelError(f"expected a field name after '.', got {name!r} in {self.text!r}")
                holder, field = value, name
                value = _select(value, _constant(name))
            else:
                key = self.expression()
                self.take("]")
                holder, field = None, None
                value = _select(value, key)
        return value, holder, field

    def primary(self) -> Evaluator:
        kind, text = self.take()
        if kind == "int":
            number = int(text)
            return lambda env: number
        if kind == "double":
            decimal = float(text)
            return lambda env: decimal
        if kind == "string":
            string = bytes(text[1:-1], "utf-8").decode("unicode_escape")
            return lambda env: string
        if text == "(":
            inner = self.expression()
            self.take(")")
            return inner
        if kind == "ident":
            if text in ("true", "false"):
                flag = text == "true"
                return lambda env: flag
            if text == "null":
                return lambda env: None
            if self.peek() == "(":
                return self.call(text)
            return lambda env: _variable(env, text)
        raise CelError(f"unsupported syntax {text!r} in {self.text!r}")

    def call(self, name: str) -> Evaluator:
        if name not in _FUNCTIONS:
            raise CelError(
                f"unsupported function {name}() in {self.text!r} (supported: {', '.join(_FUNCTIONS)})"
            )
        self.take("(")
        if name == "has":
            _value, holder, field = self.selection()
            self.take(")")
            if holder is None or field is None:
                raise CelError(
                    f"has() takes a field selection like has(usage.prompt_tokens) in {self.text!r}"
                )
            return lambda env: _has(holder(env), field)
        argument = self.expression()
        self.take(")")
        conversions: dict[str, Callable[[Any], Any]] = {"int": _to_int, "double": _to_double, "size": _size}
        convert = conversions[name]
        return lambda env: convert(argument(env))


def _constant(value: Any) -> Evaluator:
    return lambda _env: value


def _variable(env: Mapping[str, Any], name: str) -> Any:
    if name not in env:
        raise CelError(f"undeclared reference to {name!r}")
    return env[name]


def _select(holder: Evaluator, key: Evaluator) -> Evaluator:
    def select(env: Mapping[str, Any]) -> Any:
        value, name = holder(env), key(env)
        if not isinstance(value, Mapping):
            raise CelError(f"cannot select {name!r} from a {_type(value)}")
        if name not in value:
            raise CelError(f"no such key: {name}")
        return value[name]

    return select


def _has(value: Any, field: str) -> bool:
    if not isinstance(value, Mapping):
        raise CelError(f"has() needs a map, got a {_type(value)}")
    return field in value


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "map"
    return "null" if value is None else type(value).__name__


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise CelError(f"expected a bool, got a {_type(value)}")
    return value


def _negate(value: Any) -> Any:
    if _type(value) not in ("int", "double"):
        raise CelError(f"no matching overload for -{_type(value)}")
    return -value


def _combine(op: str, left: Evaluator, right: Evaluator) -> Evaluator:
    if op == "&&":
        return lambda env: _bool(left(env)) and _bool(right(env))
    if op == "||":
        return lambda env: _bool(left(env)) or _bool(right(env))
    if op in ("==", "!="):
        equal = op == "=="
        return lambda env: _equal(left(env), right(env)) == equal
    if op in ("<", "<=", ">", ">="):
        return lambda env: _compare(op, left(env), right(env))
    return lambda env: _arithmetic(op, left(env), right(env))


def _equal(a: Any, b: Any) -> bool:
    if _type(a) in ("int", "double") and _type(b) in ("int", "double"):
        return bool(a == b)
    return _type(a) == _type(b) and bool(a == b)


def _compare(op: str, a: Any, b: Any) -> bool:
    numeric = _type(a) in ("int", "double") and _type(b) in ("int", "double")
    if not numeric and not (_type(a) == _type(b) == "string"):
        raise CelError(f"no matching overload for {_type(a)} {op} {_type(b)}")
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _arithmetic(op: str, a: Any, b: Any) -> Any:
    kinds = (_type(a), _type(b))
    if kinds == ("string", "string") and op == "+":
        return a + b
    if kinds not in (("int", "int"), ("double", "double")):
        raise CelError(f"no matching overload for {kinds[0]} {op} {kinds[1]}")
    if op == "+":
        result = a + b
    elif op == "-":
        result = a - b
    elif op == "*":
        result = a * b
    elif kinds == ("double", "double"):
        if op == "%":
            raise CelError("no matching overload for double % double")
        result = a / b if b else (float("inf") if a > 0 else float("-inf") if a < 0 else float("nan"))
    else:
        if b == 0:
            raise CelError("division by zero" if op == "/" else "modulus by zero")
        quotient = abs(a) // abs(b) * (1 if (a >= 0) == (b >= 0) else -1)  # truncates toward zero
        result = quotient if op == "/" else a - b * quotient
    if isinstance(result, int) and not -(2**63) <= result < 2**63:
        raise CelError("int overflow")
    return result


def _to_int(value: Any) -> int:
    if _type(value) == "int":
        return int(value)
    if _type(value) == "double":
        if not -(2**63) <= value < 2**63:
            raise CelError("int() range error")
        return int(value)
    if _type(value) == "string":
        try:
            return int(value)
        except ValueError:
            raise CelError(f"int() cannot convert {value!r}") from None
    raise CelError(f"no matching overload for int({_type(value)})")


def _to_double(value: Any) -> float:
    if _type(value) in ("int", "double"):
        return float(value)
    if _type(value) == "string":
        try:
            return float(value)
        except ValueError:
            raise CelError(f"double() cannot convert {value!r}") from None
    raise CelError(f"no matching overload for double({_type(value)})")


def _size(value: Any) -> int:
    if _type(value) in ("string", "map"):
        return len(value)
    raise CelError(f"no matching overload for size({_type(value)})")

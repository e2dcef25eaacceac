"""Strict decoding shared by the config file and plugin parameters: camelCase keys as GIE and llm-d
write them, unknown keys rejected with the list of allowed ones, no silent type coercion.

Plugin parameters are the exception GIE and llm-d make themselves: the Go EPPs decode a plugin's
`parameters` with plain `json.Unmarshal`, which ignores unknown fields, while the document around
them is decoded strictly. `lenient_unknown_fields()` reproduces that for whatever is validated
inside it: an unknown key is dropped and reported as a warning naming the closest known field."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """An invalid configuration; the message names the field path and what would be accepted."""


# Warnings about dropped unknown fields, collected while lenient decoding is on (None: strict).
_LENIENT: ContextVar[list[str] | None] = ContextVar("epp_lenient_unknown_fields", default=None)


@contextmanager
def lenient_unknown_fields() -> Iterator[list[str]]:
    """Within this block unknown fields of any StrictModel are dropped instead of rejected; the
    yielded list receives one message per dropped field (`unknown field 'x' ignored; ...`)."""
    collected: list[str] = []
    token = _LENIENT.set(collected)
    try:
        yield collected
    finally:
        _LENIENT.reset(token)


def closest_field(name: str, allowed: list[str]) -> str | None:
    """The allowed field most like `name` (case-insensitive), if any is reasonably close."""
    by_lower = {a.lower(): a for a in allowed}
    match = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


def unknown_field_message(name: str, allowed: list[str], where: str = "") -> str:
    closest = closest_field(name, allowed)
    hint = f"; did you mean {closest!r}?" if closest else ""
    known = ", ".join(allowed) or "none"
    place = f" in {where}" if where else ""
    return f"unknown field {name!r}{place} ignored{hint} (known: {known})"


class StrictModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True, strict=True)
    # True on a plugin's own `parameters` model: lenient warnings name no nested model for it.
    is_parameters_root: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, data: Any) -> Any:
        """Pydantic's own extra check does not say what is allowed; this one does."""
        if isinstance(data, dict):
            allowed = [field.alias or name for name, field in cls.model_fields.items()]
            unknown = [key for key in data if key not in allowed]
            lenient = _LENIENT.get()
            if unknown and lenient is not None:
                for key in unknown:
                    lenient.append(unknown_field_message(str(key), allowed, _where(cls)))
                return {k: v for k, v in data.items() if k in allowed}
            for key in unknown:
                closest = closest_field(str(key), allowed)
                hint = f"; did you mean {closest!r}?" if closest else ""
                raise PydanticCustomError(
                    "unknown_field",
                    "unknown field (allowed: {allowed}){hint}",
                    {"field": str(key), "allowed": ", ".join(allowed) or "none", "hint": hint},
                )
        return data


def _where(cls: type[BaseModel]) -> str:
    """Nested parameter models say which part of the parameters they are; the top one is blank."""
    return "" if getattr(cls, "is_parameters_root", False) else cls.__name__


def field_path(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """`plugins[2].parameters.blockSizeTokens` from pydantic's location tuple."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def describe(error: ValidationError, prefix: str = "") -> list[str]:
    """One line per problem: `<path>: <what is wrong>`."""
    lines = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        if item["type"] == "unknown_field":
            loc = (*loc, item["ctx"]["field"])
        path = field_path(loc, prefix)
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return lines

"""Strict decoding shared by the config file and plugin parameters: camelCase keys as GIE and llm-d
write them, unknown keys rejected with the list of allowed ones, no silent type coercion."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """An invalid configuration; the message names the field path and what would be accepted."""


class StrictModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_fields(cls, data: Any) -> Any:
        """Pydantic's own extra check does not say what is allowed; this one does."""
        if isinstance(data, dict):
            allowed = [field.alias or name for name, field in cls.model_fields.items()]
            for key in data:
                if key not in allowed:
                    raise PydanticCustomError(
                        "unknown_field",
                        "unknown field (allowed: {allowed})",
                        {"field": str(key), "allowed": ", ".join(allowed) or "none"},
                    )
        return data


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

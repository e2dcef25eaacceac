"""The simulator's API errors, answered in vLLM's shape."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class ApiError(Exception):
    """An error answered in vLLM's shape: ``{"object": "error", "message", "type", "param", "code"}``."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind  # vLLM's `err_type` where it names one; else from the status

    def body(self) -> dict[str, Any]:
        return {
            "object": "error",
            "message": self.message,
            "type": self.kind or error_type(self.status),
            "param": self.param,
            "code": self.status,
        }


def error_type(status: int) -> str:
    """``BadRequestError``, ``NotFoundError``, ``TooManyRequestsError``, ``InternalServerError``..."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    name = "".join(word.capitalize() if word.islower() else word for word in phrase.replace("-", " ").split())
    return name if name.endswith("Error") else name + "Error"

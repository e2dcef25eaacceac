"""Error codes the EPP answers with, their HTTP statuses, and the JSON body clients receive."""

from __future__ import annotations

import enum

import orjson


class ErrorCode(enum.Enum):
    """GIE's error codes (pkg/common/error) with the HTTP status each becomes."""

    BAD_REQUEST = ("BadRequest", 400)
    NOT_FOUND = ("NotFound", 404)
    PAYLOAD_TOO_LARGE = ("PayloadTooLarge", 413)
    RESOURCE_EXHAUSTED = ("ResourceExhausted", 429)
    INTERNAL = ("Internal", 500)
    SERVICE_UNAVAILABLE = ("ServiceUnavailable", 503)

    def __init__(self, label: str, status: int) -> None:
        self.label = label
        self.status = status


class RequestError(Exception):
    """A request the EPP answers itself instead of routing; never a traceback to the client."""

    def __init__(self, code: ErrorCode, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds, for a Retry-After header

    @property
    def status(self) -> int:
        return self.code.status

    def body(self, prefix: str = "inference error") -> bytes:
        """OpenAI-shaped error JSON whose message keeps GIE's `<prefix>: <Code> - <msg>` text."""
        return orjson.dumps(
            {
                "error": {
                    "message": f"{prefix}: {self.code.label} - {self.message}",
                    "type": self.code.label,
                    "code": self.code.status,
                }
            }
        )

    def __repr__(self) -> str:
        return f"RequestError({self.code.label}, {self.message!r})"

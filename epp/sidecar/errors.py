"""Errors the sidecar answers itself, shaped like vLLM's so OpenAI clients parse them unchanged."""

from __future__ import annotations

import orjson
from aiohttp import web

DECODE_NOT_READY = (
    "The decode node is not ready. Please check that the vLLM service is running and the port "
    "configuration is correct."
)

# vLLM names 400 and 500 `...Error`; llm-d's sidecar names the proxy statuses after the status phrase.
_ERROR_TYPES = {
    400: "BadRequestError",
    403: "Forbidden",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


class ProxyError(Exception):
    """Raised anywhere in request handling; the handler turns it into a vLLM-shaped response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps(
        {
            "object": "error",
            "message": message,
            "type": _ERROR_TYPES.get(status, "InternalServerError"),
            "param": None,
            "code": status,
        }
    )


def error_response(error: ProxyError) -> web.Response:
    return web.Response(
        status=error.status, body=error_body(error.status, error.message), content_type="application/json"
    )

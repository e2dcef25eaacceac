"""Between protocol and scheduling: candidates, admission, scheduling, the request-control hooks,
and per-request bookkeeping."""

from epp.requestcontrol.director import Director, RoutedRequest
from epp.requestcontrol.hooks import (
    AGENT_IDENTITY,
    RESPONSE_EVENT_STREAM,
    SERVED_ENDPOINT,
    AdmitRequest,
    Parsers,
    PreRequest,
    RequestControlHooks,
    RequestHeaderProcessor,
    RequestParser,
    ResponseBodyProcessor,
    ResponseComplete,
    ResponseHeaderProcessor,
    ResponseReceived,
    ResponseStreaming,
    Screener,
)

__all__ = [
    "AGENT_IDENTITY",
    "RESPONSE_EVENT_STREAM",
    "SERVED_ENDPOINT",
    "AdmitRequest",
    "Director",
    "Parsers",
    "PreRequest",
    "RequestControlHooks",
    "RequestHeaderProcessor",
    "RequestParser",
    "ResponseBodyProcessor",
    "ResponseComplete",
    "ResponseHeaderProcessor",
    "ResponseReceived",
    "ResponseStreaming",
    "RoutedRequest",
    "Screener",
]

"""Between protocol and scheduling: candidates, admission, scheduling, the request-control hooks,
and per-request bookkeeping."""

from epp.requestcontrol.director import Director, RoutedRequest
from epp.requestcontrol.hooks import (
    Admitter,
    Parsers,
    PreRequest,
    RequestControlHooks,
    RequestParser,
    ResponseBodyProcessor,
    ResponseComplete,
    ResponseHeaderProcessor,
    ResponseReceived,
)

__all__ = [
    "Admitter",
    "Director",
    "Parsers",
    "PreRequest",
    "RequestControlHooks",
    "RequestParser",
    "ResponseBodyProcessor",
    "ResponseComplete",
    "ResponseHeaderProcessor",
    "ResponseReceived",
    "RoutedRequest",
]

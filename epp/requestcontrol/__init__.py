"""Between protocol and scheduling: candidates, admission, scheduling, the request-control hooks,
and per-request bookkeeping."""

from epp.requestcontrol.director import Director, RoutedRequest
from epp.requestcontrol.hooks import (
    AdmitRequest,
    PreRequest,
    RequestControlHooks,
    RequestParser,
    ResponseComplete,
    ResponseReceived,
)

__all__ = [
    "AdmitRequest",
    "Director",
    "PreRequest",
    "RequestControlHooks",
    "RequestParser",
    "ResponseComplete",
    "ResponseReceived",
    "RoutedRequest",
]

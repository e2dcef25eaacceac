"""OpenTelemetry tracing (`--tracing`, as GIE's flag, configured with the standard `OTEL_*`
environment variables).

Off (the default), nothing of OpenTelemetry is imported and the request path pays one check of
`tracing.active`. On, every ext_proc exchange is a span (`epp.request`, continuing the W3C
`traceparent` the client sent) with children for parsing, admission, scheduling (one child per
scheduling profile) and the response; the request forwarded to the model server carries the
exchange's `traceparent`, so the model server's spans join the same trace."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from epp.tracing.spans import RequestTrace, Tracing

__all__ = ["active", "configure", "install", "shutdown", "start_request"]

# The configured tracing, or None: the one thing the request path checks.
active: Tracing | None = None


def configure(enabled: bool) -> Tracing | None:
    """Set tracing up from the OTEL_* environment (see `spans.Tracing.from_environment`)."""
    global active
    if not enabled:
        active = None
        return None
    from epp.tracing.spans import Tracing

    active = Tracing.from_environment()
    return active


def install(tracing: Tracing | None) -> None:
    """Use `tracing` (tests: an in-memory exporter); None turns tracing off."""
    global active
    active = tracing


def start_request(headers: dict[str, str]) -> RequestTrace | None:
    """The spans of one ext_proc exchange, or None when tracing is off or the request is not sampled."""
    return active.start_request(headers) if active is not None else None


def shutdown() -> None:
    """Flush and stop the exporter (blocking: call it from a thread)."""
    global active
    if active is not None:
        active.shutdown()
        active = None

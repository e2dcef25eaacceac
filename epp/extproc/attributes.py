"""Envoy request attributes the EPP reads from the request-headers message. The ext_proc filter
sends those its `request_attributes` lists, as `ProcessingRequest.attributes`: one Struct per
filter (keyed by the filter's name), each attribute a Value. `request.time`, when the gateway
received the request's first byte, is a timestamp, which arrives as its RFC 3339 string."""

from __future__ import annotations

from datetime import datetime

from epp.extproc.pb import ext_proc

REQUEST_TIME = "request.time"


def request_time(message: ext_proc.ProcessingRequest) -> float | None:
    """When the gateway received the request (Unix seconds), or None when not sent (another
    gateway, or a filter config without the attribute) or not a timestamp."""
    for attributes in message.attributes.values():
        value = attributes.fields.get(REQUEST_TIME)
        if value is not None and value.HasField("string_value"):
            try:
                return datetime.fromisoformat(value.string_value).timestamp()
            except ValueError:
                return None
    return None

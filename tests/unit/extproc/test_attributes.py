"""Envoy's request attributes as they arrive with the request headers: `request.time` is a
timestamp, sent as its RFC 3339 string in the Struct keyed by the ext_proc filter's name."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import struct_pb2

from epp.extproc.attributes import request_time
from epp.extproc.pb import ext_proc

FILTER = "envoy.filters.http.ext_proc"


def received_at(unix: float) -> struct_pb2.Struct:
    """The attributes Envoy sends for `request_attributes: [request.time]`."""
    stamp = datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    attributes = struct_pb2.Struct()
    attributes.update({"request.time": stamp})
    return attributes


def with_attributes(attributes: struct_pb2.Struct) -> ext_proc.ProcessingRequest:
    message = ext_proc.ProcessingRequest(request_headers=ext_proc.HttpHeaders())
    message.attributes[FILTER].CopyFrom(attributes)
    return message


def test_request_time_is_read_as_unix_seconds() -> None:
    assert request_time(with_attributes(received_at(1_796_580_098.25))) == 1_796_580_098.25


def test_nanosecond_timestamps_are_read() -> None:
    attributes = struct_pb2.Struct()
    attributes.update({"request.time": "2026-12-06T18:01:38.123456789Z"})
    expected = datetime(2026, 12, 6, 18, 1, 38, 123456, UTC).timestamp()
    assert request_time(with_attributes(attributes)) == expected


def test_without_the_attribute_there_is_no_time() -> None:
    assert request_time(ext_proc.ProcessingRequest(request_headers=ext_proc.HttpHeaders())) is None
    other = struct_pb2.Struct()
    other.update({"request.path": "/v1/completions"})
    assert request_time(with_attributes(other)) is None


def test_a_value_that_is_no_timestamp_is_ignored() -> None:
    for value in ("yesterday", 1_796_580_098.0):
        attributes = struct_pb2.Struct()
        attributes.update({"request.time": value})
        assert request_time(with_attributes(attributes)) is None

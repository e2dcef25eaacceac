"""Builders for the ext_proc responses the EPP sends, kept apart from the state machine."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from epp.extproc.pb import core, ext_proc, http_status
from epp.headers import (
    DESTINATION_HEADER,
    DESTINATION_SCORES_KEY,
    EPP_ERROR_KEY,
    FALLBACK_GROUP_KEY,
    LB_NAMESPACE,
    STREAMING_KEY,
    SUBSET_KEY,
    SUBSET_NAMESPACE,
)
from epp.requests import RequestError

# Envoy's per-message body limit is 64 KiB; GIE answers in chunks a little under it.
BODY_CHUNK_BYTES = 62_000

_OVERWRITE = core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def fill_header_mutation(
    mutation: ext_proc.HeaderMutation, set_headers: Mapping[str, str], remove: Sequence[str]
) -> None:
    """Set and remove headers in a mutation that is already part of its reply: filling nested
    fields in place costs about half of building them from keyword arguments (which copies each
    sub-message into its parent), and every routed request pays it."""
    add = mutation.set_headers.add
    for key, value in set_headers.items():
        option = add()
        option.header.key = key
        option.header.raw_value = value.encode()
        option.append_action = _OVERWRITE
    if remove:
        mutation.remove_headers.extend(remove)


def header_mutation(set_headers: Mapping[str, str], remove: Sequence[str]) -> ext_proc.HeaderMutation:
    mutation = ext_proc.HeaderMutation()
    fill_header_mutation(mutation, set_headers, remove)
    return mutation


def routing_response(
    reply: str,
    set_headers: Mapping[str, str],
    remove: Sequence[str],
    destination: str,
    streaming: bool,
    fallback_group: str,
    scores: Mapping[str, float] | None = None,
) -> ext_proc.ProcessingResponse:
    """The reply (`request_headers` or `request_body`) that routes: the headers set and removed,
    the route cache cleared, and GIE's destination (`primary,fallback,...`) in envoy.lb with the
    primary's fallback group (where our bootstrap's retries may go once the list is used up); a
    streaming request is marked so a gateway can bound its time to first byte apart from its
    length. `scores` (llm-d's --emit-endpoint-scores): each scored candidate's total, by host:port."""
    response = ext_proc.ProcessingResponse()
    common = getattr(response, reply).response
    common.clear_route_cache = True
    fill_header_mutation(common.header_mutation, set_headers, remove)
    # The Struct's fields written directly: protobuf's Python dict-like wrapper (get_or_create_struct,
    # item assignment) costs about four times as much, on every routed request.
    lb = response.dynamic_metadata.fields[LB_NAMESPACE].struct_value.fields
    lb[DESTINATION_HEADER].string_value = destination
    lb[FALLBACK_GROUP_KEY].string_value = fallback_group
    if streaming:
        lb[STREAMING_KEY].string_value = "true"
    if scores:
        lb[DESTINATION_SCORES_KEY].struct_value.update(scores)
    return response


def _body_template(request: bool) -> ext_proc.ProcessingResponse:
    template = ext_proc.ProcessingResponse()
    body = template.request_body if request else template.response_body
    body.response.body_mutation.streamed_response.SetInParent()
    return template


# Copying a prebuilt message and setting the chunk costs about a seventh of building the five
# nested messages from keyword arguments, and under Envoy AI Gateway this runs once per token.
_BODY_TEMPLATES = {True: _body_template(True), False: _body_template(False)}


def streamed_body(
    body: bytes, end_of_stream: bool, *, request: bool
) -> Iterator[ext_proc.ProcessingResponse]:
    """The body as FULL_DUPLEX_STREAMED replies: chunks under Envoy's limit, EoS on the last."""
    template = _BODY_TEMPLATES[request]
    size = len(body)
    for start in range(0, size, BODY_CHUNK_BYTES) if size else (0,):
        response = ext_proc.ProcessingResponse()
        response.CopyFrom(template)
        reply = response.request_body if request else response.response_body
        streamed = reply.response.body_mutation.streamed_response
        streamed.body = body[start : start + BODY_CHUNK_BYTES] if size > BODY_CHUNK_BYTES else body
        streamed.end_of_stream = end_of_stream and start + BODY_CHUNK_BYTES >= size
        yield response


def immediate_error(
    error: RequestError, prefix: str, headers: Mapping[str, str] | None = None
) -> ext_proc.ProcessingResponse:
    """The client's answer to a refused request; `headers`: more headers for it."""
    metadata = struct_pb2.Struct()
    metadata.get_or_create_struct(LB_NAMESPACE)[EPP_ERROR_KEY] = error.code.label
    return ext_proc.ProcessingResponse(
        dynamic_metadata=metadata,
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status.HttpStatus(code=error.status),
            headers=header_mutation({**_error_headers(error), **(headers or {})}, ()),
            body=error.body(prefix),
            details=f"epp_{error.code.label}",
        ),
    )


def _error_headers(error: RequestError) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
    return headers


def read_headers(headers: ext_proc.HttpHeaders) -> dict[str, str]:
    """Header map as Envoy sends it (lowercase keys); a repeated header's last value wins."""
    return {h.key: header_value(h) for h in headers.headers.headers}


def header_value(header: core.HeaderValue) -> str:
    """One header's value, preferring raw_value. Each field read from the message makes a new
    object, so raw_value is read once; `decode` without an encoding argument is UTF-8 without
    looking the codec up (7 against 11 us for 11 headers)."""
    return raw.decode(errors="replace") if (raw := header.raw_value) else header.value


def read_metadata(metadata: core.Metadata) -> dict[str, dict[str, Any]]:
    """Every namespace of the data plane's metadata as plain values (`{namespace: {key: value}}`).
    Most messages carry none: an empty map is not iterated (its items view is Python code)."""
    if not metadata.filter_metadata:
        return {}
    return {namespace: MessageToDict(struct) for namespace, struct in metadata.filter_metadata.items()}


def read_subset_hint(metadata: core.Metadata) -> list[str] | None:
    """The data plane's `envoy.lb.subset_hint` list, or None when it sent none."""
    if SUBSET_NAMESPACE not in metadata.filter_metadata:
        return None
    fields = metadata.filter_metadata[SUBSET_NAMESPACE].fields
    if SUBSET_KEY not in fields:
        return None
    value = fields[SUBSET_KEY]
    if value.HasField("string_value"):
        return [v.strip() for v in value.string_value.split(",") if v.strip()]
    return [v.string_value for v in value.list_value.values if v.HasField("string_value")]

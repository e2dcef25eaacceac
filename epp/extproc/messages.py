"""Builders for the ext_proc responses the EPP sends, kept apart from the state machine."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from google.protobuf import struct_pb2

from epp.extproc.pb import core, ext_proc, http_status
from epp.headers import DESTINATION_HEADER, EPP_ERROR_KEY, LB_NAMESPACE, SUBSET_KEY, SUBSET_NAMESPACE
from epp.requests import RequestError

# Envoy's per-message body limit is 64 KiB; GIE answers in chunks a little under it.
BODY_CHUNK_BYTES = 62_000

_OVERWRITE = core.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def header_mutation(set_headers: Mapping[str, str], remove: Sequence[str]) -> ext_proc.HeaderMutation:
    return ext_proc.HeaderMutation(
        set_headers=[
            core.HeaderValueOption(
                header=core.HeaderValue(key=key, raw_value=value.encode()), append_action=_OVERWRITE
            )
            for key, value in set_headers.items()
        ],
        remove_headers=list(remove),
    )


def destination_metadata(destination: str) -> struct_pb2.Struct:
    metadata = struct_pb2.Struct()
    metadata.get_or_create_struct(LB_NAMESPACE)[DESTINATION_HEADER] = destination
    return metadata


def routing_common(mutation: ext_proc.HeaderMutation) -> ext_proc.CommonResponse:
    return ext_proc.CommonResponse(header_mutation=mutation, clear_route_cache=True)


def streamed_body(
    body: bytes, end_of_stream: bool, *, request: bool
) -> Iterator[ext_proc.ProcessingResponse]:
    """The body as FULL_DUPLEX_STREAMED replies: chunks under Envoy's limit, EoS on the last."""
    chunks = [body[i : i + BODY_CHUNK_BYTES] for i in range(0, len(body), BODY_CHUNK_BYTES)] or [b""]
    last = len(chunks) - 1
    for i, chunk in enumerate(chunks):
        mutation = ext_proc.BodyMutation(
            streamed_response=ext_proc.StreamedBodyResponse(
                body=chunk, end_of_stream=end_of_stream and i == last
            )
        )
        response = ext_proc.BodyResponse(response=ext_proc.CommonResponse(body_mutation=mutation))
        if request:
            yield ext_proc.ProcessingResponse(request_body=response)
        else:
            yield ext_proc.ProcessingResponse(response_body=response)


def immediate_error(error: RequestError, prefix: str) -> ext_proc.ProcessingResponse:
    metadata = struct_pb2.Struct()
    metadata.get_or_create_struct(LB_NAMESPACE)[EPP_ERROR_KEY] = error.code.label
    return ext_proc.ProcessingResponse(
        dynamic_metadata=metadata,
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status.HttpStatus(code=error.status),
            headers=header_mutation(_error_headers(error), ()),
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
    """Header map as Envoy sends it (lowercase keys), preferring raw_value."""
    return {
        h.key: (h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
        for h in headers.headers.headers
    }


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

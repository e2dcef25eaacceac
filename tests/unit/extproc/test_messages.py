"""The routed reply's envoy.lb metadata, written field by field, is what protobuf's Struct wrapper
would make of the same values: the destination, fallback group, streaming mark and scores."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict

from epp.extproc import messages
from epp.extproc.pb import ext_proc
from epp.headers import (
    DESTINATION_HEADER,
    DESTINATION_SCORES_KEY,
    FALLBACK_GROUP_KEY,
    LB_NAMESPACE,
    STREAMING_KEY,
)


def through_wrapper(destination: str, group: str, streaming: bool, scores: dict[str, float] | None) -> bytes:
    """The metadata as `Struct`'s dict-like interface writes it."""
    response = ext_proc.ProcessingResponse()
    lb = response.dynamic_metadata.get_or_create_struct(LB_NAMESPACE)
    lb[DESTINATION_HEADER] = destination
    lb[FALLBACK_GROUP_KEY] = group
    if streaming:
        lb[STREAMING_KEY] = "true"
    if scores:
        lb[DESTINATION_SCORES_KEY] = dict(scores)
    return response.dynamic_metadata.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("destination", "group", "streaming", "scores"),
    [
        ("10.0.0.1:8000", "any", False, None),
        ("10.0.0.1:8000,10.0.0.2:8000", "m1,m2", True, None),
        ("[fd00::1]:8000", "", True, {"10.0.0.1:8000": 0.75, "10.0.0.2:8000": 0.0}),
        ("10.0.0.1:8000", "any", False, {}),
    ],
)
def test_routing_metadata_is_what_the_struct_wrapper_writes(
    destination: str, group: str, streaming: bool, scores: dict[str, float] | None
) -> None:
    reply = messages.routing_response("request_body", {}, [], destination, streaming, group, scores)
    assert reply.dynamic_metadata.SerializeToString(deterministic=True) == through_wrapper(
        destination, group, streaming, scores
    )
    lb: dict[str, Any] = MessageToDict(reply.dynamic_metadata)[LB_NAMESPACE]
    assert lb[DESTINATION_HEADER] == destination and lb[FALLBACK_GROUP_KEY] == group
    assert lb.get(STREAMING_KEY) == ("true" if streaming else None)
    assert lb.get(DESTINATION_SCORES_KEY) == (scores or None)

"""The overload guard's answers: one refusal (the standing-queue shedding answer, the same object
each time) is turned into its reply once, whether the call is refused unread (at dispatch) or
after its first message was read, and every refusal is counted."""

from __future__ import annotations

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore
from epp.extproc.server import ExternalProcessor
from epp.extproc.stream import StreamOptions
from epp.flowcontrol.standing_queue import StandingQueue
from epp.framework import PluginContext
from epp.requests import ErrorCode, RequestError


def test_a_refusal_is_built_once_for_both_ways_of_answering_and_counted_each_time() -> None:
    director, _ = build_director(load_config(), Datastore(), PluginContext())
    processor = ExternalProcessor(director, StreamOptions())
    shed = StandingQueue(0.05, 0.5).refusal
    handler = processor.refuse_unread(shed)
    reply = processor.refuse(shed)
    assert processor.refuse_unread(shed) is handler
    assert processor.refuse(shed) is reply
    assert reply.immediate_response.status.code == 429
    other = RequestError(ErrorCode.RESOURCE_EXHAUSTED, "at the stream limit", retry_after=1)
    assert processor.refuse(other) is not reply
    assert processor.refuse_unread(shed) is not handler  # the last refusal only is kept
    errors = director.metrics.registry.get_sample_value(
        "inference_objective_request_error_total",
        {"model_name": "", "target_model_name": "", "error_code": ErrorCode.RESOURCE_EXHAUSTED.label},
    )
    assert errors == 6

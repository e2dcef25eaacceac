"""llm-d's --emit-endpoint-scores: a profile asked to keep its totals puts every scored
candidate's weighted total in its result (the same floats the picker saw), in the loop and in the
array path; the stream puts the primary profile's in envoy.lb."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import grpc
import pytest

from epp.extproc.pb import ext_proc
from epp.extproc.server import ExternalProcessor
from epp.extproc.stream import StreamOptions
from epp.headers import DESTINATION_SCORES_KEY, LB_NAMESPACE
from epp.metrics.exporter import EppMetrics
from epp.scheduling.framework import SchedulerProfile
from epp.scheduling.framework.profile import VECTOR_MIN_CANDIDATES
from tests.unit.extproc.test_stream_end import Context, exchange, make_director
from tests.unit.plugin_helpers import endpoints, request
from tests.unit.scheduling.test_scheduling_framework import FixedScorer, RecordingPicker


@pytest.mark.parametrize("count", [3, VECTOR_MIN_CANDIDATES + 2])
def test_a_profile_keeps_each_candidates_total_when_asked(count: int) -> None:
    candidates = endpoints(count)
    picker = RecordingPicker()
    scores = [i / count for i in range(count)]
    profile = SchedulerProfile("p", [], [(FixedScorer("s", scores), 2.0)], picker, EppMetrics())
    assert profile.run(request(), candidates).scores is None  # type: ignore[union-attr]
    profile.keep_scores = True
    result = profile.run(request(), candidates)
    assert result is not None and result.scores is not None
    assert result.scores == {e.hostport: picker.totals[e.name] for e in candidates}
    assert result.scores[candidates[-1].hostport] == pytest.approx(2.0 * (count - 1) / count)


def test_a_profile_without_scorers_has_none() -> None:
    profile = SchedulerProfile("p", [], [], RecordingPicker(), EppMetrics())
    profile.keep_scores = True
    assert profile.run(request(), endpoints(2)).scores is None  # type: ignore[union-attr]


async def routed_reply(emit: bool) -> ext_proc.ProcessingResponse:
    director = make_director()
    for profile in director.scheduler.profiles.values():
        profile.keep_scores = emit
    processor = ExternalProcessor(director, StreamOptions(emit_endpoint_scores=emit))

    async def requests() -> AsyncIterator[ext_proc.ProcessingRequest]:
        for message in exchange()[:2]:
            yield message

    context = Context()
    await processor.Process(requests(), cast(grpc.aio.ServicerContext, context))
    replies = [context.sent.get_nowait() for _ in range(context.sent.qsize())]
    return next(r for r in replies if r.WhichOneof("response") == "request_body")


async def test_the_stream_puts_the_primary_profiles_totals_in_envoy_lb() -> None:
    lb = (await routed_reply(True)).dynamic_metadata[LB_NAMESPACE]
    assert dict(lb[DESTINATION_SCORES_KEY]) == {"10.0.0.1:8000": 1.0}  # queue-scorer, an empty queue
    plain = (await routed_reply(False)).dynamic_metadata[LB_NAMESPACE]
    assert DESTINATION_SCORES_KEY not in plain

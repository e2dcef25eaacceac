"""The request-control hooks: a ResponseComplete plugin that fails does not keep the plugins after
it from hearing that the response ended (their per-request state would never be released)."""

from __future__ import annotations

import logging

import pytest

from epp.datalayer.tokenize import TokenizedPrompt
from epp.framework import Plugin
from epp.metrics.exporter import EppMetrics
from epp.requestcontrol import RequestControlHooks, ResponseComplete, ResponseStreaming
from epp.requests import InferenceRequest, Usage
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import FakeClock, context, endpoints, pinning_producer
from tests.unit.plugin_helpers import request as make_request


class Failing(Plugin, ResponseComplete):
    type_name = "failing-response-complete"

    def __init__(self) -> None:
        super().__init__("failing", None, context())

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        raise RuntimeError("broken plugin")


def test_a_failing_response_complete_plugin_does_not_leave_later_ones_unreleased(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock(100.0)
    producer = pinning_producer(clock)
    hooks = RequestControlHooks([Failing(), producer], EppMetrics())
    pods = endpoints(2)
    request = make_request(b"x")
    request.attributes["tok"] = TokenizedPrompt(list(range(64)), "render")
    producer.prepare(request, pods)
    result = SchedulingResult({"default": ProfileResult([pods[1]])}, "default")
    hooks.pre_request(request, result)
    assert producer.cache.index._pins  # pinned while the request runs

    with caplog.at_level(logging.ERROR):
        hooks.response_complete(request, result, None)
    # The broken plugin is logged; the producer after it still released the request's pins.
    assert "failing" in caplog.text and "broken plugin" in caplog.text
    assert not producer.cache.index._pins


class Chunks(Plugin, ResponseStreaming):
    type_name = "chunk-recorder"

    def __init__(self, name: str, fails: bool = False) -> None:
        super().__init__(name, None, context())
        self.fails = fails
        self.chunks: list[bytes] = []

    def response_streaming(self, request: InferenceRequest, result: SchedulingResult, chunk: bytes) -> None:
        self.chunks.append(chunk)
        if self.fails:
            raise RuntimeError("broken chunk reader")


def test_a_failing_response_streaming_plugin_does_not_keep_chunks_from_later_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A plugin acting on a response's first chunk (its first token) would otherwise never hear
    it while one configured before it fails on every chunk."""
    broken, reader = Chunks("broken", fails=True), Chunks("reader")
    hooks = RequestControlHooks([broken, reader], EppMetrics())
    result = SchedulingResult({"default": ProfileResult(endpoints(1))}, "default")
    with caplog.at_level(logging.ERROR):
        for chunk in (b"data: 1\n\n", b"data: 2\n\n"):
            hooks.response_streaming(make_request(b"x"), result, chunk)
    assert reader.chunks == broken.chunks == [b"data: 1\n\n", b"data: 2\n\n"]
    assert "broken" in caplog.text and "broken chunk reader" in caplog.text

"""The director's response path around plugins that fail: a failing ResponseReceived,
ResponseHeader or ResponseComplete hook is logged and the response goes on (the load is still
released); a cancellation is not a plugin failure and is not swallowed."""

from __future__ import annotations

import asyncio
import logging
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.requestcontrol import Director, RoutedRequest

BODY = orjson.dumps({"model": "m", "prompt": "hello " * 40})


def routed() -> tuple[Director, RoutedRequest]:
    store = Datastore()
    store.upsert(EndpointSpec(name="a", address="10.0.0.1", port=8000, labels=MappingProxyType({})))
    store.synced = True
    director, _ = build_director(load_config(), store, PluginContext())
    return director, director.handle_body(BODY, {":path": "/v1/completions", ":method": "POST"}, None)


def broken(*args: Any) -> None:
    raise RuntimeError("broken hook")


def test_failing_response_hooks_are_logged_and_the_response_goes_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    director, request = routed()
    (endpoint,) = request.result.targets
    for hook in ("response_received", "response_headers", "response_complete"):
        monkeypatch.setattr(director.hooks, hook, broken)
    with caplog.at_level(logging.ERROR):
        request.response_started(200, False, {})
        request.finish()
    assert endpoint.inflight_requests == 0
    for point in ("ResponseReceived", "ResponseHeader", "ResponseComplete"):
        assert f"a {point} plugin failed; the response continues" in caplog.text
    assert [str(r.exc_info[1]) for r in caplog.records if r.exc_info] == ["broken hook"] * 3


def test_a_cancellation_inside_a_response_hook_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    director, request = routed()

    def cancelled(*args: Any) -> None:
        raise asyncio.CancelledError

    monkeypatch.setattr(director.hooks, "response_received", cancelled)
    with pytest.raises(asyncio.CancelledError):
        request.response_started(200, False, {})

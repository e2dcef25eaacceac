"""token-rate-limit-admitter: per-tenant and per-model token budgets per window, 429 + Retry-After."""

from __future__ import annotations

import gc
import tracemalloc
from types import MappingProxyType

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.requestcontrol import Director
from epp.requests import ErrorCode, RequestError
from tests.unit.plugin_helpers import FakeClock

CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: token-rate-limit-admitter
  parameters: {window: 10s, tenantTokensPerWindow: 100, modelTokensPerWindow: 1000}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
"""

HEADERS = {":path": "/v1/completions", "x-gateway-inference-fairness-id": "acme"}


def body(chars: int, model: str = "m") -> bytes:
    return orjson.dumps({"model": model, "prompt": "x" * chars, "max_tokens": 5})


def setup(config: str = CONFIG) -> tuple[Director, FakeClock]:
    clock = FakeClock(1000.0)
    datastore = Datastore()
    datastore.upsert(
        EndpointSpec(name="a", address="10.0.0.1", port=1, models=frozenset(), labels=MappingProxyType({}))
    )
    director, _ = build_director(load_config(config), datastore, PluginContext(EppMetrics(), clock=clock))
    return director, clock


def test_a_tenant_past_its_budget_gets_429_with_retry_after_until_the_window_ends() -> None:
    director, clock = setup()
    routed = director.handle_body(body(360), HEADERS, None)
    routed.response_started(200, False)
    routed.response_body(
        orjson.dumps({"choices": [], "usage": {"prompt_tokens": 90, "completion_tokens": 20}}), True
    )  # 90 prompt tokens charged at admission, 20 completion tokens at the end: 110 of 100
    clock.now = 1003.0
    with pytest.raises(RequestError) as caught:
        director.handle_body(body(4), HEADERS, None)
    assert caught.value.code is ErrorCode.RESOURCE_EXHAUSTED and caught.value.retry_after == 7
    assert caught.value.message == (
        "token budget exhausted: tenant 'acme' used 110 of its 100 tokens per 10s window; retry in 7s"
    )
    director.handle_body(body(4), {**HEADERS, "x-gateway-inference-fairness-id": "other"}, None)
    clock.now = 1010.0  # a new window
    director.handle_body(body(4), HEADERS, None)


def test_the_model_budget_counts_every_tenant() -> None:
    director, _ = setup()
    for i in range(4):  # 250 tokens each, tenants under their own budget... until the model's 1,000
        tenant = {**HEADERS, "x-gateway-inference-fairness-id": f"t{i}"}
        director.handle_body(body(1000), tenant, None)
    with pytest.raises(RequestError) as caught:
        director.handle_body(body(4), {**HEADERS, "x-gateway-inference-fairness-id": "t9"}, None)
    assert "model 'm' used 1000 of its 1000 tokens" in caught.value.message


def test_a_long_model_name_is_kept_and_named_as_records_keep_it() -> None:
    """The model's whole name was the budget's key and came back in the refusal: a client's
    1,000,000-character model was 1 MB held per key (up to maxKeys of them) and a 1 MB 429. Now
    its start and digest, as records keep a client's id: distinct names keep distinct budgets."""
    director, _ = setup()
    model = "m" * 1_000_000
    director.handle_body(body(4000, model), HEADERS, None)  # the model's 1,000 tokens
    with pytest.raises(RequestError) as caught:
        director.handle_body(body(4, model), {**HEADERS, "x-gateway-inference-fairness-id": "t9"}, None)
    assert caught.value.message.startswith("token budget exhausted: model 'mmm")
    assert len(caught.value.message) < 400 and "...xxh3:" in caught.value.message
    director.handle_body(body(4, model + "n"), {**HEADERS, "x-gateway-inference-fairness-id": "t9"}, None)


def _held_after_a_window(tenants: int) -> int:
    """Bytes held after 10,000 requests from `tenants` fairness ids in one window, then one in
    the next window."""
    director, clock = setup(CONFIG.replace("100, model", "1000000, model").replace(": 1000}", ": 100000000}"))

    def one(i: int) -> None:
        tenant = {**HEADERS, "x-gateway-inference-fairness-id": f"tenant-{i % tenants}"}
        director.handle_body(body(4), tenant, None).finish()

    one(-1)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(10_000):
        one(i)
    clock.now += 10  # the next window
    one(-1)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return held


def test_budgets_of_past_windows_are_dropped() -> None:
    """A budget only counts in its window, but every tenant's stayed until `maxKeys` (100,000)
    pushed it out: 10,000 tenants in one window, then a request in the next, held their 10,000
    entries. Now past windows' entries go as the next window's are charged, so they hold what one
    tenant's 10,000 requests do (same run)."""
    one_tenant = _held_after_a_window(1)
    assert _held_after_a_window(10_000) <= max(1.5 * one_tenant, one_tenant + 64 * 1024)

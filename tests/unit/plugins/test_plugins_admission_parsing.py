"""`probabilistic-admitter` (llm-d) and the parsers: `passthrough-parser` routes without reading the
body; several parsers resolve per path (llm-d router's `requestHandler.parsers`)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config, load_config_file
from epp.datastore import Datastore, EndpointSpec
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.plugins.probabilistic_admitter import ProbabilisticAdmitter
from epp.requests import InferenceRequest, RequestError
from tests.unit.plugin_helpers import context, endpoint, endpoints, plugin, request

UPSTREAM = Path(__file__).parents[2] / "data" / "upstream" / "configs"


def sheddable() -> InferenceRequest:
    req = request()
    req.priority = -1
    return req


class FixedRandom(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def admitter(draw: float, **params: object) -> ProbabilisticAdmitter:
    ctx = context()
    ctx = type(ctx)(ctx.metrics, FixedRandom(draw), ctx.clock)
    return plugin(ProbabilisticAdmitter, params, ctx)


def test_saturation_is_the_mean_of_the_worse_ratio_per_endpoint() -> None:
    pool = [endpoint("a", queue=5, kv=0.2), endpoint("b", queue=0, kv=0.4)]
    # a: max(5/5, 0.2/0.8) = 1.0; b: max(0, 0.4/0.8) = 0.5
    assert admitter(0.5).saturation(pool) == pytest.approx(0.75)


@pytest.mark.parametrize(
    ("queue", "draw", "shed"),
    [
        (0, 0.0, False),  # idle: probability 0, never shed
        (1, 0.0, True),  # saturation 0.2: 0.2^5 * 300 = 0.096 > draw 0
        (1, 0.2, False),  # ... but not above it
        (2, 0.99, True),  # saturation 0.4: probability min(3.07, 1) = 1
    ],
)
def test_sheddable_requests_are_refused_with_the_probability(queue: int, draw: float, shed: bool) -> None:
    req = sheddable()
    pool = endpoints(2, queue=queue)
    if not shed:
        admitter(draw).admit_request(req, pool)
        return
    with pytest.raises(RequestError) as caught:
        admitter(draw).admit_request(req, pool)
    assert caught.value.code.status == 429
    assert str(caught.value.message).startswith("probabilistic-admitter: rejected, saturation=")


def test_non_sheddable_requests_and_empty_pools_are_always_admitted() -> None:
    saturated = endpoints(2, queue=100)
    admitter(0.0).admit_request(request(), saturated)
    admitter(0.0).admit_request(sheddable(), [])


def test_parameters_are_validated_as_upstream() -> None:
    for bad in ({"queueDepthThreshold": 0}, {"kvCacheUtilThreshold": 0.0}, {"power": -1.0}, {"k": 0.0}):
        with pytest.raises(ValueError):
            plugin(ProbabilisticAdmitter, bad)


def test_the_upstream_admitter_config_sheds_through_the_director() -> None:
    config = load_config_file(
        UPSTREAM / "llmd-sched-520af47__deploy__config__probabilistic-admitter-epp-config.yaml"
    )
    store = Datastore()
    store.upsert(EndpointSpec(name="a", address="10.0.0.1", port=8000, models=frozenset({"m"})))
    store.synced = True
    (only,) = store.ready_endpoints()
    only.metrics.waiting_queue_size = 50
    only.metrics.update_time = time.monotonic()  # fresh, so only the admitter sheds
    ctx = PluginContext(rng=FixedRandom(0.5))
    director, _ = build_director(config, store, ctx, objectives={"batch": -1})
    body = orjson.dumps({"model": "m", "prompt": "hi"})
    headers = {":path": "/v1/completions", "x-gateway-inference-objective": "batch"}
    with pytest.raises(RequestError, match="probabilistic-admitter: rejected"):
        director.handle_body(body, headers, None)
    headers.pop("x-gateway-inference-objective")
    assert director.handle_body(body, headers, None).destination == "10.0.0.1:8000"


def store_with_models() -> Datastore:
    store = Datastore()
    for name, address in (("a", "10.0.0.1"), ("b", "10.0.0.2")):
        spec = EndpointSpec(name=name, address=address, port=8000, models=frozenset({"llama"}))
        store.upsert(spec)
    store.synced = True
    return store


def test_passthrough_parser_routes_a_body_it_does_not_read() -> None:
    config = load_config_file(
        UPSTREAM / "llmd-router-ebab687__test__perf__config__router-configs__random-passthrough-parser.yaml"
    )
    director, _ = build_director(config, store_with_models(), PluginContext())
    raw = b"\x00 not json at all"
    routed = director.handle_body(raw, {":path": "/anything", "x-gateway-inference-objective": "o"}, None)
    assert routed.destination in {"10.0.0.1:8000", "10.0.0.2:8000"}
    assert routed.request.model == "" and routed.request.prompt == b"" and routed.body is None
    assert routed.request.body_size == len(raw) and routed.request.objective == "o"


FLOW_WITH_NO_MODEL = {
    "model_name": "",
    "target_model_name": "",
    "fairness_id": "default-flow",
    "priority": "0",
}


def test_a_request_with_no_model_is_not_left_running() -> None:
    """A body the parser does not read has no model: it was counted running when routed, but
    the finished request is recorded by model, so the gauge grew by one for each (llm-d counts a
    request with no model as never running)."""
    config = load_config_file(
        UPSTREAM / "llmd-router-ebab687__test__perf__config__router-configs__random-passthrough-parser.yaml"
    )
    metrics = EppMetrics(aliases=["llm-d"])
    director, _ = build_director(config, store_with_models(), PluginContext(metrics))
    for _ in range(3):
        director.handle_body(b"\x00 not json", {":path": "/anything"}, None).finish()
    registry = metrics.registry
    assert registry.get_sample_value("inference_objective_running_requests", {"model_name": ""}) == 0
    assert registry.get_sample_value("llm_d_epp_request_running", FLOW_WITH_NO_MODEL) == 0
    assert registry.get_sample_value("llm_d_epp_request_total", FLOW_WITH_NO_MODEL) == 3


def test_parsers_resolve_per_path_with_the_passthrough_fallback() -> None:
    text = (
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
        "plugins:\n- type: openai-parser\n- type: passthrough-parser\n- type: queue-scorer\n"
        "requestHandler: {parsers: [{pluginRef: openai-parser}, {pluginRef: passthrough-parser}]}\n"
    )
    director, _ = build_director(load_config(text), store_with_models(), PluginContext())
    with pytest.raises(RequestError, match="model not found in request body"):
        director.handle_body(b"{}", {":path": "/v1/chat/completions"}, None)
    routed = director.handle_body(b"{}", {":path": "/v1/messages"}, None)
    assert routed.request.model == ""
    with pytest.raises(RequestError, match="is not served by any endpoint"):
        director.handle_body(orjson.dumps({"model": "x", "prompt": "p"}), {":path": "/v1/completions"}, None)


def test_a_model_no_endpoint_serves_is_named_in_the_404_as_records_keep_it() -> None:
    """Through `epp run`, a model name of 1,000,000 characters came back whole in the 404's
    message: a 1,000,131-byte error body for a name no endpoint serves. It is clipped as decision
    records clip it (256 characters and "...")."""
    director, _ = build_director(load_config(), store_with_models(), PluginContext())
    body = orjson.dumps({"model": "m" * 1_000_000, "prompt": "p"})
    with pytest.raises(RequestError) as refused:
        director.handle_body(body, {":path": "/v1/completions"}, None)
    assert refused.value.message == f"model '{'m' * 256}...' is not served by any endpoint of the pool"
    with pytest.raises(RequestError) as refused:
        director.handle_body(orjson.dumps({"model": "x", "prompt": "p"}), {":path": "/v1/completions"}, None)
    assert refused.value.message == "model 'x' is not served by any endpoint of the pool"


def test_default_parser_is_openai() -> None:
    director, _ = build_director(load_config(), store_with_models(), PluginContext())
    routed = director.handle_body(
        orjson.dumps({"model": "llama", "prompt": "p"}), {":path": "/v1/completions"}, None
    )
    assert routed.request.model == "llama"


@pytest.mark.parametrize("full", ["model pairs", "flows"])
def test_a_request_with_no_model_is_not_left_running_past_the_label_caps(full: str) -> None:
    """Past the caps on labelled series (256 model pairs; llm-d's 1,024 flows) a new label set is
    counted as `other`: a request with no model then took the overflow series, whose non-empty
    model label counted it running, while its end is recorded by model only, so the running gauge
    grew by one for each such request."""
    config = load_config_file(
        UPSTREAM / "llmd-router-ebab687__test__perf__config__router-configs__random-passthrough-parser.yaml"
    )
    metrics = EppMetrics(aliases=["llm-d"])
    flows = metrics.flow_requests
    assert flows is not None
    for i in range(256 if full == "model pairs" else 1024):
        if full == "model pairs":
            metrics.series(f"m{i}", f"m{i}")
        else:
            flows.series(f"m{i}", f"m{i}", "default-flow", 0)
    director, _ = build_director(config, store_with_models(), PluginContext(metrics))
    for _ in range(3):
        director.handle_body(b"\x00 not json", {":path": "/anything"}, None).finish()
    running = {
        sample.value
        for family in metrics.registry.collect()
        if family.name in ("inference_objective_running_requests", "llm_d_epp_request_running")
        for sample in family.samples
    }
    assert running == {0.0}
    counted = {**FLOW_WITH_NO_MODEL, "fairness_id": "default-flow" if full == "model pairs" else "other"}
    assert metrics.registry.get_sample_value("llm_d_epp_request_total", counted) == 3

"""llm-d's per-request metrics (`llm_d_epp_request_*`, with `--metrics-aliases llm-d`) carry the
request's flow as llm-d-router ebab687 labels them: model, target model, `fairness_id` (the
`x-gateway-inference-fairness-id` header, `default-flow` without it) and `priority` (its
InferenceObjective's), after real requests through the ext_proc stream and the director. GIE's
families keep GIE's labels. Fairness ids come from clients: past 256 distinct ids (flow control's
cap) they are labelled `other`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import orjson
import pytest

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datastore import Datastore
from epp.extproc.pb import ext_proc_grpc
from epp.extproc.server import Health, bind, ext_proc_server
from epp.extproc.stream import StreamOptions
from epp.framework import PluginContext
from epp.metrics.exporter import MAX_FAIRNESS_LABELS, EppMetrics
from tests.unit.extproc.test_extproc_stream import (
    COMPLETION,
    Harness,
    body_msg,
    headers_msg,
    read,
    response_body_msg,
    response_headers_msg,
)

OBJECTIVES = {"premium": 5}


async def harness_with(aliases: tuple[str, ...]) -> AsyncIterator[Harness]:
    datastore = Datastore()
    datastore.synced = True
    context = PluginContext(EppMetrics(aliases=aliases))
    director, _ = build_director(load_config(), datastore, context, objectives=OBJECTIVES)
    server = ext_proc_server(director, StreamOptions(max_body_bytes=200_000), Health(lambda: True))
    port = bind(server, "127.0.0.1:0", None)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    harness = Harness(director, ext_proc_grpc.ExternalProcessorStub(channel))
    harness.add("a", 8000)
    yield harness
    await channel.close()
    await server.stop(0)


@pytest.fixture
async def llm_d() -> AsyncIterator[Harness]:
    async for harness in harness_with(("llm-d",)):
        yield harness


@pytest.fixture
async def gie() -> AsyncIterator[Harness]:
    async for harness in harness_with(()):
        yield harness


def sample(h: Harness, name: str, **labels: str) -> float | None:
    return h.director.metrics.registry.get_sample_value(name, labels)


RESPONSE = orjson.dumps(
    {
        "choices": [{"text": "x"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 1}},
    }
)


async def completed(h: Harness, headers: dict[str, str], status: str = "200") -> None:
    """A completion routed with these request headers, answered whole with RESPONSE."""
    call = h.open()
    await call.write(headers_msg(extra=headers))
    await call.write(body_msg(COMPLETION))
    await read(call)
    await read(call)
    await call.write(response_headers_msg("application/json", status=status))
    await read(call)
    await call.write(response_body_msg(RESPONSE, end_of_stream=True))
    await read(call)


async def test_request_metrics_carry_the_fairness_id_and_the_objectives_priority(llm_d: Harness) -> None:
    headers = {"x-gateway-inference-fairness-id": "tenant-a", "x-gateway-inference-objective": "premium"}
    await completed(llm_d, headers)
    flow = {"model_name": "m", "target_model_name": "m", "fairness_id": "tenant-a", "priority": "5"}
    expected = {
        "llm_d_epp_request_total": 1,
        "llm_d_epp_request_size_bytes_sum": len(COMPLETION),
        "llm_d_epp_request_running": 0,
        "llm_d_epp_request_duration_seconds_count": 1,
        "llm_d_epp_response_size_bytes_sum": len(RESPONSE),
        "llm_d_epp_request_input_tokens_sum": 2,
        "llm_d_epp_request_output_tokens_sum": 5,
        "llm_d_epp_request_cached_tokens_sum": 1,
        "llm_d_epp_request_ntpot_seconds_count": 1,
    }
    assert {name: sample(llm_d, name, **flow) for name in expected} == expected
    # GIE's keep GIE's labels: the count by priority, the rest by model only.
    gie_count = sample(
        llm_d, "inference_objective_request_total", model_name="m", target_model_name="m", priority="5"
    )
    assert gie_count == 1
    assert (
        sample(
            llm_d, "inference_objective_request_duration_seconds_count", model_name="m", target_model_name="m"
        )
        == 1
    )


async def test_a_request_in_flight_is_running_under_its_flow(llm_d: Harness) -> None:
    call = llm_d.open()
    await call.write(headers_msg(extra={"x-gateway-inference-fairness-id": "tenant-b"}))
    await call.write(body_msg(COMPLETION))
    await read(call)
    await read(call)
    flow = {"model_name": "m", "target_model_name": "m", "fairness_id": "tenant-b", "priority": "0"}
    assert sample(llm_d, "llm_d_epp_request_running", **flow) == 1
    call.cancel()


async def test_without_the_header_a_request_is_the_default_flow_and_errors_carry_the_flow(
    llm_d: Harness,
) -> None:
    await completed(llm_d, {}, status="500")  # the model server's error
    default = {"model_name": "m", "target_model_name": "m", "fairness_id": "default-flow", "priority": "0"}
    assert sample(llm_d, "llm_d_epp_request_total", **default) == 1
    assert sample(llm_d, "llm_d_epp_request_error_total", **default, error_code="ModelServerError") == 1
    # Refused by the director (no endpoint serves the model): its flow, its objective's priority.
    call = llm_d.open()
    headers = {"x-gateway-inference-fairness-id": "tenant-c", "x-gateway-inference-objective": "premium"}
    await call.write(headers_msg(extra=headers))
    await call.write(body_msg(orjson.dumps({"model": "unknown", "prompt": "hi"})))
    assert (await read(call)).immediate_response.status.code == 404
    refused = {
        "model_name": "unknown",
        "target_model_name": "unknown",
        "fairness_id": "tenant-c",
        "priority": "5",
    }
    assert sample(llm_d, "llm_d_epp_request_error_total", **refused, error_code="NotFound") == 1
    # A body that does not parse: no model, the default flow and priority (as llm-d's).
    call = llm_d.open()
    await call.write(headers_msg(extra={"x-gateway-inference-fairness-id": "tenant-c"}))
    await call.write(body_msg(b"{not json"))
    assert (await read(call)).immediate_response.status.code == 400
    unparsed = {"model_name": "", "target_model_name": "", "fairness_id": "default-flow", "priority": "0"}
    assert sample(llm_d, "llm_d_epp_request_error_total", **unparsed, error_code="BadRequest") == 1


async def test_fairness_ids_past_the_cap_are_labelled_other(llm_d: Harness) -> None:
    invented = MAX_FAIRNESS_LABELS + 44
    director = llm_d.director
    for i in range(invented):
        headers = {
            ":path": "/v1/completions",
            ":method": "POST",
            "x-gateway-inference-fairness-id": f"client-{i}",
        }
        director.handle_body(COMPLETION, headers, None).finish()
    counts: dict[str, float] = {}
    for family in director.metrics.flow_requests.requests.collect():  # type: ignore[union-attr]
        for s in family.samples:
            if s.name == "llm_d_epp_request_total":
                counts[s.labels["fairness_id"]] = s.value
    assert len(counts) == MAX_FAIRNESS_LABELS + 1
    assert counts["other"] == 44 and counts["client-0"] == 1
    assert f"client-{MAX_FAIRNESS_LABELS}" not in counts and sum(counts.values()) == invented


async def test_without_llm_d_names_no_request_is_recorded_by_flow(gie: Harness) -> None:
    await completed(gie, {"x-gateway-inference-fairness-id": "tenant-a"})
    assert gie.director.metrics.flow_requests is None
    names = {f.name for f in gie.director.metrics.registry.collect()}
    assert "inference_objective_request" in names
    assert not names & {
        "llm_d_epp_request",
        "llm_d_epp_request_duration_seconds",
        "llm_d_epp_request_running",
    }


async def test_llm_ds_header_names_come_before_gies(llm_d: Harness) -> None:
    """llm-d-router ebab687 reads x-llm-d-inference-fairness-id, -objective and
    x-llm-d-model-name-rewrite first, GIE's x-gateway-* names as their deprecated aliases."""
    headers = {
        "x-llm-d-inference-fairness-id": "tenant-new",
        "x-gateway-inference-fairness-id": "tenant-old",
        "x-llm-d-inference-objective": "premium",
        "x-gateway-inference-objective": "unknown",
    }
    await completed(llm_d, headers)
    flow = {"model_name": "m", "target_model_name": "m", "fairness_id": "tenant-new", "priority": "5"}
    assert sample(llm_d, "llm_d_epp_request_total", **flow) == 1
    call = llm_d.open()
    await call.write(headers_msg(extra={"x-llm-d-model-name-rewrite": "m"}))
    await call.write(body_msg(orjson.dumps({"model": "alias", "prompt": "hi"})))
    await read(call)
    rewritten = {"model_name": "alias", "target_model_name": "m", "fairness_id": "default-flow"}
    assert sample(llm_d, "llm_d_epp_request_total", **rewritten, priority="0") == 1
    call.cancel()

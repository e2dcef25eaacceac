"""`models-data-source` + `models-data-extractor` against real simulated vLLM servers: what each
server's /v1/models names reaches the endpoint, and the director's candidates follow it."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from epp.config.build import build_director
from epp.config.loader import load_config
from epp.datalayer.fetch import KeepAliveGetter
from epp.datalayer.models import ServedModel, parse_models
from epp.datastore import Datastore, Endpoint, EndpointSpec
from epp.framework import PluginContext
from epp.metrics.exporter import EppMetrics
from epp.params.strict import ConfigError
from epp.plugins.models_data_extractor import ModelsDataExtractor
from epp.plugins.models_data_source import ModelsDataSource, round_to_ticks
from epp.requests import RequestError
from epp.sim.cluster import SimCluster, make_configs
from epp.sim.config import LoraModule
from epp.sim.profiles import TINY_TEST
from epp.stack.processes import wait_until
from tests.unit.plugin_helpers import context, plugin, request

CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: models-data-source
  name: vllm-models-source
  parameters: {interval: 10ms}
- type: models-data-extractor
  name: vllm-models-extractor
- type: max-score-picker
dataLayer:
  sources:
  - pluginRef: vllm-models-source
    extractors:
    - pluginRef: vllm-models-extractor
"""


@pytest.fixture
async def sims() -> AsyncIterator[SimCluster]:
    base = make_configs(1, profile=TINY_TEST, model="base-a")
    with_lora = make_configs(
        1, name_prefix="lora", profile=TINY_TEST, model="base-b", lora_modules=(LoraModule("adapter-1"),)
    )
    async with SimCluster(base + with_lora) as cluster:
        yield cluster


async def until(predicate: Callable[[], bool], what: str) -> None:
    async def probe() -> bool | None:
        return True if predicate() else None

    await wait_until(probe, what, 5.0, interval=0.01)


async def test_models_reach_the_endpoints_and_narrow_the_candidates(sims: SimCluster) -> None:
    datastore = Datastore()
    director, components = build_director(load_config(CONFIG), datastore, PluginContext())
    source = components.plugins["vllm-models-source"]
    assert isinstance(source, ModelsDataSource)
    await source.start(datastore)
    try:
        for info in sims.endpoints:
            datastore.upsert(EndpointSpec(info.name, info.host, info.port))
        await until(lambda: all(e.served_models is not None for e in datastore.endpoints()), "model lists")
        served = {e.name: e.served_models for e in datastore.endpoints()}
        assert served == {"sim-0": {"base-a"}, "lora-0": {"base-b", "adapter-1"}}
        assert [e.name for e in director.candidates(request(model="adapter-1"), None)] == ["lora-0"]
        assert [e.name for e in director.candidates(request(model="base-a"), None)] == ["sim-0"]
        with pytest.raises(RequestError) as refused:
            director.candidates(request(model="unknown"), None)
        assert refused.value.status == 404
        assert "model 'unknown' is not served by any endpoint of the pool" in refused.value.message
    finally:
        await source.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_failed_polls_keep_what_was_learned() -> None:
    answers = [web.json_response({"object": "list", "data": [{"id": "m1"}]}), web.Response(status=500)]
    answers.append(web.Response(body=b"not json"))

    async def models(_: web.Request) -> web.Response:
        return answers.pop(0)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    port = _free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        source = plugin(ModelsDataSource)
        source.use_extractors([plugin(ModelsDataExtractor)])
        endpoint = Endpoint(EndpointSpec("e", "127.0.0.1", port))
        getter = KeepAliveGetter("127.0.0.1", port, "/v1/models", None)
        try:
            assert await source.poll_once(endpoint, getter)
            assert endpoint.served_models == {"m1"}
            assert not await source.poll_once(endpoint, getter)  # 500
            assert not await source.poll_once(endpoint, getter)  # not JSON
            assert endpoint.served_models == {"m1"}
            assert (source.polls, source.failures) == (1, 2)
        finally:
            getter.close()
    finally:
        await runner.cleanup()


async def test_a_refused_connection_is_a_failed_poll() -> None:
    metrics = EppMetrics()
    source = plugin(ModelsDataSource, ctx=context(metrics=metrics))
    port = _free_port()
    endpoint = Endpoint(EndpointSpec("e", "127.0.0.1", port))
    getter = KeepAliveGetter("127.0.0.1", port, "/v1/models", None)
    try:
        assert not await source.poll_once(endpoint, getter)
    finally:
        getter.close()
    assert endpoint.served_models is None and source.failures == 1
    errors = {"source_type": "models-data-source"}  # llm-d's datalayer poll errors count it
    assert metrics.registry.get_sample_value("llm_d_epp_datalayer_poll_errors_total", errors) == 1.0


def test_parse_models_reads_ids_and_parents_and_names_what_is_wrong() -> None:
    body = b'{"object":"list","data":[{"id":"b","created":5,"owned_by":"vllm"},{"id":"a1","parent":"b"}]}'
    assert parse_models(body) == (ServedModel("b", "", "vllm", 5), ServedModel("a1", "b"))
    with pytest.raises(ValueError, match="model list is not JSON"):
        parse_models(b"<html>")
    with pytest.raises(ValueError, match="model list has no `data` array"):
        parse_models(b'{"object":"list"}')
    with pytest.raises(ValueError, match=r"model list data\[1\] has no string `id`"):
        parse_models(b'{"data":[{"id":"x"},{"name":"y"}]}')


def test_an_endpoint_without_a_list_takes_any_model() -> None:
    endpoint = Endpoint(EndpointSpec("e", "10.0.0.1", 8000))
    assert endpoint.serves("anything")
    endpoint.served_models = frozenset({"m"})
    assert endpoint.serves("m") and not endpoint.serves("anything")
    listed = Endpoint(EndpointSpec("e", "10.0.0.1", 8000, models=frozenset({"x"})))
    listed.served_models = frozenset({"m"})
    assert listed.serves("x") and listed.serves("m") and not listed.serves("y")


def test_interval_rounds_to_whole_base_ticks() -> None:
    assert plugin(ModelsDataSource, {"interval": "5s"}).interval == pytest.approx(5.0)
    assert plugin(ModelsDataSource).interval == pytest.approx(0.05)  # omitted: every tick
    assert round_to_ticks(0.07) == pytest.approx(0.05) and round_to_ticks(0.08) == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ("{scheme: ftp}", "scheme: Input should be 'http' or 'https'"),
        ("{path: v1/models}", "path: String should match pattern '^/'"),
        ("{interval: -1s}", "interval"),
        ("{clientCertPath: /c.pem}", "clientCertPath and clientKeyPath must be set together"),
        (
            "{scheme: https, insecureSkipVerify: false, caCertPath: /nonexistent/ca.pem}",
            "caCertPath '/nonexistent/ca.pem'",
        ),
    ],
)
def test_bad_parameters_are_config_errors(parameters: str, message: str) -> None:
    text = CONFIG.replace("{interval: 10ms}", parameters)
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert message in str(caught.value)


def test_only_models_extractors_may_be_wired_to_the_source() -> None:
    text = CONFIG.replace("pluginRef: vllm-models-extractor", "pluginRef: max-score-picker")
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    assert (
        "dataLayer.sources[0].extractors[0].pluginRef: plugin 'max-score-picker' is a max-score-picker, "
        "not a models extractor" in str(caught.value)
    )

"""llm-d router's own `epp` flags (v0.10), which its chart passes from `router.epp.flags`: each
parses as the router parses it and does what it does there."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp import serve
from epp.cli import parse_args
from tests.unit.test_gie_flags import running_picker

EXT_PROC = "envoy.service.ext_proc.v3.ExternalProcessor"


async def check(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        response = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        return int(response.status)


@pytest.mark.parametrize(
    ("value", "size"),
    [("10MiB", 10 << 20), ("25MB", 25_000_000), ("4Mi", 4 << 20), ("1024", 1024), (" 2kb ", 2000), ("0", 0)],
)
def test_message_sizes_parse_as_kubernetes_quantities_with_an_optional_b(value: str, size: int) -> None:
    args = parse_args(["--endpoint=127.0.0.1:1", f"--grpc-max-recv-msg-size={value}"])
    assert args.grpc_max_recv_msg_size == size


@pytest.mark.parametrize("value", ["ten", "-1Mi", "1MiBB"])
def test_a_bad_message_size_is_refused_naming_the_flag(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--endpoint=127.0.0.1:1", f"--grpc-max-send-msg-size={value}"])
    assert "argument --grpc-max-send-msg-size: invalid quantity" in capsys.readouterr().err


async def test_the_receive_limit_applies_to_the_ext_proc_port() -> None:
    """A message over the limit is refused by gRPC itself, one under it is served."""
    picker = await running_picker("--endpoint=127.0.0.1:1", "--grpc-max-recv-msg-size=1Ki")
    try:
        assert await check(picker.grpc_port, EXT_PROC) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(picker.grpc_port, "x" * 2048)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await picker.stop()


async def test_drain_timeout_keeps_serving_new_streams_while_reporting_not_serving() -> None:
    picker = await running_picker("--endpoint=127.0.0.1:1", "--drain-timeout=600ms", "--shutdown-grace=1s")
    port = picker.grpc_port
    started = time.monotonic()
    stopping = asyncio.create_task(picker.stop())
    try:
        await asyncio.sleep(0.1)
        # Inside the window: NOT_SERVING, and the port still answers new calls.
        assert await check(port, EXT_PROC) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not stopping.done()
    finally:
        await stopping
    assert time.monotonic() - started >= 0.6
    with pytest.raises(grpc.aio.AioRpcError):
        await check(port, EXT_PROC)


async def test_a_start_that_failed_stops_without_the_drain_window() -> None:
    """The default 30 s window is for clients of a picker that served; one whose port was taken
    served no one and stops at once (the router likewise skips its drain when its manager fails)."""
    holder = await running_picker("--endpoint=127.0.0.1:1")
    try:
        argv = ["--endpoint=127.0.0.1:1", "--host=127.0.0.1", f"--grpc-port={holder.grpc_port}"]
        options = serve.options_from_args(parse_args(argv))
        assert options.drain_window == 30
        picker = serve.EndpointPicker(options)
        with pytest.raises(RuntimeError, match="Failed to bind"):  # grpc.aio's own error
            await picker.start()
        stopping = asyncio.ensure_future(picker.stop())
        done, _ = await asyncio.wait([stopping], timeout=options.drain_window / 2)
        assert done, "the failed start waited out the drain window"
        await stopping
    finally:
        await holder.stop()


async def test_a_picker_that_lost_its_lease_exits_without_the_drain_window() -> None:
    """Leadership lost ends the router's manager with an error, and the router then stops its
    servers without the drain (runWithGracefulShutdown): a replica that is no longer the leader
    does not keep routing for 30 s before it exits 1."""
    argv = ["--endpoint=127.0.0.1:1", "--host=127.0.0.1", "--grpc-port=0", "--grpc-health-port=0"]
    options = serve.options_from_args(parse_args([*argv, "--metrics-port=0"]))
    assert options.drain_window == 30
    picker = serve.EndpointPicker(options)
    await picker.start()
    picker.failed.set()  # the elector's on_lost
    stopping = asyncio.ensure_future(picker.stop())
    done, _ = await asyncio.wait([stopping], timeout=options.drain_window / 2)
    assert done, "the picker that lost its lease waited out the drain window"
    await stopping


def test_drain_timeout_takes_go_durations_and_defaults_to_the_routers_30s() -> None:
    def window(*argv: str) -> float:
        return serve.options_from_args(parse_args(["--endpoint=127.0.0.1:1", *argv])).drain_window

    assert window() == 30  # the router's DefaultDrainTimeout
    assert window("--drain-timeout=0s") == 0
    assert window("--drain-timeout=1m") == 60
    with pytest.raises(ValueError, match=r"^--drain-timeout: invalid duration '-1s'"):
        window("--drain-timeout=-1s")


ALPHA_CONFIG = """\
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: agent-identity
- type: queue-scorer
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
"""


@pytest.fixture
def alpha_config(tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(ALPHA_CONFIG)
    return f"--config-file={path}"


def test_alpha_plugins_run_with_a_warning_naming_them_without_the_flag(
    alpha_config: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "epp.serve"):
        options = serve.options_from_args(parse_args(["--endpoint=127.0.0.1:1", alpha_config]))
    assert "agent-identity" in options.config.plugins
    (warning,) = [r.getMessage() for r in caplog.records if "Alpha" in r.getMessage()]
    assert warning == (
        "plugins agent-identity (agent-identity) are Alpha in llm-d's router, which refuses to start on "
        "them without --allow-experimental-plugins; this EPP runs them"
    )


@pytest.mark.parametrize("flag", ["--allow-experimental-plugins", "--allow-experimental-plugins=true"])
def test_the_flag_silences_it(alpha_config: str, flag: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "epp.serve"):
        serve.options_from_args(parse_args(["--endpoint=127.0.0.1:1", alpha_config, flag]))
    assert "Alpha" not in caplog.text


def test_strict_config_refuses_alpha_plugins_without_the_flag_as_the_router_does(alpha_config: str) -> None:
    argv = ["--endpoint=127.0.0.1:1", alpha_config, "--strict-config"]
    with pytest.raises(ValueError, match=r"agent-identity \(agent-identity\) are Alpha .*--strict-config"):
        serve.options_from_args(parse_args(argv))
    serve.options_from_args(parse_args([*argv, "--allow-experimental-plugins=true"]))


@pytest.mark.parametrize(("flag", "exported"), [((), False), (("--enable-grpc-stream-metrics",), True)])
async def test_grpc_stream_metrics_are_exported_only_when_asked(
    flag: tuple[str, ...], exported: bool
) -> None:
    picker = await running_picker("--endpoint=127.0.0.1:1", *flag)
    try:
        inflight = picker.metrics.registry.get_sample_value("llm_d_epp_extproc_streams_inflight")
        assert (inflight is not None) == exported
    finally:
        await picker.stop()


@pytest.mark.parametrize("flag", ["--emit-endpoint-scores", "--emit-endpoint-scores=true"])
def test_emit_endpoint_scores_makes_every_profile_keep_its_totals(flag: str) -> None:
    options = serve.options_from_args(parse_args(["--endpoint=127.0.0.1:1", flag]))
    assert options.stream.emit_endpoint_scores
    picker = serve.EndpointPicker(options)
    assert all(p.keep_scores for p in picker.director.scheduler.profiles.values())
    plain = serve.EndpointPicker(serve.options_from_args(parse_args(["--endpoint=127.0.0.1:1"])))
    assert not any(p.keep_scores for p in plain.director.scheduler.profiles.values())


def test_workers_whose_metrics_ports_would_pass_65535_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    """Worker i listens on --metrics-port + i: 65534 with three workers would give the last 65536."""
    args = parse_args(["serve", "--endpoint=127.0.0.1:1", "--workers=3", "--metrics-port=65534"])
    assert serve.run(args) == 2
    refusal = "--metrics-port 65534 with --workers 3: the last worker's would be 65536, past 65535"
    assert refusal in caplog.text


def test_the_workers_supervisor_waits_for_the_drain_window_and_the_grace() -> None:
    argv = ["--endpoint=127.0.0.1:1", "--drain-timeout=30s", "--shutdown-grace=90s"]
    assert serve.worker_plan(2, serve.options_from_args(parse_args(argv))).shutdown_grace == 120

"""GIE's Helm chart passes flags this EPP must accept; each does what it does in GIE, or (pprof)
stops the EPP saying what to use instead."""

from __future__ import annotations

import json
import logging
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from epp import gieflags, serve
from epp.cli import parse_args
from epp.datastore import EndpointMetrics
from epp.stack.processes import wait_until

CHART_ARGS = [
    "--zap-encoder",
    "json",
    "-v",
    "4",
    "--tracing=false",
    "--enable-pprof",
    "--ha-enable-leader-election",
    "--metrics-endpoint-auth=false",
    "--enable-cert-reload",
]


def record(level: int = logging.INFO, msg: str = "hello") -> logging.LogRecord:
    return logging.LogRecord("epp", level, __file__, 0, msg, None, None)


def test_the_charts_flags_parse_and_configure_logging(
    caplog: pytest.LogCaptureFixture, root_handler: logging.Handler
) -> None:
    args = parse_args(["--endpoint", "10.0.0.1:8000", *CHART_ARGS])
    with caplog.at_level(logging.WARNING):
        gieflags.apply(args)
        assert logging.getLogger().level == logging.DEBUG
    assert json.loads(root_handler.format(record()))["msg"] == "hello"
    assert "tracing" not in caplog.text
    assert "leader" not in caplog.text  # implemented: no warning
    assert (args.ha_enable_leader_election, args.metrics_endpoint_auth, args.enable_cert_reload) == (
        True,
        False,
        True,
    )


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (["--v", "1"], logging.INFO),
        (["--v=2"], logging.INFO),
        (["-v", "5"], logging.DEBUG),
        (["--zap-log-level", "error"], logging.ERROR),
        (["--zap-log-level=4"], logging.DEBUG),
        (["-v", "5", "--zap-log-level", "info"], logging.INFO),
    ],
)
def test_verbosity_and_zap_levels(argv: list[str], level: int, root_handler: logging.Handler) -> None:
    logging.getLogger().setLevel(logging.INFO)
    gieflags.apply(parse_args(["--endpoint=10.0.0.1:8000", *argv]))
    assert logging.getLogger().level == level


def test_zap_devel_false_means_json_lines_with_the_chosen_time_encoding(
    root_handler: logging.Handler,
) -> None:
    gieflags.apply(parse_args(["--endpoint=10.0.0.1:8000", "--zap-devel=false", "--zap-time-encoding=epoch"]))
    line = json.loads(root_handler.format(record()))
    assert isinstance(line["ts"], float) and line["level"] == "info"


@pytest.mark.parametrize(
    ("encoding", "check"),
    [
        ("millis", lambda ts: isinstance(ts, float) and ts > 1e12),
        ("nanos", lambda ts: isinstance(ts, int) and ts > 1e18),
        ("iso8601", lambda ts: ts.endswith("Z") and len(ts.split(".")[1]) == 4),
        ("rfc3339", lambda ts: ts.endswith("Z") and "." not in ts),
        ("rfc3339nano", lambda ts: ts.endswith("Z") and "T" in ts),
    ],
)
def test_zap_time_encodings(encoding: str, check: object, root_handler: logging.Handler) -> None:
    gieflags.apply(
        parse_args(["--endpoint=10.0.0.1:8000", "--zap-encoder=json", f"--zap-time-encoding={encoding}"])
    )
    assert check(json.loads(root_handler.format(record()))["ts"])  # type: ignore[operator]


def test_zap_devel_keeps_console_lines(root_handler: logging.Handler) -> None:
    root_handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    gieflags.apply(parse_args(["--endpoint=10.0.0.1:8000", "--zap-devel"]))
    assert root_handler.format(record()) == "INFO hello"


def test_zap_stacktrace_level_attaches_the_callers_stack(root_handler: logging.Handler) -> None:
    gieflags.apply(
        parse_args(["--endpoint=10.0.0.1:8000", "--zap-encoder=json", "--zap-stacktrace-level=error"])
    )
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(root_handler.format(record))

    keep = Keep()
    for known in root_handler.filters:
        keep.addFilter(known)
    logger = logging.getLogger("epp.test")
    logger.addHandler(keep)
    try:
        logger.error("broken")
        logger.warning("only a warning")
    finally:
        logger.removeHandler(keep)
    error, warning = (json.loads(line) for line in lines)
    assert "test_zap_stacktrace_level_attaches_the_callers_stack" in error["stacktrace"]
    assert "logging/__init__.py" not in error["stacktrace"]
    assert "stacktrace" not in warning


@pytest.mark.parametrize("flag", ["--enable-pprof", "--enable-pprof=true", "--enable-pprof=1"])
def test_pprof_is_refused_naming_what_to_use(flag: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert serve.run(parse_args(["--endpoint=10.0.0.1:8000", flag])) == 2
    assert "pprof is Go's profiler" in caplog.text and "py-spy" in caplog.text


@pytest.mark.parametrize("argv", [["--enable-pprof=false"], ["--enable-pprof", "false"], []])
def test_pprof_off_or_unset_is_fine(argv: list[str]) -> None:
    serve.options_from_args(parse_args(["--endpoint=10.0.0.1:8000", *argv]))


@pytest.mark.parametrize(
    ("argv", "disabled"),
    [
        ([], False),
        (["--disable-endpoint-subset-filter"], True),
        (["--disable-endpoint-subset-filter=false"], False),
    ],
)
def test_disable_endpoint_subset_filter_takes_go_booleans(argv: list[str], disabled: bool) -> None:
    options = serve.options_from_args(parse_args(["--endpoint=10.0.0.1:8000", *argv]))
    assert options.stream.use_subset_hint is not disabled


def test_refresh_prometheus_metrics_interval_parses_go_durations() -> None:
    def refresh(*argv: str) -> float:
        return serve.options_from_args(parse_args(["--endpoint=10.0.0.1:8000", *argv])).pool_gauges_refresh

    assert refresh() == 0.0
    assert refresh("--refresh-prometheus-metrics-interval", "5s") == 5.0
    assert refresh("--refresh-prometheus-metrics-interval=250ms") == 0.25
    with pytest.raises(ValueError, match="invalid duration"):
        refresh("--refresh-prometheus-metrics-interval=-1s")


async def running_picker(*argv: str) -> serve.EndpointPicker:
    base = [
        "--host=127.0.0.1",
        "--grpc-port=0",
        "--grpc-health-port=0",
        "--metrics-port=0",
        "--secure-serving=false",
        "--drain-timeout=0s",
    ]
    picker = serve.EndpointPicker(serve.options_from_args(parse_args([*base, *argv])))
    await picker.start()
    return picker


async def test_pool_gauges_refresh_on_the_flags_period() -> None:
    picker = await running_picker("--endpoint=127.0.0.1:1", "--refresh-prometheus-metrics-interval=20ms")
    try:
        (endpoint,) = picker.datastore.endpoints()
        registry = picker.metrics.registry

        def queue() -> float | None:
            return registry.get_sample_value("inference_pool_average_queue_size", {"name": "standalone"})

        async def refreshed() -> bool | None:
            endpoint.metrics = EndpointMetrics(waiting_queue_size=7, update_time=time.monotonic())
            endpoint.healthy = True
            return True if queue() == 7 else None

        await wait_until(refreshed, "the refresher to pick up the new queue", 5, interval=0.01)
    finally:
        await picker.stop()


async def health(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        response = await health_pb2_grpc.HealthStub(channel).Check(request, timeout=5)
        return int(response.status)


EXT_PROC = "envoy.service.ext_proc.v3.ExternalProcessor"


async def test_health_on_the_ext_proc_port_unless_health_checking_is_false() -> None:
    picker = await running_picker("--endpoint=127.0.0.1:1")
    try:
        assert await health(picker.grpc_port, EXT_PROC) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await picker.stop()
    picker = await running_picker("--endpoint=127.0.0.1:1", "--health-checking=false")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await health(picker.grpc_port, EXT_PROC)
        assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert (
            await health(picker.health_port, "inference-extension") == health_pb2.HealthCheckResponse.SERVING
        )
    finally:
        await picker.stop()

"""GIE's model-server metrics flags, from the command line (quoted as GIE's chart writes some of
them) to scrapes of real HTTP and HTTPS servers on 127.0.0.1: metric names for the default engine,
the scheme, path and port scraped, and certificate verification."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from epp import serve
from epp.cli import parse_args
from epp.datalayer.engines import BUILTIN_ENGINES
from epp.datalayer.overrides import ScrapeOverrides
from epp.datalayer.promtext import Extractor, MetricSpec
from epp.datalayer.scraper import ScrapeSettings
from epp.datastore import Endpoint
from epp.stack.processes import wait_until

SGLANG_PAGE = """\
sglang:num_queue_reqs{model_name="m"} 4
sglang:num_running_reqs{model_name="m"} 2
sglang:token_usage{model_name="m"} 0.75
sglang:cache_config_info{page_size="32",num_pages="100"} 1
"""
# What the SGLang chart passes (GIE inferencepool v1.4.0/v1.5.0, modelServerType sglang), as the
# container's argv holds it: the quotes are part of the value.
SGLANG_CHART_FLAGS = [
    '--total-queued-requests-metric="sglang:num_queue_reqs"',
    '--total-running-requests-metric="sglang:num_running_reqs"',
    '--kv-cache-usage-percentage-metric="sglang:token_usage"',
    '--cache-info-metric="sglang:cache_config_info"',
]
# The data layer of the same charts' ConfigMap (GIE v1.5.0, sglang): the engine is sglang and the
# data source spells out GIE's defaults.
SGLANG_CHART_CONFIG = """
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: metrics-data-source
  parameters: {scheme: "http", path: "/metrics", insecureSkipVerify: true}
- type: core-metrics-extractor
  parameters: {defaultEngine: "sglang"}
schedulingProfiles:
- name: default
  plugins: [{pluginRef: queue-scorer}]
"""


def serve_options(*argv: str) -> serve.ServeOptions:
    return serve.options_from_args(parse_args(list(argv)))


def test_metric_specs_are_parsed_strictly() -> None:
    assert MetricSpec.parse("nv{request_type=waiting}") == MetricSpec("nv", (("request_type", "waiting"),))
    assert MetricSpec.parse(' x { a = "b,c" , d=e, } ') == MetricSpec("x", (("a", "b,c"), ("d", "e")))
    assert MetricSpec.parse("x{}") == MetricSpec("x", ())
    for bad in ("x{a!=b}", "x{a=~b}", "x{a=b c=d}", "x{a=b}}", "x{a}", "x{=b}", '"x"', "x y"):
        with pytest.raises(ValueError, match="invalid metric spec"):
            MetricSpec.parse(bad)


def test_chart_quoting_is_stripped_and_specs_parsed() -> None:
    options = serve_options(
        "--endpoint=10.0.0.1:8000",
        *SGLANG_CHART_FLAGS,
        "--lora-info-metric",
        "",
        '--model-server-metrics-path="/prometheus/metrics"',
        "--model-server-metrics-scheme",
        "https",
        "--model-server-metrics-https-insecure-skip-verify=false",
        "--model-server-metrics-port",
        "9400",
    )
    assert options.scrape_overrides == ScrapeOverrides(
        scheme="https",
        path="/prometheus/metrics",
        insecure_skip_verify=False,
        metric_specs={
            "waiting": "sglang:num_queue_reqs",
            "running": "sglang:num_running_reqs",
            "kv_usage": "sglang:token_usage",
            "cache_info": "sglang:cache_config_info",
            "lora": "",
        },
    )
    assert options.model_server_metrics_port == 9400


def test_no_flag_no_override() -> None:
    options = serve_options("--endpoint=10.0.0.1:8000")
    assert options.scrape_overrides == ScrapeOverrides()
    assert options.model_server_metrics_port is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--total-queued-requests-metric", "x{a!=b}"],
            "argument --total-queued-requests-metric: invalid metric",
        ),
        (["--model-server-metrics-scheme", "grpc"], "it can only be http or https"),
        (["--model-server-metrics-path", "metrics"], "a URL path starts with /"),
        (["--model-server-metrics-port", "70000"], "is not a port number"),
    ],
)
def test_bad_values_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--endpoint=10.0.0.1:8000", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_flags_replace_the_default_engines_names_only() -> None:
    overrides = ScrapeOverrides(
        metric_specs={"waiting": "nv_trt_llm_request_metrics{request_type=waiting}", "lora": ""}
    )
    settings = overrides.apply(ScrapeSettings())
    vllm = settings.engines["vllm"]
    assert vllm.waiting == (MetricSpec("nv_trt_llm_request_metrics", (("request_type", "waiting"),)),)
    assert vllm.lora == ()
    assert vllm.running == BUILTIN_ENGINES["vllm"].running  # a flag not given keeps the engine's name
    assert settings.engines["sglang"] == BUILTIN_ENGINES["sglang"]  # other engines untouched
    page = (
        'nv_trt_llm_request_metrics{request_type="waiting"} 5\n'
        'nv_trt_llm_request_metrics{request_type="x"} 9\n'
    )
    assert vllm.read(Extractor(vllm.names()).extract(page), 0).waiting_queue_size == 5


def test_flags_apply_to_the_configured_default_engine() -> None:
    settings = ScrapeOverrides(metric_specs={"kv_usage": "my_kv"}).apply(
        ScrapeSettings(default_engine="sglang")
    )
    assert settings.engines["sglang"].kv_usage == (MetricSpec("my_kv"),)
    assert settings.engines["vllm"] == BUILTIN_ENGINES["vllm"]


def test_a_cache_info_flag_reads_that_metrics_labels() -> None:
    """trtllm-serve's built-in cache geometry is two gauges; GIE's flag names one info metric whose
    block_size/num_gpu_blocks labels carry it (SGLang's keeps its own label names)."""
    settings = ScrapeOverrides(metric_specs={"cache_info": "trtllm_cache_config_info"}).apply(
        ScrapeSettings(default_engine="trtllm-serve")
    )
    engine = settings.engines["trtllm-serve"]
    page = 'trtllm_cache_config_info{block_size="64",num_gpu_blocks="512"} 1\n'
    metrics = engine.read(Extractor(engine.names()).extract(page), 0)
    assert (metrics.cache_block_size, metrics.cache_num_blocks) == (64, 512)
    sglang = ScrapeOverrides(metric_specs={"cache_info": "sglang:cache_config_info"}).apply(
        ScrapeSettings(default_engine="sglang")
    )
    engine = sglang.engines["sglang"]
    assert (engine.cache_block_size_label, engine.cache_num_blocks_label) == ("page_size", "num_pages")


def test_source_flags_win_over_the_config() -> None:
    """The trtllm-serve chart's config says `path: "/metrics"` and its flag /prometheus/metrics."""
    settings = ScrapeOverrides(path="/prometheus/metrics", scheme="https", insecure_skip_verify=False).apply(
        ScrapeSettings(scheme="http", path="/metrics", insecure_skip_verify=True)
    )
    assert (settings.scheme, settings.path, settings.insecure_skip_verify) == (
        "https",
        "/prometheus/metrics",
        False,
    )


# --- real servers ---------------------------------------------------------------------------------


def certificate_for_127_0_0_1(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate valid for the IP address 127.0.0.1 (so verification can pass)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "model-server")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class MetricsServer:
    """A model server's metrics page on its own 127.0.0.1 port (not the serving port)."""

    def __init__(self, path: str, page: str, tls: ssl.SSLContext | None = None) -> None:
        self.path = path
        self.page = page
        self.tls = tls
        self.hits = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handler(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.page)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(self.path, self.handler)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.tls).start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def servers() -> AsyncIterator[list[MetricsServer]]:
    started: list[MetricsServer] = []
    yield started
    for server in started:
        await server.stop()


async def start_server(
    servers: list[MetricsServer], path: str, page: str, tls: ssl.SSLContext | None = None
) -> MetricsServer:
    server = MetricsServer(path, page, tls)
    await server.start()
    servers.append(server)
    return server


async def running_picker(*argv: str) -> serve.EndpointPicker:
    base = [
        "--host=127.0.0.1",
        "--grpc-port=0",
        "--grpc-health-port=0",
        "--metrics-port=0",
        "--secure-serving=false",
        "--drain-timeout=0s",
    ]
    picker = serve.EndpointPicker(serve_options(*base, *argv))
    await picker.start()
    return picker


async def until(what: str, predicate: Callable[[], bool]) -> None:
    async def probe() -> bool | None:
        return True if predicate() else None

    await wait_until(probe, what, 5, interval=0.01)


def only_endpoint(picker: serve.EndpointPicker) -> Endpoint:
    (endpoint,) = picker.datastore.endpoints()
    return endpoint


async def test_sglang_chart_flags_scrape_a_metrics_port_and_path(servers: list[MetricsServer]) -> None:
    server = await start_server(servers, "/prometheus/metrics", SGLANG_PAGE)
    picker = await running_picker(
        "--endpoint=127.0.0.1:1",  # the serving port: never scraped here
        f"--config-text={SGLANG_CHART_CONFIG}",
        *SGLANG_CHART_FLAGS,
        '--model-server-metrics-path="/prometheus/metrics"',
        f"--model-server-metrics-port={server.port}",
    )
    try:
        endpoint = only_endpoint(picker)
        assert endpoint.spec.metrics_port == server.port
        await until("the SGLang names to be read", lambda: endpoint.metrics.waiting_queue_size == 4)
        metrics = endpoint.metrics
        assert (metrics.running_requests_size, metrics.kv_cache_usage) == (2, 0.75)
        assert (metrics.cache_block_size, metrics.cache_num_blocks) == (32, 100)
        assert endpoint.healthy
    finally:
        await picker.stop()


async def test_without_the_flags_the_vllm_names_find_nothing(servers: list[MetricsServer]) -> None:
    """The control: the same page read with the default (vLLM) names gives zeros."""
    server = await start_server(servers, "/metrics", SGLANG_PAGE)
    picker = await running_picker(f"--endpoint=127.0.0.1:{server.port}")
    try:
        endpoint = only_endpoint(picker)
        await until("a scrape", lambda: server.hits >= 2 and endpoint.metrics.update_time > 0)
        assert endpoint.metrics.waiting_queue_size == 0
    finally:
        await picker.stop()


@pytest.fixture
def tls_server_context(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    cert, key = certificate_for_127_0_0_1(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


async def test_https_scrapes_without_verification_by_default(
    servers: list[MetricsServer], tls_server_context: tuple[ssl.SSLContext, Path]
) -> None:
    context, _ = tls_server_context
    server = await start_server(servers, "/metrics", SGLANG_PAGE, context)
    picker = await running_picker(
        f"--endpoint=127.0.0.1:{server.port}", "--model-server-metrics-scheme=https", *SGLANG_CHART_FLAGS
    )
    try:
        endpoint = only_endpoint(picker)
        await until("an https scrape", lambda: endpoint.metrics.waiting_queue_size == 4)
    finally:
        await picker.stop()


async def test_plain_http_against_an_https_server_fails(
    servers: list[MetricsServer], tls_server_context: tuple[ssl.SSLContext, Path]
) -> None:
    context, _ = tls_server_context
    server = await start_server(servers, "/metrics", SGLANG_PAGE, context)
    picker = await running_picker(f"--endpoint=127.0.0.1:{server.port}")
    try:
        endpoint = only_endpoint(picker)
        await until("the endpoint to fail its scrapes", lambda: not endpoint.healthy)
        assert server.hits == 0
    finally:
        await picker.stop()


async def test_verification_on_refuses_an_untrusted_certificate_and_accepts_a_trusted_one(
    servers: list[MetricsServer],
    tls_server_context: tuple[ssl.SSLContext, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context, cert = tls_server_context
    server = await start_server(servers, "/metrics", SGLANG_PAGE, context)
    flags = (
        f"--endpoint=127.0.0.1:{server.port}",
        "--model-server-metrics-scheme",
        '"https"',
        "--model-server-metrics-https-insecure-skip-verify=false",
        *SGLANG_CHART_FLAGS,
    )
    picker = await running_picker(*flags)
    try:
        endpoint = only_endpoint(picker)
        await until("the self-signed certificate to be refused", lambda: not endpoint.healthy)
        assert server.hits == 0
    finally:
        await picker.stop()

    # Verification uses the system trust store, which SSL_CERT_FILE points OpenSSL at.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    picker = await running_picker(*flags)
    try:
        endpoint = only_endpoint(picker)
        await until("a verified https scrape", lambda: endpoint.metrics.waiting_queue_size == 4)
    finally:
        await picker.stop()


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e400", "lots"])
def test_a_cache_info_label_that_is_no_finite_number_reads_as_unknown(value: str) -> None:
    """An engine reporting `num_gpu_blocks="inf"` (or garbage) leaves the geometry unknown (0)
    instead of failing the endpoint's every scrape with OverflowError."""
    engine = ScrapeSettings(default_engine="vllm").engines["vllm"]
    page = f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="{value}"}} 1\n'
    metrics = engine.read(Extractor(engine.names()).extract(page), 0)
    assert (metrics.cache_block_size, metrics.cache_num_blocks) == (16, 0)

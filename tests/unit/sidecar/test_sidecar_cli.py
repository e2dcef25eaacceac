"""Flag parsing: llm-d's spellings keep working, unsafe or unsupported settings are refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from epp.sidecar.cli import add_arguments, options_from_args, run
from epp.sidecar.connectors import Connector
from epp.sidecar.options import SidecarOptions
from epp.sidecar.server import ConfigError, Sidecar
from epp.sidecar.upstream import StageTls


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def options(*argv: str) -> SidecarOptions:
    return options_from_args(parse(*argv))


def test_defaults() -> None:
    parsed = options()
    assert (parsed.port, parsed.model_server_port, parsed.model_server_host) == (8000, 8200, "127.0.0.1")
    assert parsed.connector is Connector.NIXLV2
    assert parsed.ssrf_protection and not parsed.secure_proxy and not parsed.prefiller_sampling
    assert (parsed.prefill.timeout, parsed.prefill.max_retries, parsed.prefill.backoff) == (60.0, 0, 0.2)


def test_llm_d_manifest_spellings() -> None:
    parsed = options(
        "--port=8000",
        "--vllm-port=8201",
        "--connector=nixl",
        "--secure-proxy=false",
        "--enable-ssrf-protection=false",
        "--enable-prefiller-sampling",
    )
    assert parsed.model_server_port == 8201
    assert parsed.connector is Connector.NIXL
    assert not parsed.secure_proxy and not parsed.ssrf_protection and parsed.prefiller_sampling
    assert options("--model-server-port=9000", "--vllm-port=8201").model_server_port == 9000


def test_switch_forms() -> None:
    assert not options("--no-enable-ssrf-protection").ssrf_protection
    assert options("--secure-proxy").secure_proxy
    assert options("--secure-proxy", "true").secure_proxy
    with pytest.raises(SystemExit):
        options("--secure-proxy=maybe")


def test_durations_and_tls_stages() -> None:
    parsed = options(
        "--prefill-timeout=1500ms",
        "--prefill-retry-backoff=1s",
        "--prefill-max-retries=3",
        "--enable-tls=prefiller,decoder",
        "--tls-insecure-skip-verify",
        "decoder",
    )
    assert (parsed.prefill.timeout, parsed.prefill.backoff, parsed.prefill.max_retries) == (1.5, 1.0, 3)
    assert parsed.prefiller_tls == StageTls(enabled=True, skip_verify=False)
    assert parsed.decoder_tls == StageTls(enabled=True, skip_verify=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--enable-tls=encoder"], "encoder"),
        (["--data-parallel-size=2"], "data-parallel"),
    ],
)
def test_unsupported_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        options(*argv)


def test_ssrf_protection_without_an_allowlist_source_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--endpoints-file"):
        Sidecar(options())
    assert Sidecar(options("--no-enable-ssrf-protection")).allowlist is None
    assert Sidecar(options(f"--endpoints-file={tmp_path / 'e.yaml'}")).allowlist is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["--prefill-max-retries=-1"],
        ["--prefill-timeout=-3"],
        ["--prefill-timeout=nan"],
        ["--prefill-timeout=5 parsecs"],
        ["--prefill-retry-backoff=-1"],
        ["--shutdown-timeout=-1s"],
        ["--max-body-bytes=-5"],
        ["--max-body-bytes=0"],
        ["--port=70000"],
        ["--port=-1"],
        ["--model-server-port=0"],
        ["--vllm-port=65536"],
    ],
)
def test_values_that_would_hang_or_crash_exit_2_naming_the_flag(
    argv: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    flag = argv[0].partition("=")[0]
    with pytest.raises(ConfigError, match=flag):
        options(*argv)
    assert run(parse(*argv, "--no-enable-ssrf-protection")) == 2
    assert flag in caplog.text


def test_boundary_values_are_accepted() -> None:
    parsed = options(
        "--port=0", "--model-server-port=65535", "--prefill-timeout=0", "--prefill-max-retries=0"
    )
    assert (parsed.port, parsed.model_server_port, parsed.prefill.timeout) == (0, 65535, 0.0)

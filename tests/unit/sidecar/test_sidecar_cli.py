"""Flag parsing: llm-d's spellings keep working, unsafe or unsupported settings are refused."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from epp.discovery.k8s.model import GROUP_ALPHA, PoolRef
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
    assert not parsed.ssrf_protection and not parsed.secure_proxy and not parsed.prefiller_sampling
    assert parsed.pool is None
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


def test_llm_d_removed_tls_switches_still_work(caplog: pytest.LogCaptureFixture) -> None:
    """Removed from llm-d in July 2026; KServe's decode template still passes the first two."""
    parsed = options(
        "--decoder-use-tls=true",
        "--prefiller-use-tls",
        "--prefiller-tls-insecure-skip-verify=true",
        "--decoder-tls-insecure-skip-verify=false",
    )
    assert parsed.prefiller_tls == StageTls(enabled=True, skip_verify=True)
    assert parsed.decoder_tls == StageTls(enabled=True, skip_verify=False)
    assert "--decoder-use-tls is deprecated: use --enable-tls=decoder" in caplog.text
    assert (
        "--prefiller-tls-insecure-skip-verify is deprecated: use --tls-insecure-skip-verify=prefiller"
        in caplog.text
    )
    assert options("--decoder-use-tls=false").decoder_tls == StageTls()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--enable-tls=encoder"], "encoder"),
        (["--data-parallel-size=2"], "data-parallel"),
        # llm-d's own message: the "> 1 is not supported" one was given for these too
        (["--data-parallel-size=0"], "^--data-parallel-size must be a positive integer, got 0$"),
        (["--data-parallel-size=-1"], "^--data-parallel-size must be a positive integer, got -1$"),
    ],
)
def test_unsupported_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        options(*argv)


def test_ssrf_protection_is_off_by_default_as_in_llm_d() -> None:
    """A chart passing none of the SSRF flags must start, as llm-d's sidecar does."""
    assert Sidecar(options()).allowlist is None


def test_ssrf_protection_without_an_allowlist_source_refuses_to_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(
        ConfigError, match=r"^--inference-pool flag or INFERENCE_POOL environment variable is"
    ):
        Sidecar(options("--enable-ssrf-protection"))
    with pytest.raises(ConfigError, match="--inference-pool and --endpoints-file exclude each other"):
        Sidecar(options("--enable-ssrf-protection", "--inference-pool=p", f"--endpoints-file={tmp_path}"))
    assert Sidecar(options("--no-enable-ssrf-protection", "--inference-pool=p")).allowlist is None
    assert "SSRF protection is off (llm-d's default): prefill targets are not checked" in caplog.text
    assert Sidecar(options("--enable-ssrf-protection", "--inference-pool=p")).allowlist is not None
    file_source = options("--enable-ssrf-protection", f"--endpoints-file={tmp_path / 'e.yaml'}")
    assert Sidecar(file_source).allowlist is not None


def test_an_endpoints_file_turns_ssrf_protection_on_unless_turned_off(tmp_path: Path) -> None:
    """Ours, not llm-d's: given only to be the allowlist, so it must not go unused by default."""
    assert options(f"--endpoints-file={tmp_path / 'e.yaml'}").ssrf_protection
    assert not options(
        f"--endpoints-file={tmp_path / 'e.yaml'}", "--enable-ssrf-protection=false"
    ).ssrf_protection
    assert not options("--inference-pool=p").ssrf_protection, "llm-d: the pool alone does not turn it on"


@pytest.mark.parametrize(
    ("argv", "env", "pool"),
    [
        (["--inference-pool=team/llama"], {}, PoolRef("llama", "team")),
        (["--inference-pool", "llama"], {}, PoolRef("llama", "default")),
        ([], {"INFERENCE_POOL": "team/llama"}, PoolRef("llama", "team")),
        (["--inference-pool=other/x"], {"INFERENCE_POOL": "team/llama"}, PoolRef("x", "other")),
        (
            ["--inference-pool=llama", "--pool-group=inference.networking.x-k8s.io"],
            {},
            PoolRef("llama", "default", GROUP_ALPHA),
        ),
        # Deprecated (llm-d removed them in June 2026), still found in older charts and KServe's.
        (["--inference-pool-name=llama", "--inference-pool-namespace=team"], {}, PoolRef("llama", "team")),
        ([], {"INFERENCE_POOL_NAME": "llama", "INFERENCE_POOL_NAMESPACE": "team"}, PoolRef("llama", "team")),
        (["--inference-pool=a/b", "--inference-pool-name=c"], {}, PoolRef("b", "a")),
    ],
)
def test_the_pool_as_llm_d_resolves_it(
    argv: list[str], env: dict[str, str], pool: PoolRef, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert options("--enable-ssrf-protection", *argv).pool == pool


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--inference-pool=a/b/c"], "^--inference-pool must be 'namespace/name' or 'name', not 'a/b/c'$"),
        (["--inference-pool=/b"], "^--inference-pool cannot have an empty namespace or name: '/b'$"),
        (["--inference-pool=a/"], "^--inference-pool cannot have an empty namespace or name: 'a/'$"),
        (
            ["--inference-pool-name=llama"],
            "^--inference-pool-name and --inference-pool-namespace go together",
        ),
    ],
)
def test_a_malformed_pool_is_refused(argv: list[str], message: str, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError, match=message):
        options(*argv)
    assert run(parse(*argv)) == 2
    assert message.strip("^$") in caplog.text


def test_an_unknown_pool_group_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse("--pool-group=example.com")


def test_without_uvloop_installed_event_loop_uvloop_exits_2_saying_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert run(parse("--event-loop=uvloop", "--host=127.0.0.1", "--port=0")) == 2
    assert "--event-loop uvloop: uvloop is not installed (pip install uvloop)" in caplog.text


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
        ["--mooncake-bootstrap-port=0"],
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

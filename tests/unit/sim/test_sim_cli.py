"""`epp sim` flags: values the simulator cannot run with are refused before anything starts."""

from __future__ import annotations

import argparse
import socket

import pytest

from epp.cli import build_parser
from epp.sim.cli import run


def parse(*argv: str) -> argparse.Namespace:
    return build_parser("sim").parse_args(["sim", *argv])


@pytest.mark.parametrize(
    "argv",
    [
        ["--block-size", "0"],
        ["--num-gpu-blocks", "0"],
        ["--num-gpu-blocks", "1"],  # vLLM's null block would be all there is
        ["--max-num-seqs", "-1"],
        ["--max-num-batched-tokens", "0"],
        ["--max-model-len", "-5"],
        ["--max-waiting", "0"],
        ["--max-loras", "0"],
        ["--max-n-sequences", "0"],
        ["--count", "0"],
        ["--count", "two"],
        ["--port", "70000"],
        ["--port", "-1"],
        ["--time-scale", "0"],
        ["--time-scale", "-0.5"],
        ["--time-scale", "inf"],
        ["--lease-seconds", "0"],
        ["--lease-seconds", "nan"],
        ["--kv-load-failure-policy", "retry"],
        ["--max-logprobs", "-1"],
    ],
)
def test_unusable_values_exit_2_naming_the_flag(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err


def test_usable_values_are_parsed() -> None:
    args = parse("--block-size=32", "--time-scale=0.01", "--lease-seconds=2.5", "--port=0", "--count=3")
    assert (args.block_size, args.time_scale, args.lease_seconds, args.port, args.count) == (
        32,
        0.01,
        2.5,
        0,
        3,
    )


def test_max_n_sequences_defaults_to_vllms_limit() -> None:
    assert parse().max_n_sequences == 16384
    assert parse("--max-n-sequences=8").max_n_sequences == 8


def test_max_logprobs_defaults_to_vllms() -> None:
    assert parse().max_logprobs == 20
    assert parse("--max-logprobs=0").max_logprobs == 0


def test_kv_load_failure_policy_defaults_to_vllms() -> None:
    assert parse().kv_load_failure_policy == "fail"
    assert parse("--kv-load-failure-policy=recompute").kv_load_failure_policy == "recompute"


def test_ports_past_65535_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    assert run(parse("--port=65535", "--count=2")) == 2
    assert "--port 65535 with --count 2" in caplog.text


def test_a_port_in_use_is_an_error_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    """A port another process listens on ends `epp sim` with exit code 1 and the bind error in one
    line, as `epp serve` and `epp sidecar` report it (it was a traceback)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert run(parse(f"--port={port}", "--profile=tiny-test")) == 1
    assert f"('127.0.0.1', {port}): address already in use" in caplog.text

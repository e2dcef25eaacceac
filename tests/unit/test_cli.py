"""`epp`'s dispatch: a first argument that is a flag means `serve` (the image's entrypoint under
GIE's and llm-d's charts, which pass flags only); a subcommand name runs that subcommand."""

from __future__ import annotations

import asyncio
import json
import logging
import tomllib
from pathlib import Path

import pytest
from aiohttp import web

from epp import cli


@pytest.mark.parametrize(
    ("argv", "command", "resolved"),
    [
        # GIE's chart: flags only.
        (["--pool-name", "p", "--v", "1"], "serve", ["serve", "--pool-name", "p", "--v", "1"]),
        (["--endpoint-selector=app=x"], "serve", ["serve", "--endpoint-selector=app=x"]),
        (["-v", "3"], "serve", ["serve", "-v", "3"]),
        # Top-level options stay in front of the implied command.
        (
            ["--log-level", "DEBUG", "--pool-name", "p"],
            "serve",
            ["--log-level", "DEBUG", "serve", "--pool-name", "p"],
        ),
        (["--log-level=DEBUG", "--pool-name=p"], "serve", ["--log-level=DEBUG", "serve", "--pool-name=p"]),
        # Explicit subcommands are untouched, whatever their flags' values are.
        (["serve", "--pool-name", "sim"], "serve", ["serve", "--pool-name", "sim"]),
        (["sim", "--count", "2"], "sim", ["sim", "--count", "2"]),
        (["--log-level", "WARNING", "sim"], "sim", ["--log-level", "WARNING", "sim"]),
        (["sidecar", "--port=8000"], "sidecar", ["sidecar", "--port=8000"]),
        (["bench", "--help"], "bench", ["bench", "--help"]),
        # Neither: left to argparse (help, or an error naming the choices).
        (["--help"], None, ["--help"]),
        (["-h"], None, ["-h"]),
        ([], None, []),
        (["vllm"], None, ["vllm"]),
    ],
)
def test_resolve(argv: list[str], command: str | None, resolved: list[str]) -> None:
    assert cli.resolve(argv) == (command, resolved)


def test_flags_only_parse_as_serve() -> None:
    args = cli.parse_args(["--endpoint", "10.0.0.1:8000", "--grpc-port", "9100"])
    assert (args.command, args.endpoint, args.grpc_port) == ("serve", ["10.0.0.1:8000"], 9100)
    assert args._module.__name__ == "epp.serve"


def test_a_subcommand_first_still_runs_it() -> None:
    args = cli.parse_args(["sim", "--count", "2", "--port", "0"])
    assert (args.command, args.count) == ("sim", 2)


def test_top_level_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.SUBCOMMANDS)
    assert "runs `epp serve --flag ...`" in out


def test_an_unknown_first_word_is_an_error_naming_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(["vllm"])
    assert exited.value.code == 2
    assert "invalid choice: 'vllm'" in capsys.readouterr().err


def test_the_images_entrypoint_serves_flag_only_args(capsys: pytest.CaptureFixture[str]) -> None:
    """The Dockerfile's ENTRYPOINT is the `epp` console script (epp.cli:main) and its CMD only the
    help; a chart's args replace CMD and reach `epp serve`'s own parser (here its error for a bad
    value, where an unknown subcommand would have been `invalid choice`)."""
    root = Path(__file__).resolve().parents[2]
    lines = (root / "Dockerfile").read_text().splitlines()
    assert json.loads(next(x for x in lines if x.startswith("ENTRYPOINT ")).split(" ", 1)[1]) == ["epp"]
    assert json.loads(next(x for x in lines if x.startswith("CMD ")).split(" ", 1)[1]) == ["--help"]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["epp"] == "epp.cli:main"
    with pytest.raises(SystemExit) as exited:
        cli.main(["--pool-name", "p", "--grpc-port", "not-a-port"])
    assert exited.value.code == 2
    assert (
        "epp serve: error: argument --grpc-port: 'not-a-port' is not a port number" in capsys.readouterr().err
    )


def test_the_image_has_llm_ds_sidecar_path_running_epp_sidecar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """llm-d's sidecar image runs /app/pd-sidecar, and pods name it in `command:`. Ours links it,
    in the final stage and as root (before USER), to the `pd-sidecar` console script, which pip
    puts in the prefix's bin (/install/bin, copied to /usr/local); that script runs `epp sidecar`
    with its args (here its error for a bad value)."""
    root = Path(__file__).resolve().parents[2]
    final_stage = (root / "Dockerfile").read_text().rpartition("\nFROM ")[2].splitlines()
    link = next(
        i for i, line in enumerate(final_stage) if "/app/pd-sidecar" in line and line.startswith("RUN ")
    )
    assert "ln -s /usr/local/bin/pd-sidecar /app/pd-sidecar" in final_stage[link]
    assert "test -x /usr/local/bin/pd-sidecar" in final_stage[link], "a dangling link fails the build"
    assert link < next(i for i, line in enumerate(final_stage) if line.startswith("USER "))
    assert "COPY --from=build /install /usr/local" in final_stage[:link]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["pd-sidecar"] == "epp.cli:pd_sidecar"
    monkeypatch.setattr("sys.argv", ["/app/pd-sidecar", "--port=8000", "--zap-log-level=loud"])
    with pytest.raises(SystemExit) as exited:
        cli.pd_sidecar()
    assert exited.value.code == 2
    assert "epp sidecar: error: argument --zap-log-level: invalid log level 'loud'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "request_line",
    [b"GET /api/decisions?limit=\xd9\xa5 HTTP/1.1", b"GET /metrics HTTP/1.1\r\nx-folded: a\r\n b"],
    ids=["non-ASCII byte in the query", "obsolete header folding"],
)
async def test_a_request_aiohttp_cannot_parse_is_not_logged_as_an_error(
    request_line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp answers such a request 400 and logged it at ERROR with its traceback ("Error
    handling request"): any client reaching the metrics port, the sidecar or a simulator could
    fill the operator's error log. The commands' servers log it at DEBUG, without the traceback."""
    cli.install_log_filters()
    runner = web.AppRunner(web.Application(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        with caplog.at_level(logging.DEBUG, logger="aiohttp.server"):
            reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
            writer.write(request_line + b"\r\nHost: x\r\n\r\n")
            assert b" 400 " in await reader.readline()
            await reader.read()  # the server closes the connection
            writer.close()
            await asyncio.sleep(0.05)
    finally:
        await runner.cleanup()
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert records, "the bad request is still logged, at DEBUG"
    assert all(r.levelno == logging.DEBUG and r.exc_info is None for r in records)
    assert "400" in records[0].getMessage()

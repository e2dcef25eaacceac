"""`--event-loop`: the loop the long-running commands run on (uvloop by default where installed)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import uvloop

from epp import eventloop, serve
from epp.cli import parse_args
from tests.unit.config.test_config_serve import CONFIG, serve_args


async def loop_kind() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_auto_and_uvloop_run_on_uvloop() -> None:
    assert eventloop.run(loop_kind()) is uvloop.Loop
    assert eventloop.run(loop_kind(), "uvloop") is uvloop.Loop


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    kind = eventloop.run(loop_kind(), "asyncio")
    assert issubclass(kind, asyncio.BaseEventLoop)
    assert not issubclass(kind, uvloop.Loop)


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert issubclass(eventloop.run(loop_kind(), "auto"), asyncio.BaseEventLoop)
    with pytest.raises(ValueError, match=r"^--event-loop uvloop: uvloop is not installed"):
        eventloop.run(loop_kind(), "uvloop")  # the coroutine is closed: no never-awaited warning


def test_an_unknown_loop_is_an_error_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"one of auto, uvloop, asyncio, not 'trio'"):
        eventloop.run(loop_kind(), "trio")


@pytest.mark.parametrize("command", ["serve", "sim", "sidecar"])
def test_each_server_takes_the_flag_and_refuses_an_unknown_loop(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parse_args([command]).event_loop == "auto"
    assert parse_args([command, "--event-loop", "asyncio"]).event_loop == "asyncio"
    with pytest.raises(SystemExit) as exited:
        parse_args([command, "--event-loop", "trio"])
    assert exited.value.code == 2
    assert "argument --event-loop: invalid choice: 'trio'" in capsys.readouterr().err


@pytest.mark.parametrize("name, kind", [("auto", uvloop.Loop), ("asyncio", asyncio.BaseEventLoop)])
def test_serve_runs_on_the_chosen_loop_and_drains_on_sigterm(
    name: str, kind: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`epp serve` whole: it starts on the chosen loop, and SIGTERM (the loop's signal handler)
    stops it cleanly (exit 0), saying when the drain starts and ends."""
    caplog.set_level(logging.INFO, logger=serve.log.name)
    ports = ("--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", "--host=127.0.0.1")
    args = serve_args("--config-text", CONFIG, *ports, f"--event-loop={name}")
    seen: list[type] = []

    def started() -> None:
        seen.append(type(asyncio.get_running_loop()))
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(serve, "freeze_startup_objects", started)
    assert serve.run(args) == 0
    assert len(seen) == 1 and issubclass(seen[0], kind)
    messages = [r.getMessage() for r in caplog.records]
    drain = "stopping: NOT_SERVING; in-flight requests may finish for up to 120s (--shutdown-grace)"
    assert messages.index(drain) < messages.index("drained: ext_proc stopped")


def test_serve_without_uvloop_installed_exits_2_saying_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    args = serve_args("--config-text", CONFIG, "--event-loop=uvloop", "--grpc-port=0", "--host=127.0.0.1")
    with caplog.at_level(logging.ERROR, logger=serve.log.name):
        assert serve.run(args) == 2
    assert "--event-loop uvloop: uvloop is not installed" in caplog.text


class _SignalAtDrain(logging.Handler):
    """Sends the process SIGTERM `after` seconds past the drain window's start."""

    def __init__(self, after: float) -> None:
        super().__init__()
        self.after = after

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("draining:"):
            threading.Timer(self.after, os.kill, (os.getpid(), signal.SIGTERM)).start()


def _serve_with_a_signal_in_the_drain(monkeypatch: pytest.MonkeyPatch, drain: str, after: float) -> float:
    """`epp serve` stopped by SIGTERM once serving and signalled again `after` seconds into its
    drain window: the seconds it ran."""
    ports = ("--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", "--host=127.0.0.1")
    args = serve_args("--config-text", CONFIG, *ports, f"--drain-timeout={drain}")
    monkeypatch.setattr(serve, "freeze_startup_objects", lambda: os.kill(os.getpid(), signal.SIGTERM))
    handler = _SignalAtDrain(after)
    serve.log.addHandler(handler)
    level = serve.log.level
    serve.log.setLevel(logging.INFO)
    try:
        started = time.monotonic()
        assert serve.run(args) == 0
        return time.monotonic() - started
    finally:
        serve.log.removeHandler(handler)
        serve.log.setLevel(level)


def test_a_second_signal_ends_the_drain_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the router's 30 s drain by default, a second SIGINT/SIGTERM (Ctrl-C again) stops at
    once, as the router's second signal does, instead of waiting out the window."""
    assert _serve_with_a_signal_in_the_drain(monkeypatch, "30s", serve.REPEATED_SIGNAL_WINDOW + 0.5) < 15


def test_the_same_stop_delivered_twice_keeps_the_drain_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker of `epp serve --workers` hears a terminal's Ctrl-C and its supervisor's SIGTERM, or
    systemd's and the supervisor's, a moment apart: one stop, drained in full."""
    assert _serve_with_a_signal_in_the_drain(monkeypatch, "2s", 0.0) >= 2

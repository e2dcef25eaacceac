"""`epp serve` does its one long stop-the-world step (collecting and freezing what startup made)
before it serves: done after, under load, it stalled the event loop for hundreds of ms right as
the first requests came, and the overload guard answered them 429 (`event loop lags`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp import serve
from tests.unit.config.test_config_serve import CONFIG, serve_args


async def test_startup_objects_are_frozen_before_the_picker_serves_or_measures_its_lag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready = tmp_path / "ready.json"
    ports = ("--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", "--host=127.0.0.1")
    args = serve_args("--config-text", CONFIG, *ports, f"--ready-file={ready}")
    picker = serve.EndpointPicker(serve.options_from_args(args))
    seen: dict[str, object] = {}

    def freeze() -> None:
        seen.update(ready=ready.exists(), servers=list(picker._servers), lag=picker.overload._task)
        picker.failed.set()  # ends serve_until_signalled

    monkeypatch.setattr(serve, "freeze_startup_objects", freeze)
    await serve.serve_until_signalled(picker)
    assert seen == {"ready": False, "servers": [], "lag": None}
    assert ready.exists()  # it served after

"""`epp serve` does its one long stop-the-world step (collecting and freezing what startup made)
before it serves: done after, under load, it stalled the event loop for hundreds of ms right as
the first requests came, and the overload guard answered them 429 (`event loop lags`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from epp import serve
from epp.cli import build_parser

CONFIG = """
apiVersion: llm-d.ai/v1alpha1
kind: EndpointPickerConfig
plugins: [{type: queue-scorer}, {type: random-picker}]
schedulingProfiles: [{name: only, plugins: [{pluginRef: queue-scorer}, {pluginRef: random-picker}]}]
dataLayer: {sources: []}
"""


def serve_args(ready: Path) -> argparse.Namespace:
    return build_parser("serve").parse_args(
        [
            "serve", "--endpoint=127.0.0.1:8000", "--config-text", CONFIG, "--host=127.0.0.1",
            "--grpc-port=0", "--grpc-health-port=0", "--metrics-port=0", f"--ready-file={ready}",
        ]
    )  # fmt: skip


async def test_startup_objects_are_frozen_before_the_picker_serves_or_measures_its_lag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ready = tmp_path / "ready.json"
    picker = serve.EndpointPicker(serve.options_from_args(serve_args(ready)))
    seen: dict[str, object] = {}

    def freeze() -> None:
        seen.update(ready=ready.exists(), servers=list(picker._servers), lag=picker.overload._task)
        picker.failed.set()  # ends serve_until_signalled

    monkeypatch.setattr(serve, "freeze_startup_objects", freeze)
    await serve.serve_until_signalled(picker)
    assert seen == {"ready": False, "servers": [], "lag": None}
    assert ready.exists()  # it served after

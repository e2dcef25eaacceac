"""Real Envoy's own verdict on a configuration (`envoy --mode validate`), for the bootstrap tests
and the gateway manifests' Envoy fragments alike."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from epp.stack.stack import envoy_binary


def assert_envoy_accepts(bootstrap: dict[str, Any], directory: Path) -> None:
    """Envoy loads `bootstrap` (written to `directory`, where relative paths in it resolve) and
    answers OK; otherwise the assertion carries Envoy's own complaint."""
    path = directory / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout

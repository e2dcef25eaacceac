"""Ready files: a server writes its bound ports as JSON once it serves, so orchestrators and tests
poll for the file instead of sleeping or guessing ports."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_ready_file(path: Path, data: Any) -> None:
    """Write atomically (rename), so a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def read_ready_file(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None

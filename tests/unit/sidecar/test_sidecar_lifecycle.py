"""Starting and stopping the sidecar: a start that fails part-way leaves nothing running."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from epp.sidecar.allowlist import AllowList
from epp.sidecar.options import SidecarOptions
from epp.sidecar.server import Sidecar
from epp.tls import CERT_FILE, KEY_FILE, self_signed_certificate


class RecordingSource:
    """An allowlist source that only records whether it is running."""

    def __init__(self) -> None:
        self.allowlist = AllowList()
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False


async def test_a_sidecar_that_cannot_listen_stops_what_it_had_started(tmp_path: Path) -> None:
    """The allowlist source and the certificate watcher start before the port is bound."""
    key_pem, cert_pem = self_signed_certificate("sidecar")
    (tmp_path / KEY_FILE).write_bytes(key_pem)
    (tmp_path / CERT_FILE).write_bytes(cert_pem)
    source = RecordingSource()
    running_before = asyncio.all_tasks()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        options = SidecarOptions(
            host="127.0.0.1",
            port=busy.getsockname()[1],
            secure_proxy=True,
            cert_path=tmp_path,
            ssrf_protection=True,
        )
        with pytest.raises(OSError):
            await Sidecar(options, allowlist_source=source).start()
    assert not source.running
    assert asyncio.all_tasks() == running_before, "no certificate watcher left behind"


async def test_stop_without_start_and_twice_is_harmless() -> None:
    sidecar = Sidecar(SidecarOptions(host="127.0.0.1", port=0, ssrf_protection=False))
    await sidecar.stop()
    await sidecar.start()
    await sidecar.stop()
    await sidecar.stop()

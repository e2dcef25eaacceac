"""TLS for the sidecar's listener (`--secure-proxy`) and for its upstream legs (`--enable-tls`)."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
from pathlib import Path

from epp.tls import CERT_FILE, KEY_FILE, ReloadedPair, self_signed_certificate

log = logging.getLogger(__name__)


def client_context(skip_verify: bool) -> ssl.SSLContext:
    """TLS >= 1.2 with the system trust store; `skip_verify` for self-signed engine certificates."""
    context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _load_self_signed(context: ssl.SSLContext) -> None:
    """`load_cert_chain` reads only files. On Linux they are anonymous in-memory files, so the key
    never touches a disk and a read-only root filesystem is fine; elsewhere a private temp dir."""
    key_pem, cert_pem = self_signed_certificate("epp-sidecar")
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create(name) for name in (CERT_FILE, KEY_FILE)]
        try:
            for fd, pem in zip(fds, (cert_pem, key_pem), strict=True):
                os.write(fd, pem)
            context.load_cert_chain(*(f"/proc/self/fd/{fd}" for fd in fds))
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory() as directory:
        cert_path, key_path = Path(directory, CERT_FILE), Path(directory, KEY_FILE)
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
        context.load_cert_chain(cert_path, key_path)


class ServerTls:
    """The listener's SSLContext. With a certificate directory (a mounted Kubernetes TLS secret) the
    pair is reloaded into the same context when it changes, so rotation needs no restart; without
    one a self-signed certificate is generated at start."""

    def __init__(self, cert_dir: Path | None, poll_interval: float = 5.0) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._pair = None if cert_dir is None else ReloadedPair(self.context, cert_dir, poll_interval)

    async def start(self) -> None:
        if self._pair is None:
            await asyncio.to_thread(_load_self_signed, self.context)
            log.info("serving TLS with a self-signed certificate")
            return
        await asyncio.to_thread(self._pair.load)
        log.info("serving TLS with the certificate in %s", self._pair.directory)
        await self._pair.start()

    async def stop(self) -> None:
        if self._pair is not None:
            await self._pair.stop()

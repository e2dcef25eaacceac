"""The listener's certificate: self-signed by default, from --cert-path otherwise, and a rotated
certificate is served to new connections without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from epp.sidecar.tls import ServerTls, client_context
from epp.stack.processes import wait_until
from epp.tls import CERT_FILE, KEY_FILE, self_signed_certificate


def write_pair(directory: Path, common_name: str) -> bytes:
    key_pem, cert_pem = self_signed_certificate(common_name)
    (directory / KEY_FILE).write_bytes(key_pem)
    (directory / CERT_FILE).write_bytes(cert_pem)
    return ssl.PEM_cert_to_DER_cert(cert_pem.decode())


async def served_certificate(port: int) -> bytes:
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(skip_verify=True))
    ssl_object = writer.get_extra_info("ssl_object")
    certificate: bytes = ssl_object.getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return certificate


@contextlib.asynccontextmanager
async def serving(tls: ServerTls) -> AsyncIterator[int]:
    """The port of a local HTTPS listener using `tls`."""
    await tls.start()
    runner = web.AppRunner(web.Application(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context).start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()
        await tls.stop()


async def test_self_signed_when_no_directory() -> None:
    async with serving(ServerTls(None)) as port:
        assert await served_certificate(port)


async def test_rotated_certificate_is_served_without_restart(tmp_path: Path) -> None:
    first = write_pair(tmp_path, "first")
    async with serving(ServerTls(tmp_path, poll_interval=0.01)) as port:
        assert await served_certificate(port) == first
        second = write_pair(tmp_path, "second")

        async def rotated() -> bool | None:
            return await served_certificate(port) == second or None

        await wait_until(rotated, "the new certificate to be served", timeout=10)

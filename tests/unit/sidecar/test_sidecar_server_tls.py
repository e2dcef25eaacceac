"""The listener's certificate: self-signed by default, from --cert-path otherwise, and a rotated
certificate is served to new connections without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
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


async def test_a_broken_pair_is_reported_once_per_change_not_at_every_poll(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Secret left broken (cert-manager failing) was logged as an error with its stack at every
    poll, every 5 s for as long as it stayed broken; the ext_proc port's reloader already reports
    it once. The previous certificate stays served meanwhile, and a good pair is taken at once."""
    first = write_pair(tmp_path, "first")
    with caplog.at_level(logging.ERROR, logger="epp.tls"):
        async with serving(ServerTls(tmp_path, poll_interval=0.01)) as port:
            (tmp_path / CERT_FILE).write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
            await wait_until(reported(caplog, 1), "the broken pair to be reported", timeout=10)
            await asyncio.sleep(0.3)  # some 30 polls of the same broken files
            assert reports(caplog) == 1
            assert await served_certificate(port) == first
            (tmp_path / CERT_FILE).write_bytes(b"-----BEGIN CERTIFICATE-----\nstill not base64\n")
            await wait_until(reported(caplog, 2), "the new breakage to be reported", timeout=10)
            second = write_pair(tmp_path, "second")

            async def rotated() -> bool | None:
                return await served_certificate(port) == second or None

            await wait_until(rotated, "the repaired certificate to be served", timeout=10)
    assert reports(caplog) == 2


def reports(caplog: pytest.LogCaptureFixture) -> int:
    return sum("keeping the previous TLS certificate" in r.getMessage() for r in caplog.records)


def reported(caplog: pytest.LogCaptureFixture, count: int) -> Callable[[], Awaitable[bool | None]]:
    async def probe() -> bool | None:
        return reports(caplog) >= count or None

    return probe

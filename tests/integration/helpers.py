"""Helpers the integration tests share."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from epp.stack.stack import Stack


async def read_sse(response: aiohttp.ClientResponse) -> list[Any]:
    """The `data:` frames of an SSE response: decoded JSON, and the literal "[DONE]"."""
    frames: list[Any] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            frames.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return frames


async def nghttp_with_trailers(
    stack: Stack, path: str, body: bytes, tmp_dir: Path, method: str = "POST"
) -> bytes:
    """`method` (POST) over cleartext HTTP/2 with the body, then request trailers (nghttp2's
    client: httpx sends none)."""
    nghttp = shutil.which("nghttp")
    if nghttp is None:
        pytest.fail("nghttp is missing: `make install` installs Debian's nghttp2-client")
    data = tmp_dir / "body.json"
    data.write_bytes(body)
    url = f"{stack.gateway_url}{path}"
    argv = [nghttp, "-d", str(data), "-H", f":method: {method}", "-H", "content-type: application/json"]
    argv += ["--trailer", "x-t: 1", url]
    process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    return out

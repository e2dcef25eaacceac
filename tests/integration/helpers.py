"""Helpers the integration tests share."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson


async def read_sse(response: aiohttp.ClientResponse) -> list[Any]:
    """The `data:` frames of an SSE response: decoded JSON, and the literal "[DONE]"."""
    frames: list[Any] = []
    async for raw in response.content:
        line = raw.decode().strip()
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            frames.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return frames

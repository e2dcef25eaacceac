"""Real-time engine: an asyncio OpenAI-protocol load generator.

Sends a workload's requests at their Poisson arrival times (open loop: a slow server does not slow
the sender), streams every response, and records per request the time to the first content token,
the gap before every later token, the end, which server answered (`x-inference-pod`, set by the
simulator) and the usage it reported (prompt and cached tokens). Follow-up turns of a conversation
are sent their think time after the previous answer ended.

`time_scale` is the simulators' `--time-scale`: a value above 1 slows the modelled GPU down in wall
time, so a 2-core machine keeps up with many servers' token streams; recorded times are divided by
it, so results are in modelled seconds like the virtual-time engine's.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from epp.bench.records import RequestRecord, RunResult
from epp.bench.workload import BenchRequest
from epp.headers import SIM_POD_HEADER

_DONE = b"[DONE]"


def _token_text(chunk: dict[str, Any]) -> str:
    """The generated text a completion or chat chunk carries ("" for role-only and usage chunks)."""
    choices = chunk.get("choices")
    if not choices:
        return ""
    choice = choices[0]
    if "text" in choice:
        return str(choice["text"] or "")
    delta = choice.get("delta") or {}
    return str(delta.get("content") or "")


class LoadGenerator:
    """Drives one run; `run()` returns once every request has finished or failed."""

    def __init__(
        self,
        requests: Sequence[BenchRequest],
        base_url: str,
        model: str,
        endpoints: Sequence[str],
        time_scale: float = 1.0,
        request_timeout: float = 600.0,
    ) -> None:
        self.requests = requests
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.endpoints = list(endpoints)
        self.time_scale = time_scale
        self.request_timeout = request_timeout
        self.records = [RequestRecord(r.index, r.group) for r in requests]
        self.itl: array[float] = array("d")
        self._followers: dict[int, list[BenchRequest]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._origin = 0.0

    def _now(self) -> float:
        """Modelled seconds since the run started."""
        return (time.perf_counter() - self._origin) / self.time_scale

    async def run(self) -> RunResult:
        started = time.perf_counter()
        first_turns = [r for r in self.requests if r.follows is None]
        for request in self.requests:
            if request.follows is not None:
                self._followers.setdefault(request.follows, []).append(request)
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._origin = time.perf_counter()
            for request in first_turns:
                delay = request.arrival - self._now()
                if delay > 0:
                    await asyncio.sleep(delay * self.time_scale)
                self._spawn(session, request, 0.0)
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        return RunResult(
            engine="realtime",
            records=self.records,
            endpoints=self.endpoints,
            itl=self.itl,
            wall_seconds=time.perf_counter() - started,
        )

    def _spawn(self, session: aiohttp.ClientSession, request: BenchRequest, delay: float) -> None:
        task = asyncio.create_task(self._send_after(session, request, delay))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_after(self, session: aiohttp.ClientSession, request: BenchRequest, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay * self.time_scale)
        record = self.records[request.index]
        try:
            await self._send(session, request, record)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            record.error = type(exc).__name__
        if record.error is None and record.done is None:
            record.error = "incomplete stream"
        for follower in self._followers.pop(request.index, ()):
            self._spawn(session, follower, follower.arrival)

    async def _send(
        self, session: aiohttp.ClientSession, request: BenchRequest, record: RequestRecord
    ) -> None:
        body = orjson.dumps(request.body(self.model))
        record.sent = self._now()
        headers = {"content-type": "application/json", **request.gateway_headers()}
        async with session.post(self.base_url + request.path, data=body, headers=headers) as response:
            record.endpoint = response.headers.get(SIM_POD_HEADER, "")
            if response.status != 200:
                record.error = f"http {response.status}"
                await response.read()
                return
            last_token = 0.0
            tokens = 0
            async for line in response.content:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == _DONE:
                    record.done = self._now()
                    break
                chunk = orjson.loads(payload)
                if _token_text(chunk):
                    now = self._now()
                    if tokens == 0:
                        record.first_token = now
                    else:
                        self.itl.append(now - last_token)
                    last_token = now
                    tokens += 1
                usage = chunk.get("usage")
                if usage:
                    record.prompt_tokens = int(usage.get("prompt_tokens", 0))
                    record.output_tokens = int(usage.get("completion_tokens", 0))
                    details = usage.get("prompt_tokens_details") or {}
                    record.cached_tokens = int(details.get("cached_tokens") or 0)
            if record.output_tokens == 0:
                record.output_tokens = tokens


async def run_realtime(
    requests: Sequence[BenchRequest],
    base_url: str,
    model: str,
    endpoints: Sequence[str],
    time_scale: float = 1.0,
) -> RunResult:
    return await LoadGenerator(requests, base_url, model, endpoints, time_scale).run()

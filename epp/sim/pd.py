"""Prefill/decode disaggregation with vLLM NixlConnector semantics.

A request whose ``kv_transfer_params`` has ``do_remote_decode: true`` is a prefill leg: it runs
prefill, returns one token and keeps its KV blocks leased for a decode server. A request with
``do_remote_prefill: true`` is a decode leg: it names the prefill server's engine, request and
blocks, the decode server "pulls" them (releasing the lease, found by the prefill request's id) and
its first token comes after the modelled KV transfer instead of a prefill. Servers in one process
find each other through ``KVRegistry``; otherwise the pull is ``POST /internal/kv/release`` on the
prefill server's host and port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from epp.sim.driver import EngineDriver
from epp.sim.openai_api import ApiError

RELEASE_PATH = "/internal/kv/release"
KV_LOAD_FAILURE_POLICIES = ("fail", "recompute")
"""vLLM's `kv_load_failure_policy` (`--kv-transfer-config`), `fail` by default: what a decode leg
does when its KV cannot be read. `fail` ends the request with an error (HTTP 500, or an error frame
in a started stream); `recompute` computes the prompt locally instead."""


class KVLoadFailure(Exception):
    """A decode leg's KV could not be read from the prefill server (gone, or holding no lease)."""


class KVRegistry:
    """Engines of the simulated servers in this process, by engine id."""

    def __init__(self) -> None:
        self._drivers: dict[str, EngineDriver] = {}

    def register(self, engine_id: str, driver: EngineDriver) -> None:
        self._drivers[engine_id] = driver

    def unregister(self, engine_id: str) -> None:
        self._drivers.pop(engine_id, None)

    def get(self, engine_id: str) -> EngineDriver | None:
        return self._drivers.get(engine_id)


@dataclass(frozen=True, slots=True)
class RemoteBlocks:
    """Where a decode leg's prompt KV lives."""

    engine_id: str
    request_id: str
    block_ids: list[int]
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TransferRole:
    prefill_leg: bool
    remote: RemoteBlocks | None


def parse_kv_transfer_params(params: Any) -> TransferRole:
    """Which P/D leg a request is, validated; neither when ``params`` is absent."""
    if params is None:
        return TransferRole(False, None)
    if not isinstance(params, dict):
        raise ApiError(400, "'kv_transfer_params' must be an object", "kv_transfer_params")
    prefill_leg = params.get("do_remote_decode") is True
    if params.get("do_remote_prefill") is not True:
        return TransferRole(prefill_leg, None)
    if prefill_leg:
        raise ApiError(400, "kv_transfer_params cannot set both do_remote_decode and do_remote_prefill")
    problems = [
        name
        for name, valid in (
            ("remote_engine_id", _is_text(params.get("remote_engine_id"))),
            ("remote_request_id", _is_text(params.get("remote_request_id"))),
            ("remote_block_ids", _is_int_list(params.get("remote_block_ids"))),
            ("remote_host", _is_text(params.get("remote_host"))),
            ("remote_port", _is_int(params.get("remote_port"))),
        )
        if not valid
    ]
    if problems:
        raise ApiError(
            400,
            f"remote prefill needs valid kv_transfer_params {', '.join(problems)} "
            "(as returned by the prefill server)",
            "kv_transfer_params",
        )
    remote = RemoteBlocks(
        params["remote_engine_id"],
        params["remote_request_id"],
        params["remote_block_ids"],
        params["remote_host"],
        params["remote_port"],
    )
    return TransferRole(False, remote)


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(_is_int(v) for v in value)


def prefill_result_params(
    engine_id: str, request_id: str, block_ids: list[int], host: str, port: int
) -> dict[str, Any]:
    """``kv_transfer_params`` a prefill leg returns; a decode leg sends them back verbatim.
    ``remote_request_id`` (as newer vLLM sends) names the lease to release."""
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_engine_id": engine_id,
        "remote_request_id": request_id,
        "remote_block_ids": block_ids,
        "remote_host": host,
        "remote_port": port,
        "tp_size": 1,
    }


async def pull_remote_blocks(
    remote: RemoteBlocks, registry: KVRegistry, session: aiohttp.ClientSession
) -> int:
    """Take the leased blocks from the prefill server; returns how many blocks it held."""
    driver = registry.get(remote.engine_id)
    if driver is not None:
        count = driver.engine.release_lease(remote.request_id)
        driver.wake()
    else:
        count = await _release_over_http(remote, session)
    if count is None:
        raise KVLoadFailure(
            f"prefill engine {remote.engine_id} at {remote.host}:{remote.port} holds no KV lease for "
            f"request {remote.request_id} (already read or lease expired)"
        )
    return count


async def _release_over_http(remote: RemoteBlocks, session: aiohttp.ClientSession) -> int | None:
    url = f"http://{remote.host}:{remote.port}{RELEASE_PATH}"
    payload = {"remote_engine_id": remote.engine_id, "remote_request_id": remote.request_id}
    try:
        async with session.post(url, json=payload) as response:
            if response.status == 404:
                return None
            response.raise_for_status()
            return int((await response.json())["blocks"])
    except (aiohttp.ClientError, KeyError, ValueError) as exc:
        raise KVLoadFailure(
            f"cannot pull KV blocks from prefill server {remote.host}:{remote.port}: {exc}"
        ) from exc

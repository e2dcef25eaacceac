"""Request bodies for each KV connector's legs. Pure functions on parsed JSON: the original body is
never mutated, so the decode leg is built from exactly what the client sent (absent stays absent)."""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from epp.sidecar.apis import RESPONSES_PATH, TOKEN_LIMITS, FieldPath
from epp.sidecar.hostport import HostPort

Body = dict[str, Any]

KV_TRANSFER_PARAMS = "kv_transfer_params"
# The four remote_* fields are explicit nulls: vLLM's NixlConnector reads them as "no remote yet".
NIXL_PREFILL_PARAMS: dict[str, Any] = {
    "do_remote_decode": True,
    "do_remote_prefill": False,
    "remote_engine_id": None,
    "remote_block_ids": None,
    "remote_host": None,
    "remote_port": None,
}
NIXL_V1_REMOTE_FIELDS = ("remote_block_ids", "remote_engine_id", "remote_host", "remote_port")


class Connector(enum.StrEnum):
    NIXLV2 = "nixlv2"
    NIXL = "nixl"
    SGLANG = "sglang"


def _prefill_leg(original: Body, route: str) -> Body:
    """Prefill replies are consumed by the sidecar, never streamed to anyone, and at once: a
    background Responses request would be answered queued, without the KV location. Nor is a
    prefill reply ever asked for again, so the prefiller does not store it (vLLM never drops a
    stored response: a prefill pod kept one per P/D Responses request)."""
    body = dict(original)
    body["stream"] = False
    body.pop("stream_options", None)
    if "background" in body:
        body["background"] = False
    if route == RESPONSES_PATH:
        body["store"] = False
    return body


def _set_path(body: Body, path: FieldPath, value: Any) -> None:
    """Set a nested field, copying each intermediate object so the original stays untouched."""
    target = body
    for key in path[:-1]:
        inner = target.get(key)
        target[key] = dict(inner) if isinstance(inner, dict) else {}
        target = target[key]
    target[path[-1]] = value


def nixlv2_prefill_body(original: Body, route: str) -> Body:
    body = _prefill_leg(original, route)
    body[KV_TRANSFER_PARAMS] = dict(NIXL_PREFILL_PARAMS)
    for path in TOKEN_LIMITS[route]:
        _set_path(body, path, 1)
    return body


def nixlv2_decode_body(original: Body, prefill_reply: Body) -> Body:
    """The client's body with the prefiller's transfer parameters verbatim (null if it sent none:
    the decoder then prefills locally instead of failing)."""
    return {**original, KV_TRANSFER_PARAMS: prefill_reply.get(KV_TRANSFER_PARAMS)}


def nixl_v1_prefill_body(original: Body, route: str) -> Body:
    """The legacy flat form: no nested parameters and no token cap (so any route is alike)."""
    return {**_prefill_leg(original, route), "do_remote_decode": True}


def nixl_v1_decode_body(original: Body, prefill_reply: Body) -> Body:
    body = {key: value for key, value in original.items() if key != "do_remote_decode"}
    body["do_remote_prefill"] = True
    for field in NIXL_V1_REMOTE_FIELDS:
        body[field] = prefill_reply.get(field)
    return body


def sglang_body(original: Body, prefiller: HostPort, bootstrap_port: int, rng: random.Random) -> Body:
    """One body for both engines: the room number pairs the prefill and decode halves."""
    return {
        **original,
        "bootstrap_host": prefiller.host,
        "bootstrap_port": bootstrap_port,
        "bootstrap_room": time.time_ns() + rng.randrange(1000),
    }


@dataclass(frozen=True, slots=True)
class Handoff:
    """A connector whose decode leg needs the prefill reply: its two body builders, and the reply
    field that carries the KV location (without it the decoder silently prefills again)."""

    prefill_body: Callable[[Body, str], Body]
    decode_body: Callable[[Body, Body], Body]
    location_field: str


SEQUENTIAL_HANDOFFS = {
    Connector.NIXLV2: Handoff(nixlv2_prefill_body, nixlv2_decode_body, KV_TRANSFER_PARAMS),
    Connector.NIXL: Handoff(nixl_v1_prefill_body, nixl_v1_decode_body, "remote_block_ids"),
}

"""The Redis index backend's address forms and defaults, apart from `kvblocks_redis` so that
validating a config does not import redis-py (and the OpenTelemetry it pulls in) when no config
uses Redis."""

from __future__ import annotations

DEFAULT_ADDRESS = "redis://127.0.0.1:6379"  # llm-d's default
DEFAULT_PREFIX = "epp:kvblock:"
DEFAULT_TTL = 3600.0
DEFAULT_LOOKUP_TIMEOUT = 0.05


def redis_url(address: str) -> str:
    """llm-d's address forms: a bare `host:port` is `redis://`, `valkey://` and `valkeys://` are
    `redis://` and `rediss://`; `redis://`, `rediss://` and `unix://` are taken as they are."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        return f"redis://{address}"
    scheme = {"valkey": "redis", "valkeys": "rediss"}.get(scheme.lower(), scheme.lower())
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"unsupported scheme {scheme!r}: use redis://, rediss://, valkey://, or unix://")
    return f"{scheme}://{rest}"

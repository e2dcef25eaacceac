"""The prefill leg: a buffered POST to the prefiller, bounded in time (llm-d's has no bound and a
hung prefiller hangs the request) and retried only where a retry can help."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from epp.sidecar.errors import ProxyError
from epp.sidecar.hostport import HostPort
from epp.sidecar.upstream import StageTls, upstream_url

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class PrefillReply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`timeout` bounds each attempt (0 = unbounded); attempt n waits `backoff * 2**(n-1)` first."""

    timeout: float = 60.0
    max_retries: int = 0
    backoff: float = 0.2

    def delay(self, attempt: int) -> float:
        return float(self.backoff * 2 ** (attempt - 1))


class PrefillClient:
    def __init__(self, session: aiohttp.ClientSession, tls: StageTls, policy: RetryPolicy) -> None:
        self._session = session
        self._scheme = tls.scheme
        self._policy = policy

    async def send(self, target: HostPort, path: str, headers: CIMultiDict[str], body: bytes) -> PrefillReply:
        """The prefiller's reply, successful or not, once it is final: 2xx, a non-retryable status,
        or the last retry's status. Raises 502 (unreachable, broken reply) or 504 (timeout) when it
        never answers."""
        attempt = 0
        while True:
            outcome = await self._attempt(target, path, headers, body)
            if isinstance(outcome, PrefillReply) and outcome.status not in RETRYABLE_STATUSES:
                return outcome
            log.warning("prefill attempt %d to %s failed: %s", attempt + 1, target, _describe(outcome))
            if attempt == self._policy.max_retries:
                break
            attempt += 1
            await asyncio.sleep(self._policy.delay(attempt))
        if isinstance(outcome, ProxyError):
            raise outcome
        return outcome

    async def send_detached(
        self, target: HostPort, path: str, headers: CIMultiDict[str], body: bytes
    ) -> None:
        """Connectors that pair the legs themselves (SGLang): one attempt, reply discarded."""
        outcome = await self._attempt(target, path, headers, body)
        if not isinstance(outcome, PrefillReply) or not outcome.ok:
            log.warning("detached prefill to %s failed: %s", target, _describe(outcome))

    async def _attempt(
        self, target: HostPort, path: str, headers: CIMultiDict[str], body: bytes
    ) -> PrefillReply | ProxyError:
        url = upstream_url(f"{self._scheme}://{target}", path)
        timeout = self._policy.timeout or None
        try:
            async with asyncio.timeout(timeout):
                # Redirects are not followed: the allowlist vouched for this target only.
                async with self._session.post(
                    url, headers=headers, data=body, allow_redirects=False
                ) as response:
                    return PrefillReply(response.status, response.headers, await response.read())
        except aiohttp.ClientError as exc:
            return ProxyError(502, f"no reply from prefiller {target}: {exc}")
        except TimeoutError:
            return ProxyError(504, f"prefiller {target} did not answer within {self._policy.timeout:g}s")


def _describe(outcome: PrefillReply | ProxyError) -> str:
    return outcome.message if isinstance(outcome, ProxyError) else f"HTTP {outcome.status}"

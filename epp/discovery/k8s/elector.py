"""The leader elector over a `coordination.k8s.io/v1` Lease (its flags, timing and name are in
`epp.discovery.k8s.leader`).

The identity is `<hostname>_<uuid>`. The algorithm is client-go's: a candidate takes the Lease when it
does not exist, when its holder is empty (released), or when its record has not changed for a lease
duration by the candidate's own clock (no trust in other clocks); every write is a replace carrying
the resourceVersion read, so of two candidates racing only one wins (the other gets 409). The leader
renews every retry period and gives up leadership when it could not renew within the renew
deadline. Each request to the API server is given up after max(1 s, renew deadline / 2), as
client-go's lock client is built, so one hung request is retried within the renew deadline rather
than costing the leadership (or leaving a standby waiting on it forever). Stopping releases the
Lease (holder emptied), so a standby takes over at its next retry instead of waiting out the
lease, as controller-runtime's LeaderElectionReleaseOnCancel does."""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta
from kubernetes_asyncio.client.exceptions import ApiException

from epp.discovery.k8s.leader import LeaseTiming
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)

NOT_FOUND = 404
_UNREACHABLE = (aiohttp.ClientError, OSError, TimeoutError)
T = TypeVar("T")


def default_identity() -> str:
    """controller-runtime's: the hostname (the pod name in a cluster) and a fresh UUID."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaderElector:
    """Campaigns for the Lease until stopped. `is_leader` is what readiness reads; `on_lost` is
    called once if leadership, once held, could not be renewed (GIE's EPP then exits)."""

    def __init__(
        self,
        api: ApiClient,
        name: str,
        namespace: str,
        identity: str | None = None,
        timing: LeaseTiming | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.identity = identity or default_identity()
        self.timing = timing or LeaseTiming()
        self.elected = asyncio.Event()
        self._leases = CoordinationV1Api(api)
        self._on_lost = on_lost
        self._leader = False
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._leader

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name=f"leader election {self.name}")
        self._task.add_done_callback(self._ended)
        log.info(
            "leader election: campaigning for Lease %s/%s as %s", self.namespace, self.name, self.identity
        )

    async def stop(self, release: bool = True) -> None:
        """Stop campaigning; the leader releases the Lease unless `release` is false (a crash)."""
        await cancel_and_wait(self._task)
        was_leader, self._leader = self._leader, False
        if was_leader and release:
            await self._release()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await self._acquire()
        self._leader = True
        self.elected.set()
        log.info(
            "leader election: %s is now the leader (Lease %s/%s)", self.identity, self.namespace, self.name
        )
        while True:
            await asyncio.sleep(self.timing.retry_period)
            deadline = loop.time() + self.timing.renew_deadline
            while not await self._renew_before(deadline):
                if loop.time() + self.timing.retry_period >= deadline:
                    self._leader = False
                    log.error(
                        "leader election lost: Lease %s/%s not renewed within %.0fs",
                        self.namespace,
                        self.name,
                        self.timing.renew_deadline,
                    )
                    if self._on_lost is not None:
                        self._on_lost()
                    return
                await asyncio.sleep(self.timing.retry_period)

    async def _acquire(self) -> None:
        """Retry every retry period until this candidate holds the Lease."""
        while True:
            if await self._try_acquire_or_renew():
                return
            await asyncio.sleep(self.timing.retry_period)

    async def _renew_before(self, deadline: float) -> bool:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                return await self._try_acquire_or_renew()
        except TimeoutError:
            return False

    async def _try_acquire_or_renew(self) -> bool:
        """One step of client-go's tryAcquireOrRenew: True if this candidate holds the Lease now."""
        loop = asyncio.get_running_loop()
        now = _now()
        try:
            lease = await self._bounded(self._leases.read_namespaced_lease(self.name, self.namespace))
        except ApiException as exc:
            if exc.status != NOT_FOUND:
                log.warning(
                    "leader election: reading Lease %s/%s failed: %s", self.namespace, self.name, exc.reason
                )
                return False
            return await self._create(now)
        except _UNREACHABLE as exc:
            self._log_unreachable(exc)
            return False
        spec: V1LeaseSpec = lease.spec or V1LeaseSpec()
        record = (
            spec.holder_identity,
            spec.lease_duration_seconds,
            spec.acquire_time,
            spec.renew_time,
            spec.lease_transitions,
        )
        if record != self._observed:
            self._observed, self._observed_at = record, loop.time()
        holder = spec.holder_identity or ""
        duration = spec.lease_duration_seconds or self.timing.lease_duration
        if holder and holder != self.identity and self._observed_at + duration > loop.time():
            return False  # held by another, and renewed within its lease duration as far as we saw
        transitions = spec.lease_transitions or 0
        lease.spec = V1LeaseSpec(
            holder_identity=self.identity,
            lease_duration_seconds=self.timing.lease_duration,
            acquire_time=spec.acquire_time if holder == self.identity else now,
            renew_time=now,
            lease_transitions=transitions if holder == self.identity else transitions + 1,
        )
        if not await self._replace(lease):
            return False
        if holder != self.identity:
            log.info("leader election: took over Lease %s/%s from %r", self.namespace, self.name, holder)
        return True

    async def _create(self, now: datetime.datetime) -> bool:
        lease = V1Lease(
            metadata=V1ObjectMeta(name=self.name, namespace=self.namespace),
            spec=V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=self.timing.lease_duration,
                acquire_time=now,
                renew_time=now,
                lease_transitions=0,
            ),
        )
        return await self._write(
            "creating", logging.INFO, self._leases.create_namespaced_lease(self.namespace, lease)
        )

    async def _replace(self, lease: V1Lease) -> bool:
        """Write back with the resourceVersion read: 409 if anyone wrote in between."""
        replace = self._leases.replace_namespaced_lease(self.name, self.namespace, lease)
        return await self._write("updating", logging.DEBUG, replace)

    async def _write(self, verb: str, level: int, write: Awaitable[V1Lease]) -> bool:
        """Await `write` (a create or a replace) and remember the Lease it stored; False if the
        API server refused it (logged at `level`: a lost race is routine) or was unreachable."""
        try:
            written = await self._bounded(write)
        except ApiException as exc:
            log.log(
                level,
                "leader election: %s Lease %s/%s failed: %s",
                verb,
                self.namespace,
                self.name,
                exc.reason,
            )
            return False
        except _UNREACHABLE as exc:
            self._log_unreachable(exc)
            return False
        self._remember(written)
        return True

    async def _bounded(self, request: Awaitable[T]) -> T:
        """One API request, given up after the timing's request_timeout (client-go's)."""
        async with asyncio.timeout(self.timing.request_timeout):
            return await request

    def _log_unreachable(self, exc: BaseException) -> None:
        log.warning("leader election: API server unreachable: %s", self._reason(exc))

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.timing.request_timeout:g}s"
        return str(exc) or type(exc).__name__

    def _remember(self, lease: V1Lease) -> None:
        spec = lease.spec
        self._observed = (
            spec.holder_identity,
            spec.lease_duration_seconds,
            spec.acquire_time,
            spec.renew_time,
            spec.lease_transitions,
        )
        self._observed_at = asyncio.get_running_loop().time()

    async def _release(self) -> None:
        """Empty the holder (client-go's release), so a standby need not wait out the lease."""
        try:
            lease = await self._bounded(self._leases.read_namespaced_lease(self.name, self.namespace))
            spec = lease.spec or V1LeaseSpec()
            if spec.holder_identity != self.identity:
                return
            now = _now()
            lease.spec = V1LeaseSpec(
                holder_identity="",
                lease_duration_seconds=1,
                acquire_time=now,
                renew_time=now,
                lease_transitions=spec.lease_transitions,
            )
            await self._bounded(self._leases.replace_namespaced_lease(self.name, self.namespace, lease))
            log.info("leader election: released Lease %s/%s", self.namespace, self.name)
        except (ApiException, *_UNREACHABLE) as exc:
            name, reason = f"{self.namespace}/{self.name}", self._reason(exc)
            log.warning("leader election: releasing Lease %s failed: %s", name, reason)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("leader election failed", exc_info=task.exception())
            self._leader = False
            if self._on_lost is not None:
                self._on_lost()

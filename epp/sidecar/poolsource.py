"""The SSRF allowlist from an InferencePool, watched through the Kubernetes API as the EPP watches
it. Its own module so that a sidecar without `--inference-pool` never imports the Kubernetes
client (a third of a CPU second at every start)."""

from __future__ import annotations

import logging
from pathlib import Path

from epp.discovery.k8s.model import PoolRef
from epp.discovery.k8s.poolwatch import PoolEndpointsWatch
from epp.discovery.k8s.reflector import WatchTiming
from epp.sidecar.allowlist import AllowList

log = logging.getLogger(__name__)

# How long a prefill target missing from the allowlist waits for the watch to report it: the EPP
# may pick a pod the moment it turns Ready, a watch event before this sidecar hears of it.
WATCH_CATCH_UP = 0.5


class PoolSource:
    """The Ready pods of an InferencePool, `ip:port` for each active target port (the endpoints
    the EPP picks prefillers from), followed through the Kubernetes API as the EPP follows its
    pool. `start` waits up to `sync_timeout` for the first list, then raises TimeoutError (no
    CRD, RBAC refusing the list): serving before it would refuse every prefill. A pool that does
    not exist, or is deleted later, allows nothing until it exists again. A target not in the
    list waits up to WATCH_CATCH_UP for the watch before it is refused."""

    def __init__(
        self,
        ref: PoolRef,
        kubeconfig: Path | None = None,
        timing: WatchTiming | None = None,
        sync_timeout: float = 30.0,
    ) -> None:
        self.allowlist = AllowList(catch_up=WATCH_CATCH_UP)
        self._watch = PoolEndpointsWatch(ref, self._changed, kubeconfig, timing)
        self._sync_timeout = sync_timeout

    async def start(self) -> None:
        await self._watch.start(self._sync_timeout)

    async def stop(self) -> None:
        await self._watch.stop()

    def _changed(self, hostports: set[str]) -> None:
        self.allowlist.replace(hostports)
        log.info("SSRF allowlist from InferencePool %s: %d prefill targets", self._watch.ref, len(hostports))
        log.debug("SSRF allowlist: %s", sorted(hostports))

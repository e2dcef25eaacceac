"""`gie-approx-prefix-cache-producer`: the approximate prefix index with the lifecycle upstream's
has (GIE v1.4's prefix plugin, llm-d router main's `approx-prefix-cache-producer`): entries are
keyed by the pod's name and stay when the pod leaves the pool; a sweep every two minutes
(`podActiveCheckInterval`) drops the pods then absent. A pod that restarts under the same name
between two sweeps is believed to hold what it held before, though its cache is empty.

Ours (`approx-prefix-cache-producer`) forgets a pod the moment it leaves the pool; this is the
benchmark's model of upstream, so churn workloads compare against what GIE would actually do."""

from __future__ import annotations

from collections.abc import Sequence

from epp.datastore import Endpoint
from epp.framework import PluginContext, register
from epp.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.requests import InferenceRequest
from epp.scheduling.prefix.params import PrefixIndexParams

SWEEP_INTERVAL = 120.0  # seconds: upstream's podActiveCheckInterval


@register
class GieApproxPrefixCacheProducer(ApproxPrefixCacheProducer):
    type_name = "gie-approx-prefix-cache-producer"

    def __init__(self, name: str, params: PrefixIndexParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self._clock = context.clock
        self._next_sweep = context.clock() + SWEEP_INTERVAL
        self._departed: dict[str, Endpoint] = {}  # pod name -> the endpoint whose entries remain

    def prepare(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> None:
        if self._departed:
            self._sweep()
            for endpoint in candidates:
                gone = self._departed.pop(endpoint.name, None)
                if gone is not None:  # back under the same name: its old entries are its own
                    self.index.rekey(gone, endpoint)
        super().prepare(request, candidates)

    def _sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        while self._next_sweep <= now:
            self._next_sweep += SWEEP_INTERVAL
        for endpoint in self._departed.values():
            self.index.remove_endpoint(endpoint)
        self._departed.clear()

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self._departed[endpoint.name] = endpoint

"""`aibrix-prefix-cache-picker`: AIBrix's gateway routing strategy `prefix-cache`, re-implemented as
a picker so the benchmark can run it as a baseline inside this EPP (see docs/benchmarks.md, peers.md).

Follows vllm-project/aibrix v0.7.0 with the settings its shipped manifests give
(`AIBRIX_PREFIX_CACHE_BLOCK_SIZE` 128, `..._POD_RUNNING_REQUEST_IMBALANCE_ABS_COUNT` 16,
`..._STANDARD_DEVIATION_FACTOR` 2; the code defaults are 4 / 8 / 1) and the `character`
tokenizer, so a block is 128 bytes of prompt text:

1. Running requests are the router's own counts per pod. If max - min exceeds `absCount`, only the
   least-loaded pods stay candidates (prefix matching still runs among them).
2. Each candidate's match is the share (integer percent) of the prompt's full blocks it holds in
   order from the first, per an index of what was routed where (chained xxhash64 blocks; 200,000
   blocks at most, entries idle for 20 minutes dropped).
3. Matched pods are shuffled, then sorted by match descending and running requests ascending; the
   first whose running requests are at most mean + factor x standard deviation (over all ready
   pods) wins.
4. Otherwise the pod with the fewest running requests (ties at random).
5. The chosen pod is recorded as holding every block of the prompt.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict
from collections.abc import Sequence

from pydantic import Field

from epp.datalayer import EndpointObserver
from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requestcontrol import PreRequest
from epp.requests import InferenceRequest
from epp.scheduling.framework import Picker
from epp.scheduling.prefix import block_hashes, leading_matches, model_seed, prompt_bytes
from epp.scheduling.types import SchedulingResult


class AIBrixPrefixCacheParams(PluginParams):
    block_size: int = Field(default=128, gt=0, description="bytes per block (character tokenizer)")
    abs_count: int = Field(default=16, ge=0)
    standard_deviation_factor: float = Field(default=2.0, ge=0.0)
    max_blocks: int = Field(default=200_000, gt=0)
    eviction_idle_secs: float = Field(default=1200.0, gt=0.0)


class BlockIndex:
    """Block hash -> pod -> last time routed there, least recently touched blocks first."""

    def __init__(self, max_blocks: int, idle_secs: float) -> None:
        self.max_blocks = max_blocks
        self.idle_secs = idle_secs
        self._blocks: OrderedDict[int, dict[str, float]] = OrderedDict()

    def match(self, hashes: Sequence[int], pods: set[str], now: float) -> dict[str, int]:
        """Percent of `hashes` each pod holds consecutively from the first block."""
        oldest = now - self.idle_secs

        def fresh_holders(block: int) -> list[str]:
            return [pod for pod, routed in self._blocks.get(block, {}).items() if routed > oldest]

        held = leading_matches(hashes, fresh_holders, pods)
        return {pod: blocks * 100 // len(hashes) for pod, blocks in held.items()}

    def add(self, hashes: Sequence[int], pod: str, now: float) -> None:
        blocks = self._blocks
        for block in hashes:
            holders = blocks.get(block)
            if holders is None:
                blocks[block] = {pod: now}
            else:
                holders[pod] = now
                blocks.move_to_end(block)
        while len(blocks) > self.max_blocks:
            blocks.popitem(last=False)

    def remove_pod(self, pod: str) -> None:
        for holders in self._blocks.values():
            holders.pop(pod, None)


@register
class AIBrixPrefixCachePicker(Plugin, Picker, PreRequest, EndpointObserver):
    type_name = "aibrix-prefix-cache-picker"
    Params = AIBrixPrefixCacheParams

    def __init__(self, name: str, params: AIBrixPrefixCacheParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.index = BlockIndex(params.max_blocks, params.eviction_idle_secs)
        self._clock = context.clock
        self._rng = context.rng
        self._hashes_key = f"{name}/hashes"

    def prompt_hashes(self, request: InferenceRequest) -> list[int]:
        """Chained hashes of the prompt's FULL blocks (AIBrix ignores a trailing partial block)."""
        data = prompt_bytes(request)
        size = self.params.block_size
        seed = model_seed(request.target_model)
        return block_hashes(data[: len(data) - len(data) % size], seed, size, 0)

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        hashes = self.prompt_hashes(request)
        request.attributes[self._hashes_key] = hashes
        running = {e.name: e.inflight_requests for e in candidates}
        low = min(running.values())
        eligible = candidates
        if max(running.values()) - low > self.params.abs_count:
            eligible = [e for e in candidates if running[e.name] == low]
        matched = self.index.match(hashes, {e.name for e in eligible}, self._clock()) if hashes else {}
        if matched:
            loads = list(running.values())
            limit = statistics.fmean(loads) + self.params.standard_deviation_factor * statistics.pstdev(loads)
            pods = [e for e in eligible if e.name in matched]
            self._rng.shuffle(pods)
            pods.sort(key=lambda e: (-matched[e.name], running[e.name]))
            for pod in pods:
                if running[pod.name] <= limit:
                    return [pod]
        least = [e for e in candidates if running[e.name] == low]
        return [self._rng.choice(least)]

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        hashes = request.attributes.pop(self._hashes_key, None)
        if hashes and result.targets:
            self.index.add(hashes, result.targets[0].name, self._clock())

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.index.remove_pod(endpoint.name)

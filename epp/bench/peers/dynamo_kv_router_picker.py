"""`dynamo-kv-router-picker`: NVIDIA Dynamo's KV router cost, re-implemented as a picker so the
benchmark can run it as a baseline inside this EPP (see docs/benchmarks.md, peers.md).

Follows the weight form of Dynamo v0.4-v0.8 (`lib/kv-router/src/scheduling/selector.rs`) with
its approximate indexer (`--no-kv-events`), the mode available to a router that gets no KV events:

    cost = overlap_score_weight * prefill_blocks + decode_blocks          (lowest wins)

- prefill_blocks: (prompt tokens the worker still has to prefill for its active requests + this
  request's tokens not covered by its overlap) / block size;
- decode_blocks: the worker's distinct active KV blocks + this request's blocks not among them;
- overlap: leading prompt blocks the indexer believes the worker holds. The approximate indexer
  records every prompt's blocks under the worker it was routed to for `approxTtlSecs` (120 s).
- temperature 0 (default): lowest cost; ties go to the worker with the smallest indexer tree, then
  at random. Above 0: costs normalised by (max - min), negated, divided by the temperature and
  softmax-sampled.

Block size is the worker's own (`cache_config_info`), as Dynamo takes it from worker registration,
unless `kvCacheBlockSize` overrides it. Blocks are cut from the prompt text at 4 characters per token,
as this EPP's approximate prefix index cuts them (Dynamo hashes real token ids).

Deviation: Dynamo stops counting a request's prefill tokens at its first output token. This EPP's
plugins see response headers and the response end, not the first token, and a streaming server
sends headers before prefill starts; so prefill tokens stay charged until the response ends.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence

from pydantic import Field

from epp.datalayer import EndpointObserver
from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requestcontrol import PreRequest, ResponseComplete
from epp.requests import InferenceRequest, Usage
from epp.scheduling.framework import Picker
from epp.scheduling.prefix import block_hashes, leading_matches, model_seed, prompt_bytes
from epp.scheduling.prefix.hashing import block_bytes
from epp.scheduling.types import SchedulingResult

DEFAULT_BLOCK_SIZE = 16


class DynamoKvParams(PluginParams):
    overlap_score_weight: float = Field(default=1.0, ge=0.0)
    router_temperature: float = Field(default=0.0, ge=0.0)
    kv_cache_block_size: int = Field(default=0, ge=0, description="0: the worker's own block size")
    approx_ttl_secs: float = Field(default=120.0, gt=0.0)


class _Routed:
    """What one routed request charges its worker until the response ends."""

    __slots__ = ("hashes", "prefill_tokens", "worker")

    def __init__(self, worker: str, hashes: list[int], prefill_tokens: int) -> None:
        self.worker = worker
        self.hashes = hashes
        self.prefill_tokens = prefill_tokens


@register
class DynamoKvRouterPicker(Plugin, Picker, PreRequest, ResponseComplete, EndpointObserver):
    type_name = "dynamo-kv-router-picker"
    Params = DynamoKvParams

    def __init__(self, name: str, params: DynamoKvParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self._clock = context.clock
        self._rng = context.rng
        self._held: dict[int, dict[str, float]] = {}  # block -> worker -> expiry
        self._expiries: deque[tuple[float, str, int]] = deque()  # in expiry order (constant TTL)
        self.tree_size: Counter[str] = Counter()  # indexed blocks per worker
        self.active_blocks: dict[str, Counter[int]] = {}
        self.prefill_tokens: Counter[str] = Counter()
        self._pending_key = f"{name}/pending"
        self._routed_key = f"{name}/routed"

    def block_size(self, candidates: Sequence[Endpoint]) -> int:
        reported = candidates[0].metrics.cache_block_size if candidates else 0
        return self.params.kv_cache_block_size or reported or DEFAULT_BLOCK_SIZE

    def overlaps(self, hashes: Sequence[int], names: set[str]) -> dict[str, int]:
        """Leading blocks each worker holds per the indexer (stops once no candidate holds more)."""
        return leading_matches(hashes, lambda block: self._held.get(block, ()), names)

    def costs(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        """Cost per candidate (remembering what pre_request needs to charge the chosen one)."""
        self._expire(self._clock())
        size = self.block_size(candidates)
        seed = model_seed(request.target_model, request.cache_salt)
        hashes = block_hashes(prompt_bytes(request), seed, block_bytes(size), 0)
        overlap = self.overlaps(hashes, {e.name for e in candidates})
        isl = request.prompt_tokens
        weight = self.params.overlap_score_weight
        costs = []
        for endpoint in candidates:
            name = endpoint.name
            new_tokens = max(isl - overlap.get(name, 0) * size, 0)
            active = self.active_blocks.get(name) or Counter()
            decode = len(active) + sum(1 for block in hashes if block not in active)
            costs.append(weight * (self.prefill_tokens[name] + new_tokens) / size + decode)
        request.attributes[self._pending_key] = (hashes, overlap, size)
        return costs

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        costs = self.costs(request, candidates)
        temperature = self.params.router_temperature
        if temperature > 0:
            low, high = min(costs), max(costs)
            span = high - low
            logits = [-(c - low) / span / temperature if span else 0.0 for c in costs]
            top = max(logits)
            weights = [math.exp(value - top) for value in logits]
            return [self._rng.choices(list(candidates), weights)[0]]
        best = min(costs)
        tied = [e for e, c in zip(candidates, costs, strict=True) if c == best]
        smallest = min(self.tree_size[e.name] for e in tied)
        tied = [e for e in tied if self.tree_size[e.name] == smallest]
        return [tied[0] if len(tied) == 1 else self._rng.choice(tied)]

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        pending = request.attributes.pop(self._pending_key, None)
        if pending is None or not result.targets:
            return
        hashes, overlap, size = pending
        worker = result.targets[0].name
        expiry = self._clock() + self.params.approx_ttl_secs
        for block in hashes:
            holders = self._held.setdefault(block, {})
            if worker not in holders:
                self.tree_size[worker] += 1
            holders[worker] = expiry
            self._expiries.append((expiry, worker, block))
        self.active_blocks.setdefault(worker, Counter()).update(hashes)
        new_tokens = max(request.prompt_tokens - overlap.get(worker, 0) * size, 0)
        self.prefill_tokens[worker] += new_tokens
        request.attributes[self._routed_key] = _Routed(worker, hashes, new_tokens)

    def response_complete(
        self, request: InferenceRequest, result: SchedulingResult, usage: Usage | None
    ) -> None:
        routed = request.attributes.pop(self._routed_key, None)
        if not isinstance(routed, _Routed):
            return
        self.prefill_tokens[routed.worker] -= routed.prefill_tokens
        active = self.active_blocks.get(routed.worker)
        if active is not None:
            active.subtract(routed.hashes)
            for block in set(routed.hashes):
                if active[block] <= 0:
                    del active[block]

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        name = endpoint.name
        for holders in self._held.values():
            holders.pop(name, None)
        self.tree_size.pop(name, None)
        self.active_blocks.pop(name, None)
        self.prefill_tokens.pop(name, None)

    def _expire(self, now: float) -> None:
        expiries, held = self._expiries, self._held
        while expiries and expiries[0][0] <= now:
            expiry, worker, block = expiries.popleft()
            holders = held.get(block)
            if holders is not None and holders.get(worker) == expiry:  # not refreshed since
                del holders[worker]
                self.tree_size[worker] -= 1
                if not holders:
                    del held[block]

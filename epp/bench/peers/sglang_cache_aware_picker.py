"""`sglang-cache-aware-picker`: SGLang's router policy `cache_aware`, re-implemented as a picker so
the benchmark can run it as a baseline inside this EPP (see docs/benchmarks.md, peers.md).

Follows sgl-model-gateway (since Dec 2025; CLI defaults `cache_threshold` 0.3,
`balance_abs_threshold` 64, `balance_rel_threshold` 1.5, `eviction_interval_secs` 120,
`max_tree_size` 2^26). Per request:

1. Load is the router's own count of requests in flight per worker. If BOTH `max - min > abs` and
   `max > min * rel`, the least-loaded worker takes it.
2. Otherwise the prompt text is matched against an approximate radix tree of characters that
   records which worker each earlier prompt went to; if the matched share of the characters is
   strictly above `cache_threshold`, a worker holding that longest prefix takes it.
3. Otherwise the least-loaded worker (`noMatch: least-load`, the current gateway) or the worker
   with the smallest tree (`noMatch: smallest-tree`, the older sgl-router).
4. The text is inserted under the chosen worker. Every `eviction_interval_secs` each worker's
   least recently used leaves are dropped until it holds at most `max_tree_size` characters.

"Least loaded" takes the first such worker in pool order, as the gateway's `min_by_key` does. The
text is what this EPP hashes for prefix matching (completions: the prompt; chat: the messages as
JSON), where SGLang uses the message text; both are prefix-stable. Among several workers holding
the longest match, SGLang takes whichever its concurrent map yields first; here the most recent.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from epp.datalayer import EndpointObserver
from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.requestcontrol import PreRequest
from epp.requests import InferenceRequest
from epp.scheduling.framework import Picker
from epp.scheduling.prefix import prompt_bytes
from epp.scheduling.types import SchedulingResult


class CacheAwareParams(PluginParams):
    cache_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    balance_abs_threshold: int = Field(default=64, ge=0)
    balance_rel_threshold: float = Field(default=1.5, ge=1.0)
    eviction_interval_secs: float = Field(default=120.0, gt=0.0)
    max_tree_size: int = Field(default=2**26, gt=0)
    no_match: Literal["least-load", "smallest-tree"] = "least-load"


class _Node:
    __slots__ = ("children", "parent", "tenants", "text")

    def __init__(self, text: str, parent: _Node | None, tenants: dict[str, float] | None = None) -> None:
        self.text = text
        self.parent = parent
        self.children: dict[str, _Node] = {}
        self.tenants: dict[str, float] = tenants if tenants is not None else {}


def _common_length(edge: str, text: str, start: int) -> int:
    """Length of the common prefix of `edge` and `text[start:]`, by string comparisons in C."""
    limit = min(len(edge), len(text) - start)
    if text.startswith(edge[:limit], start):
        return limit
    low, high = 0, limit - 1  # the answer is below `limit`
    while low < high:
        middle = (low + high + 1) // 2
        if text.startswith(edge[:middle], start):
            low = middle
        else:
            high = middle - 1
    return low


def _leaf_of(node: _Node, tenant: str) -> bool:
    """`tenant` holds this node but none of its children: its path ends here."""
    return tenant in node.tenants and not any(tenant in c.tenants for c in node.children.values())


class CharRadixTree:
    """Characters of every prompt routed to each tenant (worker), shared where prompts share a
    prefix. A tenant recorded on a node holds the whole path from the root to that node's end."""

    def __init__(self) -> None:
        self.root = _Node("", None)
        self.chars: dict[str, int] = {}  # characters held per tenant

    def match(self, text: str) -> tuple[int, dict[str, float]]:
        """Matched characters of the longest prefix anyone holds, and who holds it (tenant ->
        last access)."""
        node, position, holders = self.root, 0, {}
        while position < len(text):
            child = node.children.get(text[position])
            if child is None:
                break
            matched = _common_length(child.text, text, position)
            position += matched
            holders = child.tenants
            if matched < len(child.text):
                break
            node = child
        return position, holders

    def insert(self, text: str, tenant: str, now: float) -> None:
        node, position = self.root, 0
        while position < len(text):
            child = node.children.get(text[position])
            if child is None:
                child = _Node(text[position:], node)
                node.children[text[position]] = child
            else:
                matched = _common_length(child.text, text, position)
                if matched < len(child.text):
                    child = self._split(child, matched)
            if tenant not in child.tenants:
                self.chars[tenant] = self.chars.get(tenant, 0) + len(child.text)
            child.tenants[tenant] = now
            position += len(child.text)
            node = child

    def _split(self, child: _Node, at: int) -> _Node:
        parent = child.parent
        assert parent is not None
        middle = _Node(child.text[:at], parent, dict(child.tenants))
        parent.children[child.text[0]] = middle
        child.text = child.text[at:]
        child.parent = middle
        middle.children[child.text[0]] = child
        return middle

    def evict(self, max_chars: int) -> None:
        """Drop each over-size tenant's least recently used leaves until it fits."""
        over = {t for t, n in self.chars.items() if n > max_chars}
        if not over:
            return
        leaves: list[tuple[float, int, str, _Node]] = []
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            leaves.extend(
                (node.tenants[t], id(node), t, node)
                for t in over.intersection(node.tenants)
                if _leaf_of(node, t)
            )
        heapq.heapify(leaves)
        while leaves:
            _, _, tenant, node = heapq.heappop(leaves)
            if self.chars[tenant] <= max_chars:
                continue
            del node.tenants[tenant]
            self.chars[tenant] -= len(node.text)
            parent = node.parent
            if not node.tenants and not node.children and parent is not None:
                del parent.children[node.text[0]]
            if parent is not None and parent is not self.root and _leaf_of(parent, tenant):
                heapq.heappush(leaves, (parent.tenants[tenant], id(parent), tenant, parent))

    def remove_tenant(self, tenant: str) -> None:
        stack = [self.root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            node.tenants.pop(tenant, None)
        self.chars.pop(tenant, None)


@register
class SGLangCacheAwarePicker(Plugin, Picker, PreRequest, EndpointObserver):
    type_name = "sglang-cache-aware-picker"
    Params = CacheAwareParams

    def __init__(self, name: str, params: CacheAwareParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self.tree = CharRadixTree()
        self._clock = context.clock
        self._next_eviction = self._clock() + params.eviction_interval_secs
        self._text_key = f"{name}/text"

    def pick(
        self, request: InferenceRequest, candidates: Sequence[Endpoint], scores: Sequence[float]
    ) -> list[Endpoint]:
        now = self._clock()
        if now >= self._next_eviction:
            self.tree.evict(self.params.max_tree_size)
            self._next_eviction = now + self.params.eviction_interval_secs
        text = prompt_bytes(request).decode(errors="replace")
        request.attributes[self._text_key] = text
        loads = [e.inflight_requests for e in candidates]
        least = candidates[loads.index(min(loads))]
        high, low = max(loads), min(loads)
        p = self.params
        if high - low > p.balance_abs_threshold and high > low * p.balance_rel_threshold:
            return [least]
        matched, holders = self.tree.match(text)
        if text and matched / len(text) > p.cache_threshold:
            names = {e.name: e for e in candidates}
            held = [(last, tenant) for tenant, last in holders.items() if tenant in names]
            if held:
                return [names[max(held)[1]]]
        if p.no_match == "smallest-tree":
            chars = self.tree.chars
            return [min(candidates, key=lambda e: chars.get(e.name, 0))]
        return [least]

    def pre_request(self, request: InferenceRequest, result: SchedulingResult) -> None:
        text = request.attributes.pop(self._text_key, None)
        if text and result.targets:
            self.tree.insert(text, result.targets[0].name, self._clock())

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        self.tree.remove_tenant(endpoint.name)

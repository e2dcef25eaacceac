"""`kthena-kvcache-aware-scorer`: Kthena router's `kvcache-aware` score plugin (volcano-sh/kthena
v1.0), re-implemented so the benchmark can run Kthena's policy inside this EPP (docs/benchmarks.md).

Kthena tokenizes the prompt with the engine's tokenizer, cuts the first `maxBlocksToMatch` (128)
blocks of `blockSizeToHash` (16) tokens, and looks up in Redis which pods hold each block; Redis
is filled from the engines' KV events. A pod scores the share of those blocks it holds
consecutively from the first, truncated to whole percent; pods without the first block score 0.

Here the index is filled straight from KV events: `apply_kv_events` (the virtual-time benchmark
calls it with each simulated engine's events) or, with `zmqEndpoint` set, a background thread that
binds a ZMQ SUB socket there and reads vLLM's wire format, as llm-d's central mode does. The
engine's tokenizer and block hashing are the simulator's (`epp.sim`): this baseline only runs
against `epp sim` servers, which publish their cache with `--kv-events-endpoint`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
import zmq
from pydantic import Field

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, register
from epp.kvevents import AllBlocksCleared, BlockStored, KVEvent, decode_events, prompt_block_hashes
from epp.requests import ApiKind, InferenceRequest
from epp.scheduling.framework import Scorer
from epp.scheduling.prefix import leading_matches
from epp.sim.openai_api import ApiError, parse_chat, parse_completion

log = logging.getLogger(__name__)


class KVCacheAwareParams(PluginParams):
    block_size_to_hash: int = Field(default=16, gt=0)
    max_blocks_to_match: int = Field(default=128, gt=0)
    zmq_endpoint: str = Field(default="", description="bind a SUB socket here for engines' KV events")


@register
class KthenaKVCacheAwareScorer(Plugin, Scorer):
    type_name = "kthena-kvcache-aware-scorer"
    Params = KVCacheAwareParams

    def __init__(self, name: str, params: KVCacheAwareParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self._holders: dict[int, set[str]] = {}  # engine block hash -> pods (host:port)
        self._held: dict[str, set[int]] = {}
        self._lock = threading.Lock()
        if params.zmq_endpoint:
            threading.Thread(target=self._subscribe, name=f"{name}-kv-events", daemon=True).start()

    def apply_kv_events(self, pod: str, events: Iterable[KVEvent], model: str = "") -> None:
        """Record what engine `pod` (its host:port) stored, evicted or cleared."""
        with self._lock:
            held = self._held.setdefault(pod, set())
            for event in events:
                if isinstance(event, BlockStored):
                    held.update(event.block_hashes)
                    for block in event.block_hashes:
                        self._holders.setdefault(block, set()).add(pod)
                    continue
                blocks = list(held) if isinstance(event, AllBlocksCleared) else event.block_hashes
                for block in blocks:
                    held.discard(block)
                    owners = self._holders.get(block)
                    if owners is not None:
                        owners.discard(pod)
                        if not owners:
                            del self._holders[block]

    def block_hashes(self, request: InferenceRequest) -> list[int]:
        """The engine's hashes of the prompt's first blocks (its tokenizer, its chained hashing)."""
        try:
            parse = parse_chat if request.api is ApiKind.CHAT else parse_completion
            token_ids = parse(request.body).prompts[0]
        except (ApiError, IndexError, AttributeError):
            return []
        size = self.params.block_size_to_hash
        limit = size * self.params.max_blocks_to_match
        return prompt_block_hashes(token_ids[:limit], size, request.target_model)

    def score(self, request: InferenceRequest, candidates: Sequence[Endpoint]) -> list[float]:
        hashes = self.block_hashes(request)
        if not hashes:
            return [0.0] * len(candidates)
        with self._lock:
            names = [e.hostport for e in candidates]
            matched = leading_matches(hashes, lambda block: self._holders.get(block, ()), names)
        total = len(hashes)
        return [int(matched.get(e.hostport, 0) / total * 100) / 100 for e in candidates]

    def _subscribe(self) -> None:
        """Runs in its own thread (a blocking SUB socket): a malformed message is logged and
        skipped, never the end of the subscription."""
        socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
        socket.bind(self.params.zmq_endpoint)
        socket.setsockopt(zmq.SUBSCRIBE, b"kv@")
        while True:
            frames: list[Any] = socket.recv_multipart()
            try:
                pod = frames[0].decode().split("@")[1]  # kv@<host>:<port>@<model>
                events = decode_events(frames[-1])
            except (IndexError, UnicodeDecodeError, ValueError, TypeError, msgpack.UnpackException):
                log.warning("%s: skipping a malformed KV-event message", self.name, exc_info=True)
                continue
            self.apply_kv_events(pod, events)

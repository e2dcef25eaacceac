"""The precise prefix cache shared by `precise-prefix-cache-producer` and its deprecated wrapper
`precise-prefix-cache-scorer`: llm-d's parameters, the KV-block index fed by the engines' KV
events, and the per-request `PrefixMatch` computed from the prompt's token ids."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry
from pydantic import Field, field_validator

from epp.datalayer.kvblocks import (
    HASH_CBOR_FNV,
    IndexOptions,
    KVBlockIndex,
    KVBlockIndexBase,
    KVIndexMetrics,
    TokenProcessor,
)
from epp.datalayer.redis_address import (
    DEFAULT_ADDRESS,
    DEFAULT_LOOKUP_TIMEOUT,
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    redis_url,
)
from epp.datalayer.tokenize import TokenizedPrompt
from epp.datastore import Datastore, Endpoint
from epp.datastore.columns import by_hostport
from epp.framework import ParameterUpgrade, PluginParams
from epp.kvevents import KVEvent
from epp.params.strict import StrictModel
from epp.params.values import Duration
from epp.requests import InferenceRequest
from epp.scheduling.prefix.match import PrefixMatch
from epp.scheduling.types import SchedulingResult

if TYPE_CHECKING:
    from epp.datalayer.kvblocks_redis import RedisKVBlockIndex
    from epp.datalayer.kvsubscriber import KVEventIngester, Subscriber

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 16


class TokenProcessorParams(StrictModel):
    block_size: int | None = Field(default=None, gt=0, description="deprecated name of blockSizeTokens")
    block_size_tokens: int = Field(default=0, ge=0)
    hash_seed: str = ""
    hash_algorithm: Literal["", "cbor-fnv", "xxh64"] = ""

    def tokens(self) -> int:
        return self.block_size_tokens or self.block_size or DEFAULT_BLOCK_SIZE


class InMemoryParams(StrictModel):
    size: int = Field(default=100_000_000, gt=0)
    pod_cache_size: int = Field(default=10, gt=0)


class RedisParams(StrictModel):
    """llm-d's `RedisIndexConfig` (`address`, `backendType`, `enableRDMA`), and ours: the key
    prefix, the keys' TTL, the lookup timeout and the holders kept per key."""

    address: str = DEFAULT_ADDRESS
    backend_type: Literal["", "redis", "valkey"] = ""
    enable_rdma: bool = Field(default=False, alias="enableRDMA")
    key_prefix: str = Field(default=DEFAULT_PREFIX, description="ours")
    ttl: Duration = Field(default=DEFAULT_TTL, ge=0, description="ours: 0 keeps keys until removed")
    lookup_timeout: Duration = Field(default=DEFAULT_LOOKUP_TIMEOUT, gt=0, description="ours")
    pod_cache_size: int = Field(default=10, gt=0, description="ours, as inMemoryConfig's")

    @field_validator("address")
    @classmethod
    def _url(cls, value: str) -> str:
        redis_url(value)
        return value


class KVBlockIndexParams(StrictModel):
    in_memory_config: InMemoryParams | None = None
    redis_config: RedisParams | None = None
    valkey_config: RedisParams | None = None
    cost_aware_memory_config: dict[str, Any] | None = None
    enable_metrics: bool = False
    metrics_logging_interval: int | str = 0
    max_prefix_blocks_to_match: int = Field(default=0, ge=0, description="llm-d <= v0.5")

    def shared(self) -> RedisParams | None:
        """The Redis (or Valkey) backend, in llm-d's order: cost-aware, Valkey, Redis, in memory."""
        if self.cost_aware_memory_config is not None:
            return None
        return self.valkey_config or self.redis_config


class BackendParams(StrictModel):
    name: str
    weight: float = Field(ge=0)


class IndexerParams(StrictModel):
    kv_block_index_config: KVBlockIndexParams = KVBlockIndexParams()
    kv_cache_backend_configs: list[BackendParams] | None = None
    tokenizers_pool_config: dict[str, Any] | None = None  # llm-d's deprecated in-process tokenizers
    prefix_store_config: dict[str, Any] | None = None  # llm-d <= v0.5: its cache of tokenized prompts
    token_processor_config: TokenProcessorParams | None = None  # llm-d <= v0.3 put it here


class PodDiscoveryParams(StrictModel):
    pod_label_selector: str = "llm-d.ai/inference-serving=true"
    pod_namespace: str = ""
    socket_port: int = Field(default=5557, gt=0, lt=65536)
    replay_socket_port: int = 0


class KVEventsParams(StrictModel):
    zmq_endpoint: str = ""
    topic_filter: str = "kv@"
    concurrency: int = Field(default=4, gt=0)
    engine_type: Literal["vllm", "sglang"] = "vllm"
    discover_pods: bool = True
    pod_discovery_config: PodDiscoveryParams = PodDiscoveryParams()


class PreciseParams(PluginParams):
    token_processor_config: TokenProcessorParams | None = None
    indexer_config: IndexerParams = IndexerParams()
    kv_events_config: KVEventsParams = KVEventsParams()
    speculative_indexing: bool = False
    speculative_ttl: Duration = Field(default=2.0, alias="speculativeTTL")
    speculative_until_confirmed: bool = Field(
        default=False,
        description="ours: an entry lasts until the endpoint's KV event stores its block, or until "
        "speculativeTTL after its request ends, instead of speculativeTTL after the pick",
    )

    def processor(self) -> TokenProcessorParams:
        return (
            self.token_processor_config
            or self.indexer_config.token_processor_config
            or TokenProcessorParams()
        )

    def warnings(self) -> list[str]:
        out = []
        index = self.indexer_config.kv_block_index_config
        if index.cost_aware_memory_config is not None:
            out.append("costAwareMemoryConfig: using the in-memory index (bounded by block count)")
        shared = index.shared()
        if shared is not None and shared.enable_rdma:
            out.append("enableRDMA: RDMA transport is not available (as in llm-d's client); using TCP")
        if self.indexer_config.tokenizers_pool_config is not None:
            out.append("tokenizersPoolConfig is ignored (as in llm-d): token ids come from token-producer")
        if self.indexer_config.prefix_store_config is not None:
            out.append("prefixStoreConfig (llm-d <= v0.5) is ignored: token ids come from token-producer")
        if self.kv_events_config.engine_type == "sglang":
            out.append("engineType sglang: SGLang's events are read as vLLM's (same wire format here)")
        if self.kv_events_config.pod_discovery_config.replay_socket_port:
            out.append("replaySocketPort: replay is not implemented; a sequence gap resynchronises the pod")
        return out


PRECISE_SCORER = "precise-prefix-cache-scorer"
# llm-d v0.2's KV-event defaults (kv-cache-manager v0.2): one socket bound for every engine to
# publish to; per-pod discovery came later.
CACHE_TRACKING_EVENTS = {"zmqEndpoint": "tcp://*:5557", "discoverPods": False}


def from_cache_tracking(raw: Mapping[str, Any]) -> ParameterUpgrade:
    """llm-d v0.2's `prefix-cache-scorer` with `mode: cache_tracking`: the KV-event prefix cache
    that llm-d v0.3 renamed `precise-prefix-cache-scorer`, with the same parameters (llm-d's own
    migration of these configs only renamed the type). Read as that type, with v0.2's defaults."""
    params = {key: value for key, value in raw.items() if key != "mode"}
    upgrade = ParameterUpgrade(params, read_as=PRECISE_SCORER)
    upgrade.warnings.append(
        f"mode cache_tracking (llm-d v0.2-v0.5) is deprecated: read as {PRECISE_SCORER}, the KV-event "
        "prefix cache it became; today's equivalent is token-producer, precise-prefix-cache-producer "
        "and prefix-cache-scorer with prefixMatchInfoProducerName. Token ids come from token-producer "
        "(give it vllm.url, a model server's render API), not from tokenizersPoolConfig"
    )
    events = params.get("kvEventsConfig")
    if events is None or isinstance(events, Mapping):
        params["kvEventsConfig"] = {**CACHE_TRACKING_EVENTS, **(events or {})}
        if "zmqEndpoint" not in (events or {}):
            upgrade.warnings.append(
                f"kvEventsConfig.zmqEndpoint not set: cache_tracking's default "
                f"{CACHE_TRACKING_EVENTS['zmqEndpoint']} is bound for the engines to publish to"
            )
    return upgrade


@dataclass(frozen=True, slots=True)
class Pinned:
    """A request's speculative entries under `speculativeUntilConfirmed`: its keys on its pods."""

    keys: Sequence[int]
    pods: Sequence[str]


class PrecisePrefixCache:
    """The index, its event subscribers and the per-request lookup."""

    def __init__(
        self,
        name: str,
        params: PreciseParams,
        metrics: KVIndexMetrics,
        clock: Callable[[], float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        """`registry` takes the Redis backend's metrics, when it is configured."""
        self.name = name
        self.clock = clock
        self.params = params
        self.metrics = metrics
        processor = params.processor()
        self.block_size = processor.tokens()
        index_config = params.indexer_config.kv_block_index_config
        memory = index_config.in_memory_config or InMemoryParams()
        backends = params.indexer_config.kv_cache_backend_configs
        weights = {b.name.lower(): b.weight for b in backends} if backends else {"gpu": 1.0, "cpu": 0.8}
        keyer = TokenProcessor(
            self.block_size, processor.hash_seed, processor.hash_algorithm or HASH_CBOR_FNV
        )
        shared = index_config.shared()
        self.index: KVBlockIndexBase
        self.shared_index: RedisKVBlockIndex | None = None
        options = IndexOptions(
            size=memory.size,
            pod_cache_size=(shared or memory).pod_cache_size,
            tier_weights=weights,
            metrics=metrics,
            confirmation_ends_speculation=params.speculative_until_confirmed,
        )
        if shared is None:
            self.index = KVBlockIndex(keyer, **options)
        else:  # redis-py is imported only when a config keeps the index there
            from epp.datalayer.kvblocks_redis import RedisIndexMetrics, RedisKVBlockIndex

            self.index = self.shared_index = RedisKVBlockIndex(
                keyer,
                shared.address,
                key_prefix=shared.key_prefix,
                ttl=shared.ttl,
                lookup_timeout=shared.lookup_timeout,
                redis_metrics=RedisIndexMetrics.for_registry(registry) if registry else None,
                **options,
            )
        self._lookup_key = f"{name}/shared-index-lookup"
        self.max_blocks = params.indexer_config.kv_block_index_config.max_prefix_blocks_to_match
        for warning in params.warnings():
            log.warning("%s: %s", name, warning)
        self._datastore: Datastore | None = None
        self._known: set[str] = set()
        self._ingester: KVEventIngester | None = None
        self._central: Subscriber | None = None
        self._per_pod: dict[str, Subscriber] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    # --- per request --------------------------------------------------------------------------

    def _keys(self, request: InferenceRequest, tokenized: object) -> list[int]:
        if not isinstance(tokenized, TokenizedPrompt):
            return []
        tokens = tokenized.token_ids
        if self.max_blocks:
            tokens = tokens[: self.max_blocks * self.block_size]
        features = [(f.offset, f.length, f.hash) for f in tokenized.mm_features]
        return self.index.keys_for(tokens, request.target_model, features, request.cache_salt or "")

    async def lookup(self, request: InferenceRequest, tokenized: object) -> None:
        """The shared (Redis) index is asked before scheduling, every pod's run at once; `match`
        keeps the candidates'. Nothing to do for the in-memory index."""
        index = self.shared_index
        if index is None:
            return
        keys = self._keys(request, tokenized)
        if not keys:
            return
        if self.params.speculative_indexing:
            index.expire(self.clock())
        request.attributes[self._lookup_key] = (keys, await index.lookup(keys))

    def match(
        self, request: InferenceRequest, tokenized: object, candidates: Sequence[Endpoint]
    ) -> PrefixMatch:
        """The prompt's keys and how many of them each candidate holds from the first. With the
        shared index unreachable (or not asked), no keys: the request is scored without it."""
        by_pod = by_hostport(candidates)
        if isinstance(self.index, KVBlockIndex):
            keys = self._keys(request, tokenized)
            if self.params.speculative_indexing:
                self.index.expire(self.clock())
            scores = self.index.longest_prefix(keys, by_pod) if keys else {}
        else:
            keys, found = request.attributes.get(self._lookup_key, ([], None))
            if found is None:
                return PrefixMatch([], {}, self.block_size)
            scores = found
        if not keys:
            return PrefixMatch([], {}, self.block_size)
        matched = {by_pod[pod]: int(score) for pod, score in scores.items() if score >= 1 and pod in by_pod}
        return PrefixMatch(keys, matched, self.block_size)

    def speculate(self, match: object, result: SchedulingResult) -> Pinned | None:
        """llm-d's speculativeIndexing: the chosen endpoints hold the prompt's blocks for
        `speculativeTTL`. With `speculativeUntilConfirmed` they hold them until their KV events
        store them or the request ends: the answer is what `release` must be given then."""
        if not self.params.speculative_indexing or not isinstance(match, PrefixMatch) or not match.hashes:
            return None
        pods = [endpoint.hostport for endpoint in result.cache_holders()]
        if self.params.speculative_until_confirmed:
            for pod in pods:
                self.index.pin_speculative(match.hashes, pod)
            return Pinned(match.hashes, pods)
        now = self.clock()
        for pod in pods:
            self.index.add_speculative(match.hashes, pod, now, self.params.speculative_ttl)
        return None

    def release(self, pinned: Pinned) -> None:
        """The request that pinned these entries ended (however it ended): what its endpoints'
        KV events have not confirmed by now lasts `speculativeTTL` more, for events on their way."""
        expiry = self.clock() + self.params.speculative_ttl
        for pod in pinned.pods:
            self.index.release_speculative(pinned.keys, pod, expiry)

    # --- events -------------------------------------------------------------------------------

    def apply_kv_events(self, pod: str, events: Iterable[KVEvent], model: str = "") -> None:
        self.index.apply(pod, model, events)

    def endpoint_removed(self, endpoint: Endpoint) -> None:
        pod = endpoint.hostport
        self._known.discard(pod)
        if self._ingester is not None:
            self._ingester.pod_removed(pod)
        else:
            self.index.clear_pod(pod)
        self.index.forget_speculative(pod)
        subscriber = self._per_pod.pop(pod, None)
        if subscriber is not None:
            task = asyncio.get_running_loop().create_task(subscriber.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    def _endpoint_added(self, endpoint: Endpoint) -> None:
        pod = endpoint.hostport
        self._known.add(pod)
        config = self.params.kv_events_config
        if config.zmq_endpoint or not config.discover_pods or pod in self._per_pod:
            return
        from epp.datalayer.kvsubscriber import Subscriber

        assert self._ingester is not None
        host = f"[{endpoint.address}]" if ":" in endpoint.address else endpoint.address
        subscriber = Subscriber(
            self._ingester,
            f"tcp://{host}:{config.pod_discovery_config.socket_port}",
            bind=False,
            topic_filter=config.topic_filter,
            pod_override=pod,
        )
        subscriber.start()
        self._per_pod[pod] = subscriber

    async def start(self, datastore: Datastore) -> None:
        """Central mode binds `zmqEndpoint`; otherwise (with discoverPods) one subscriber per
        pool endpoint connects to its publisher. pyzmq is imported only here."""
        from epp.datalayer.kvsubscriber import KVEventIngester, Subscriber

        self._datastore = datastore
        if self.shared_index is not None:
            await self.shared_index.start()
        self._ingester = KVEventIngester(self.index, self.metrics, self._known.__contains__)
        config = self.params.kv_events_config
        if config.zmq_endpoint:
            self._central = Subscriber(
                self._ingester, config.zmq_endpoint, bind=True, topic_filter=config.topic_filter
            )
            self._central.start()
            log.info("%s: reading KV events on %s", self.name, self._central.bound_endpoint)
        datastore.subscribe(on_added=self._endpoint_added)

    @property
    def events_endpoint(self) -> str:
        """The bound central endpoint (a port 0 resolved), "" when not in central mode."""
        return self._central.bound_endpoint if self._central is not None else ""

    async def stop(self) -> None:
        subscribers = [*self._per_pod.values(), *([self._central] if self._central else [])]
        self._per_pod.clear()
        self._central = None
        for subscriber in subscribers:
            await subscriber.stop()
        if self._stopping:
            await asyncio.gather(*self._stopping)
        if self.shared_index is not None:
            await self.shared_index.stop()

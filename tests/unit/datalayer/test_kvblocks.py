"""The precise KV-block index: llm-d's block keys, events applied in every block-size mapping,
bounded memory, longest-prefix lookups, and determinism across index instances."""

from __future__ import annotations

import gc
import struct
import tracemalloc
from collections.abc import Sequence

import msgpack
import pytest
import xxhash
from prometheus_client import CollectorRegistry

from epp.datalayer.kvblocks import (
    HASH_XXH64,
    MAX_ROOTS,
    KVBlockIndex,
    KVIndexMetrics,
    TokenProcessor,
    _cbor_tokens,
    _cbor_uint,
    fnv1a64,
)
from epp.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    decode_events,
    encode_batch,
    prompt_block_hashes,
)
from epp.sim.engine import Engine, Request
from epp.sim.profiles import TINY_TEST

M = "model"


def index(block: int = 16, **kw: object) -> KVBlockIndex:
    return KVBlockIndex(TokenProcessor(block), metrics=KVIndexMetrics(CollectorRegistry()), **kw)  # type: ignore[arg-type]


def stored(
    tokens: Sequence[int], engine_block: int, parent: int | None = None, model: str = M, **kw: object
) -> BlockStored:
    """What an engine with `engine_block`-token blocks announces for `tokens` (its own hashes)."""
    hashes = prompt_block_hashes(tokens, engine_block, f"engine:{model}:{parent}")
    return BlockStored(hashes, parent, list(tokens), None, **kw)  # type: ignore[arg-type]


def test_fnv_and_canonical_cbor_are_the_reference_ones() -> None:
    assert fnv1a64(b"") == 0xCBF29CE484222325
    assert fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert [_cbor_uint(v) for v in (0, 23, 24, 255, 256, 65536, 2**32)] == [
        b"\x00",
        b"\x17",
        b"\x18\x18",
        b"\x18\xff",
        b"\x19\x01\x00",
        b"\x1a\x00\x01\x00\x00",
        b"\x1b\x00\x00\x00\x01\x00\x00\x00\x00",
    ]
    assert b"\x83\x01" + _cbor_tokens([2, 3]) + b"\xf6" == bytes.fromhex("83018202 03f6".replace(" ", ""))


def test_cbor_fnv_chain_as_llm_d_computes_it() -> None:
    processor = TokenProcessor(2, hash_seed="42")
    seed = fnv1a64(b"42")
    root = fnv1a64(b"\x83" + _cbor_uint(seed) + b"\xf6" + b"\x65model")
    first = fnv1a64(b"\x83" + _cbor_uint(root) + b"\x82\x01\x02" + b"\xf6")
    second = fnv1a64(b"\x83" + _cbor_uint(first) + b"\x82\x03\x04" + b"\xf6")
    assert processor.keys([1, 2, 3, 4, 5], "model") == [first, second]  # the partial block has no key
    assert processor.keys([1, 2, 3, 4], "model") == [first, second]  # memoised: same answer


def test_xxh64_chain_as_llm_d_computes_it() -> None:
    processor = TokenProcessor(2, algorithm=HASH_XXH64)
    seed = xxhash.xxh64_intdigest(b"")
    root = xxhash.xxh64_intdigest(struct.pack("<QQ", seed, 5) + b"model")
    first = xxhash.xxh64_intdigest(struct.pack("<QII", root, 1, 2))
    assert processor.keys([1, 2], "model") == [first]


@pytest.mark.parametrize("engine_block", [16, 4, 64, 48])
def test_keys_do_not_depend_on_the_engine_block_size(engine_block: int) -> None:
    """1:1, many:1 and 1:many engine-to-EPP block mappings give the EPP's own keys."""
    idx = index(16)
    tokens = list(range(1000, 1000 + 192))
    # two events, the second chained on the first's last engine block
    split = 96
    first = stored(tokens[:split], engine_block)
    idx.apply("p", M, [first])
    second = BlockStored(
        prompt_block_hashes(tokens[split:], engine_block, "second"),
        first.block_hashes[-1],
        tokens[split:],
        None,
    )
    idx.apply("p", M, [second])
    keys = idx.keys_for(tokens, M)
    assert len(keys) == 12
    assert idx.longest_prefix(keys, {"p"}) == {"p": 12.0}


def test_removal_allblockscleared_and_unknown_parents() -> None:
    idx = index(16)
    metrics = idx.metrics
    assert metrics is not None
    tokens = list(range(64))
    event = stored(tokens, 16)
    idx.apply("p", M, [event])
    keys = idx.keys_for(tokens, M)
    idx.apply("p", M, [BlockRemoved(event.block_hashes[2:3])])
    assert idx.longest_prefix(keys, {"p"}) == {"p": 2.0}  # the run stops at the removed block
    idx.apply("p", M, [AllBlocksCleared()])
    assert idx.longest_prefix(keys, {"p"}) == {} and len(idx) == 0
    orphan = BlockStored([99], 12345, list(range(16)), None)
    idx.apply("p", M, [orphan])
    assert len(idx) == 0
    assert metrics.stores_skipped.labels("unknown", "unknown_parent")._value.get() == 1


def test_lookups_restrict_to_candidates_and_weigh_tiers() -> None:
    idx = index(16)
    tokens = list(range(48))
    idx.apply("gpu-pod", M, [stored(tokens, 16, medium="GPU")])
    idx.apply("cpu-pod", M, [stored(tokens, 16, medium="CPU")])
    idx.apply("short", M, [stored(tokens[:16], 16)])
    keys = idx.keys_for(tokens, M)
    assert idx.longest_prefix(keys, {"gpu-pod", "cpu-pod", "short"}) == pytest.approx(
        {"gpu-pod": 3.0, "cpu-pod": 2.4, "short": 1.0}
    )
    assert idx.longest_prefix(keys, {"short"}) == {"short": 1.0}
    assert idx.longest_prefix(keys, {"elsewhere"}) == {}


def test_lora_and_model_namespaces_are_apart() -> None:
    idx = index(16)
    tokens = list(range(32))
    event = stored(tokens, 16)
    event.lora_name = "adapter"
    idx.apply("p", M, [event])
    assert idx.longest_prefix(idx.keys_for(tokens, M), {"p"}) == {}
    assert idx.longest_prefix(idx.keys_for(tokens, "adapter"), {"p"}) == {"p": 2.0}


def test_memory_is_bounded() -> None:
    idx = index(16, size=10, pod_cache_size=2)
    for n in range(8):
        idx.apply("p", M, [stored(list(range(n * 1000, n * 1000 + 64)), 16)])
    assert len(idx) == 10
    assert idx.metrics is not None and idx.metrics.evictions._value.get() == 22
    shared = list(range(16))
    for pod in ("a", "b", "c"):
        idx.apply(pod, M, [stored(shared, 16)])
    (key,) = idx.keys_for(shared, M)
    assert set(idx.holders(key)) == {"b", "c"}


def test_non_prefix_cache_groups_are_skipped() -> None:
    idx = index(16)
    event = stored(list(range(32)), 16, group_idx=1, kv_cache_spec_kind="sliding_window")
    idx.apply("p", M, [event])
    assert len(idx) == 0


def engine_events(seed: int, engines: dict[str, Engine] | None = None) -> list[tuple[str, list[object]]]:
    """Real simulator engines under eviction pressure: (pod, events) in publication order."""
    out: list[tuple[str, list[object]]] = []
    engines = engines if engines is not None else {}
    engines |= {
        f"pod-{i}": Engine(TINY_TEST.with_overrides(num_gpu_blocks=24), M, record_kv_events=True)
        for i in range(2)
    }
    now = 0.0
    for n in range(12):
        pod = f"pod-{(n * 7 + seed) % 2}"
        engine = engines[pod]
        prompt = [1, 2, 3] * 30 + list(range(n * 100, n * 100 + 60 + n % 3 * 16))
        engine.add(Request(f"r{n}", prompt, 2, now))
        while engine.has_work():
            now = max(now, engine.step(now).end)
            out.append((pod, list(engine.drain_kv_events())))
    return out


def test_two_indexes_fed_the_same_events_agree() -> None:
    first, second = index(16), index(16)
    for pod, events in engine_events(3):
        first.apply(pod, M, events)  # type: ignore[arg-type]
        second.apply(pod, M, events)  # type: ignore[arg-type]
    pods = {"pod-0", "pod-1"}
    for n in range(12):
        prompt = [1, 2, 3] * 30 + list(range(n * 100, n * 100 + 60))
        keys = first.keys_for(prompt, M)
        assert first.longest_prefix(keys, pods) == second.longest_prefix(keys, pods)
    assert len(first) == len(second) > 0


def test_the_index_follows_the_engines_cache_under_eviction() -> None:
    engines: dict[str, Engine] = {}
    idx = index(16)
    for pod, events in engine_events(1, engines):
        idx.apply(pod, M, events)  # type: ignore[arg-type]
    checked = 0
    for n in range(12):
        prompt = [1, 2, 3] * 30 + list(range(n * 100, n * 100 + 60))
        keys = idx.keys_for(prompt, M)
        for pod, engine in engines.items():
            held, _ = engine.pool.match(prompt_block_hashes(prompt, 16, M), len(keys))
            assert idx.longest_prefix(keys, {pod}).get(pod, 0.0) == held, (n, pod)
            checked += held > 0
    assert checked > 0


def test_speculative_entries_count_until_they_expire() -> None:
    idx = index(16)
    tokens = list(range(48))
    keys = idx.keys_for(tokens, M)
    idx.apply("confirmed", M, [stored(tokens[:16], 16)])
    idx.add_speculative(keys, "guess", now=10.0, ttl=2.0)
    assert idx.longest_prefix(keys, {"guess", "confirmed"}) == {"guess": 3.0, "confirmed": 1.0}
    idx.expire(11.9)
    assert idx.longest_prefix(keys, {"guess"}) == {"guess": 3.0}
    idx.expire(12.0)
    assert idx.longest_prefix(keys, {"guess", "confirmed"}) == {"confirmed": 1.0}


def test_a_pod_that_left_has_no_speculative_entries() -> None:
    idx = index(16)
    keys = idx.keys_for(list(range(48)), M)
    idx.add_speculative(keys, "left", now=10.0, ttl=2.0)
    idx.add_speculative(keys[:1], "stays", now=10.0, ttl=2.0)
    idx.forget_speculative("left")
    assert idx.longest_prefix(keys, {"left", "stays"}) == {"stays": 1.0}
    idx.expire(12.0)  # the queued expiry of the forgotten entries finds nothing
    assert idx.longest_prefix(keys, {"left", "stays"}) == {}


def test_the_speculative_entries_by_pod_follow_every_way_an_entry_ends() -> None:
    """`forget_speculative` reads a pod's keys from its own index instead of scanning every entry:
    that index must lose each key as the entry ends (expiry, confirmation, forgetting)."""
    idx = index(16, confirmation_ends_speculation=True)
    tokens = list(range(48))
    keys = idx.keys_for(tokens, M)
    idx.add_speculative(keys, "expires", now=10.0, ttl=2.0)
    idx.add_speculative(keys[:1], "expires", now=11.0, ttl=2.0)  # renewed: outlives the first expiry
    idx.pin_speculative(keys, "confirms")
    idx.add_speculative(keys, "forgotten", now=10.0, ttl=2.0)
    idx.expire(12.0)
    assert idx._guessed_keys["expires"] == {keys[0]}
    idx.apply("confirms", M, [stored(tokens[:32], 16)])
    assert idx._guessed_keys["confirms"] == {keys[2]}
    idx.forget_speculative("forgotten")
    idx.forget_speculative("confirms")
    idx.expire(13.0)
    assert idx._guessed_keys == {}
    assert idx._speculative == {}


@pytest.mark.parametrize("until_confirmed", [False, True])
def test_an_evicted_block_stays_speculative_until_its_ttl_unless_confirmation_ended_it(
    until_confirmed: bool,
) -> None:
    """llm-d keeps a speculative entry to its TTL, past the engine's store and eviction of the
    blocks; with `confirmation_ends_speculation` the store ends it, so the eviction shows at once."""
    idx = index(16, confirmation_ends_speculation=until_confirmed)
    tokens = list(range(48))
    keys = idx.keys_for(tokens, M)
    idx.add_speculative(keys, "p", now=10.0, ttl=2.0)
    event = stored(tokens, 16)
    idx.apply("p", M, [event])
    assert idx.longest_prefix(keys, {"p"}) == {"p": 3.0}
    idx.apply("p", M, [BlockRemoved(event.block_hashes)])
    assert idx.longest_prefix(keys, {"p"}) == ({} if until_confirmed else {"p": 3.0})
    idx.expire(12.0)
    assert idx.longest_prefix(keys, {"p"}) == {}


def test_a_pinned_entry_lasts_until_its_last_request_ends_or_a_store_confirms_it() -> None:
    idx = index(16, confirmation_ends_speculation=True)
    tokens = list(range(48))
    keys = idx.keys_for(tokens, M)
    idx.pin_speculative(keys, "p")
    idx.pin_speculative(keys, "p")  # a second request for the same prompt on the same pod
    idx.expire(1e9)
    assert idx.longest_prefix(keys, {"p"}) == {"p": 3.0}
    idx.release_speculative(keys, "p", expiry=10.0)  # the other request still runs
    idx.expire(11.0)
    assert idx.longest_prefix(keys, {"p"}) == {"p": 3.0}
    idx.release_speculative(keys, "p", expiry=12.0)
    idx.expire(11.9)
    assert idx.longest_prefix(keys, {"p"}) == {"p": 3.0}
    idx.expire(12.0)
    assert idx.longest_prefix(keys, {"p"}) == {}
    # a store ends the entry at once, so an eviction right after it shows
    idx.pin_speculative(keys, "p")
    event = stored(tokens, 16)
    idx.apply("p", M, [event, BlockRemoved(event.block_hashes)])
    assert idx.longest_prefix(keys, {"p"}) == {}
    idx.release_speculative(keys, "p", expiry=20.0)
    assert idx.longest_prefix(keys, {"p"}) == {}
    assert not idx._pins


def test_holders_grow_and_shrink_between_one_and_several() -> None:
    idx = index(16)
    tokens = list(range(16))
    first, second = stored(tokens, 16), stored(tokens, 16)
    idx.apply("a", M, [first])
    (key,) = idx.keys_for(tokens, M)
    assert idx.holders(key) == {"a": 1.0}
    idx.apply("b", M, [second])
    idx.apply("a", M, [stored(tokens, 16, medium="CPU")])  # a lower tier does not lower a's weight
    assert idx.holders(key) == {"a": 1.0, "b": 1.0}
    idx.apply("a", M, [BlockRemoved(first.block_hashes)])  # the GPU copy: the CPU one remains
    assert set(idx.holders(key)) == {"a", "b"}
    idx.apply("a", M, [BlockRemoved(first.block_hashes, medium="CPU")])
    assert idx.longest_prefix([key], {"a", "b"}) == {"b": 1.0}
    idx.apply("b", M, [BlockRemoved(second.block_hashes)])
    assert len(idx) == 0


def _event(raw: list[object]) -> BlockStored:
    from epp.kvevents import decode_events

    (event,) = decode_events(msgpack.packb([0.0, [raw]]))
    assert isinstance(event, BlockStored)
    return event


def test_salted_and_multimodal_blocks_are_keyed_with_their_extra_keys() -> None:
    idx = index(16)
    tokens = list(range(48))
    salted = idx.keys_for(tokens, M, cache_salt="salt-abc")
    assert salted[0] != idx.keys_for(tokens, M)[0]  # the salt makes every key differ from plain text
    idx.apply(
        "p",
        M,
        [_event(["BlockStored", [1, 2], None, tokens[:32], 16, None, "GPU", None, [["salt-abc"], None]])],
    )
    idx.apply("p", M, [BlockStored([3], 2, tokens[32:], None)])  # its child continues the salted chain
    assert idx.longest_prefix(salted, {"p"}) == {"p": 3.0}
    assert idx.longest_prefix(idx.keys_for(tokens, M), {"p"}) == {}
    # An image spanning tokens 10..21 touches blocks 0 and 1; vLLM >= 0.18 writes bare identifiers,
    # older vLLM [identifier, offset] pairs (llm-d's ParseRawExtraKeys reads both).
    image = idx.keys_for(tokens, M, [(10, 12, "img-1")])
    raw = ["BlockStored", [7, 8, 9], None, tokens, 16, None, "GPU", None, [["img-1"], [["img-1", 10]], None]]
    idx.apply("q", M, [_event(raw)])
    assert idx.longest_prefix(image, {"q"}) == {"q": 3.0}
    assert image[:1] != idx.keys_for(tokens, M)[:1] and image[2] != idx.keys_for(tokens, M)[2]


def test_a_simulators_salted_blocks_are_found_by_the_requests_salted_keys() -> None:
    """The simulator's KV events for a salted prompt, through the wire codec, key its blocks as
    the precise index keys a request with that `cache_salt`: that salt matches every block,
    another salt or none matches none (as vLLM's engine would serve them)."""
    engine = Engine(TINY_TEST, M, record_kv_events=True)
    prompt = list(range(100, 170))
    engine.add(Request("r", prompt, 1, 0.0, cache_salt="tenant-a"))
    now = 0.0
    idx = index(16)
    while engine.has_work():
        now = engine.step(now).end
        idx.apply("p", M, decode_events(encode_batch(engine.drain_kv_events(), now, 16, {})))
    assert idx.longest_prefix(idx.keys_for(prompt, M, cache_salt="tenant-a"), {"p"}) == {"p": 4.0}
    assert idx.longest_prefix(idx.keys_for(prompt, M, cache_salt="tenant-b"), {"p"}) == {}
    assert idx.longest_prefix(idx.keys_for(prompt, M), {"p"}) == {}


def test_block_extras_follow_llm_d_realignment_across_block_sizes() -> None:
    idx = index(16)
    tokens = list(range(32))
    # many:1 - two 8-token engine blocks make one request block carrying both identifiers
    idx.apply(
        "a",
        M,
        [
            _event(
                ["BlockStored", [1, 2, 3, 4], None, tokens, 8, None, "GPU", None, [["x"], ["y"], None, None]]
            )
        ],
    )
    merged = idx.processor.keys(tokens, M, extras=[("x", "y"), None])
    assert idx.longest_prefix(merged, {"a"}) == {"a": 2.0}
    # 1:many - one 32-token engine block cut into two request blocks, each carrying its identifier
    idx.apply("b", M, [_event(["BlockStored", [5], None, tokens, 32, None, "GPU", None, [["z"]]])])
    replicated = idx.processor.keys(tokens, M, extras=[("z",), ("z",)])
    assert idx.longest_prefix(replicated, {"b"}) == {"b": 2.0}


def test_extra_keys_hash_as_llm_d_encodes_them() -> None:
    """Vectors from the algorithm of llm-d-router's kvblock/token_processor.go (@ebab68792): CBOR
    [parent, [tokens], [{"Hash": h}, ...]] under FNV-1a-64; xxh64 appends LE64 len ‖ h."""
    tokens = list(range(16))
    cbor = TokenProcessor(16)
    root = cbor.root(M)
    head = b"\x83" + _cbor_uint(root) + _cbor_tokens(tokens)
    extra = b"\x82" + b"\xa1\x64Hash\x69mm-hash-a" + b"\xa1\x64Hash\x61c"
    assert cbor.keys(tokens, M, extras=[("mm-hash-a", "c")]) == [fnv1a64(head + extra)]
    assert cbor.keys(tokens, M, extras=[None]) == [fnv1a64(head + b"\xf6")] == cbor.keys(tokens, M)
    xxh = TokenProcessor(16, algorithm=HASH_XXH64)
    data = struct.pack("<Q", xxh.root(M)) + struct.pack("<16I", *tokens)
    assert xxh.keys(tokens, M, extras=[("ab", "c")]) == [
        xxhash.xxh64_intdigest(data + struct.pack("<Q", 2) + b"ab" + struct.pack("<Q", 1) + b"c")
    ]
    with pytest.raises(ValueError, match="2 block extras for 1 blocks"):
        cbor.keys(tokens, M, extras=[None, None])


def test_a_token_less_store_adds_a_device_tier_to_known_blocks() -> None:
    idx = index(16)
    tokens = list(range(16))
    gpu = stored(tokens, 16)
    idx.apply("a", M, [gpu])
    (key,) = idx.keys_for(tokens, M)
    idx.apply("a", M, [BlockStored(gpu.block_hashes, None, [], None, medium="CPU")])  # offloaded
    idx.apply("a", M, [BlockStored([999], None, [], None, medium="CPU")])  # unknown: nothing to add
    idx.apply("a", M, [BlockRemoved(gpu.block_hashes, medium="GPU")])
    assert idx.holders(key) == {"a": 1.0}  # still held (the CPU copy)
    idx.apply("a", M, [BlockRemoved(gpu.block_hashes, medium="CPU")])
    assert len(idx) == 0


def _roots_growth(names: int, length: int = 20) -> int:
    """Bytes a fresh processor still holds after the root keys of `names` model names of
    `length` characters."""
    processor = TokenProcessor(4)

    def one(i: int) -> None:
        processor.root(f"client-model-{i}-".ljust(length, "x"))

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(names):
        one(i)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return grown


def test_invented_model_names_do_not_grow_the_roots_memo() -> None:
    """Each model's root key is memoized, and the model is the client's (the precise producer
    keys a prompt under the request's target model): 20,000 invented names used to leave 20,000
    roots. The memo is capped, so they hold no more than MAX_ROOTS names do (same run), and long
    names (a model name can be as long as a body) are not kept at all."""
    full = _roots_growth(MAX_ROOTS)
    assert full > 0
    assert _roots_growth(20 * MAX_ROOTS) <= 1.5 * full
    assert _roots_growth(MAX_ROOTS, 50_000) <= 1.5 * full


def test_a_cleared_pod_loses_its_speculative_entries_and_a_gap_keeps_them() -> None:
    """As llm-d's index clears every entry of a pod on AllBlocksCleared or a publisher's restart,
    speculative ones included; a sequence gap (events lost on the way) loses only what the
    events said: the requests the speculative entries stand for still run there."""
    idx = index(16)
    keys = idx.keys_for(list(range(48)), M)
    for pod in ("cleared", "gap", "stays"):
        idx.apply(pod, M, [stored(list(range(16)), 16)])
        idx.add_speculative(keys, pod, now=10.0, ttl=2.0)
        idx.pin_speculative(keys[:2], pod)
    idx.apply("cleared", M, [AllBlocksCleared()])
    idx.lost_events("gap")
    found = {"gap": 3.0, "stays": 3.0}
    assert idx.longest_prefix(keys, {"cleared", "gap", "stays"}) == found
    idx.expire(12.0)  # the cleared pod's queued expiry finds nothing; the pins still hold two
    assert idx.longest_prefix(keys, {"cleared", "gap", "stays"}) == {"gap": 2.0, "stays": 2.0}


def test_a_block_stored_twice_on_one_medium_stays_until_its_last_removal_as_in_llm_d() -> None:
    """vLLM caches a duplicate block (its hash is another resident block's) and announces it
    again; evicting either copy sends BlockRemoved of the hash while the other stays cached.
    llm-d-router (ebab687, pkg/kvevents/event_dedup_filter.go) counts every store of a hash per
    pod, tier and group and forwards a removal to its index only when the count is back to zero:
    the pod keeps the block until its last copy goes, here as there."""
    idx = index(16)
    tokens = list(range(32))
    event = stored(tokens, 16)
    idx.apply("a", M, [event, stored(tokens, 16)])  # the duplicate's store: the same hashes
    keys = idx.keys_for(tokens, M)
    assert idx.longest_prefix(keys, {"a"}) == {"a": 2.0}
    idx.apply("a", M, [BlockRemoved(event.block_hashes[1:], medium="GPU")])  # one copy evicted
    assert idx.longest_prefix(keys, {"a"}) == {"a": 2.0}
    idx.apply("a", M, [BlockRemoved(event.block_hashes[1:])])  # the other one
    assert idx.longest_prefix(keys, {"a"}) == {"a": 1.0}


def test_a_removal_reaches_the_index_only_for_a_prefix_group_as_in_llm_d_router() -> None:
    """A hybrid model's groups share block hashes: the sliding-window group evicting its copy of a
    block the full-attention group still holds sent a BlockRemoved that dropped the block from
    the pod. As llm-d-router (ebab687, pkg/kvevents/pool.go), a removal naming a group reaches
    the index only if the pod's stores named that group a prefix kind; others are counted."""
    idx = index(16)
    metrics = idx.metrics
    assert metrics is not None
    tokens = list(range(32))
    full = stored(tokens, 16, group_idx=0, kv_cache_spec_kind="full_attention")
    window = stored(tokens, 16, group_idx=1, kv_cache_spec_kind="sliding_window")
    unnamed = stored(list(range(100, 132)), 16, group_idx=2)  # no kind: indexed as full attention
    idx.apply("p", M, [full, window, unnamed])
    keys = idx.keys_for(tokens, M)
    idx.apply(
        "p", M, [BlockRemoved(full.block_hashes, group_idx=1), BlockRemoved(full.block_hashes, group_idx=7)]
    )
    assert idx.longest_prefix(keys, {"p"}) == {"p": 2.0}
    skipped = metrics.removals_skipped
    assert skipped.labels("sliding_window", "unsupported_cache_kind")._value.get() == 1
    assert skipped.labels("unknown", "unknown_group")._value.get() == 1
    idx.apply("p", M, [BlockRemoved(unnamed.block_hashes, group_idx=2)])
    assert idx.longest_prefix(idx.keys_for(list(range(100, 132)), M), {"p"}) == {}
    idx.apply("p", M, [BlockRemoved(full.block_hashes[1:], group_idx=0)])
    assert idx.longest_prefix(keys, {"p"}) == {"p": 1.0}


def test_removals_of_blocks_stored_twice_are_counted_as_llm_d_router_counts_them() -> None:
    """`..._dedup_removed_hashes_suppressed_total` counts removed hashes the pod still holds a copy
    of, `..._forwarded_total` the rest (an unknown hash included), per hash as llm-d's filter."""
    idx = index(16)
    metrics = idx.metrics
    assert metrics is not None
    event = stored(list(range(32)), 16)
    idx.apply("p", M, [event, stored(list(range(16)), 16)])  # the first block stored twice
    idx.apply("p", M, [BlockRemoved([*event.block_hashes, 12345])])
    assert metrics.removals_suppressed._value.get() == 1
    assert metrics.removals_forwarded._value.get() == 2

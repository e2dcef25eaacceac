from __future__ import annotations

from epp.datastore import Datastore, EndpointSpec
from epp.plugins.approx_prefix_cache_producer import ApproxPrefixCacheProducer
from epp.plugins.inflight_load_producer import InFlightLoadProducer
from epp.replicas import ReplicaLoad, ReplicaState, RouteMessage
from epp.scheduling.types import ProfileResult, SchedulingResult
from tests.unit.plugin_helpers import plugin, request

PROMPT = "x" * 4096


def datastore() -> Datastore:
    store = Datastore()
    store.replace_all(EndpointSpec(name=f"e{i}", address=f"10.0.0.{i + 1}", port=8000) for i in range(3))
    return store


def replica(name: str) -> tuple[Datastore, ApproxPrefixCacheProducer, ReplicaState]:
    store = datastore()
    producer = plugin(ApproxPrefixCacheProducer)
    return store, producer, ReplicaState(name, store, [producer])


def test_route_message_round_trip() -> None:
    message = RouteMessage("a", "approx-prefix-cache-producer", "e1", [0, 1, 2**64 - 1])
    decoded = RouteMessage.decode(message.encode())
    assert (decoded.replica, decoded.plugin, decoded.endpoint) == ("a", "approx-prefix-cache-producer", "e1")
    assert list(decoded.hashes) == [0, 1, 2**64 - 1]


def test_a_peer_learns_every_route_the_other_makes() -> None:
    store_a, producer_a, state_a = replica("a")
    store_b, producer_b, state_b = replica("b")
    sent: list[RouteMessage] = []
    state_a.on_route = sent.append
    req = request(PROMPT)
    producer_a.prepare(req, store_a.endpoints())
    target = store_a.get("e2")
    assert target is not None
    producer_a.pre_request(req, SchedulingResult({"default": ProfileResult([target])}, "default"))
    assert len(sent) == 1 and sent[0].endpoint == "e2"
    assert not state_a.apply_route(sent[0])  # its own route comes back: ignored
    assert state_b.apply_route(RouteMessage.decode(sent[0].encode()))
    seen = request(PROMPT)
    producer_b.prepare(seen, store_b.endpoints())
    matched = producer_b.index.match(seen.attributes[producer_b.name].hashes)
    assert {e.name: n for e, n in matched.items()} == {"e2": len(sent[0].hashes)}
    assert not state_b.apply_route(RouteMessage("a", "other-plugin", "e2", [1]))
    assert not state_b.apply_route(RouteMessage("a", producer_b.name, "gone", [1]))


def test_peer_load_is_added_and_replaced_and_own_load_stays_apart() -> None:
    store, _, state = replica("a")
    e0 = store.get("e0")
    e1 = store.get("e1")
    assert e0 is not None and e1 is not None
    e0.inflight_requests, e0.inflight_tokens = 2, 200  # this replica's own
    state.apply_peer_load([ReplicaLoad({"e0": (1, 10), "e1": (3, 30)}), ReplicaLoad({"e1": (1, 5)})])
    assert (e0.inflight_requests, e0.inflight_tokens) == (3, 210)
    assert (e1.inflight_requests, e1.inflight_tokens) == (4, 35)
    assert state.local_load() == ReplicaLoad({"e0": (2, 200)})
    state.apply_peer_load([ReplicaLoad({"e1": (1, 1)})])
    assert (e0.inflight_requests, e1.inflight_requests, e1.inflight_tokens) == (2, 1, 1)
    state.apply_peer_load(())
    assert (e0.inflight_requests, e1.inflight_requests) == (2, 0)


def test_inflight_load_producers_share_their_counts_unless_told_not_to() -> None:
    """llm-d's cross-replica state: each producer's consumers see every replica's requests;
    `syncCrossReplicaState: false` keeps one local."""
    store = datastore()
    shared, local = (
        plugin(InFlightLoadProducer),
        plugin(InFlightLoadProducer, {"syncCrossReplicaState": False}),
    )
    local.name = "local"
    state = ReplicaState("a", store, [shared, local])
    e0 = store.get("e0")
    assert e0 is not None
    for producer in (shared, local):
        producer.pre_request(request("x" * 40), SchedulingResult({"d": ProfileResult([e0])}, "d"))
    assert state.local_load().plugins == {shared.name: {"e0": (1, 10)}}
    peer = ReplicaLoad({}, {shared.name: {"e0": (2, 30)}, "local": {"e0": (5, 5)}})
    state.apply_peer_load([peer, peer])
    assert (shared.load.requests(e0), shared.load.tokens(e0)) == (5, 70)
    assert (local.load.requests(e0), local.load.tokens(e0)) == (1, 10)
    assert state.local_load().plugins == {shared.name: {"e0": (1, 10)}}  # its own only
    state.apply_peer_load(())
    assert (shared.load.requests(e0), shared.load.tokens(e0)) == (1, 10)

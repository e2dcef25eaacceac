"""llm-d's topology plugins with its P/D topology config: the prefill pick is kept close to the
decode pick already made (same host first, then rack, zone, region)."""

from __future__ import annotations

from pathlib import Path

import pytest

from epp.config.build import build_components
from epp.config.loader import load_config_file
from epp.datastore import Endpoint
from epp.framework import PluginContext
from epp.plugins.topology_affinity_filter import TopologyAffinityFilter
from epp.plugins.topology_affinity_scorer import TopologyAffinityScorer
from epp.plugins.topology_extractor import TopologyExtractor
from epp.requests import InferenceRequest
from epp.scheduling.disagg import PEER_ENDPOINT
from epp.scheduling.topology import TOPOLOGY, Level, Topology, compare
from tests.unit.plugin_helpers import endpoint, plugin, request

CONFIG = (
    Path(__file__).parents[2]
    / "data"
    / "upstream"
    / "configs"
    / ("llmd-router-ebab687__deploy__config__pd-topology-epp-config.yaml")
)
HOST, RACK, ZONE, REGION = (
    "kubernetes.io/hostname",
    "topology.kubernetes.io/rack",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
)


def placed(name: str, role: str | None = None, address: str = "10.0.0.1", **where: str) -> Endpoint:
    labels = {"llm-d.ai/role": role} if role else {}
    keys = {"host": HOST, "rack": RACK, "zone": ZONE, "region": REGION}
    labels.update({keys[k]: v for k, v in where.items()})
    return endpoint(name, address=address, labels=labels)


def test_compare_finds_the_closest_shared_level() -> None:
    a = Topology("h1", "r1", "z1", "eu")
    assert compare(a, Topology("h1", "r9", "z9", "us")) is Level.HOST
    assert compare(a, Topology("h2", "r1", "z1", "eu")) is Level.RACK
    assert compare(a, Topology("h2", "", "z1", "eu")) is Level.ZONE
    assert compare(a, Topology("h2", "r2", "z2", "eu")) is Level.REGION
    assert compare(a, Topology()) is Level.NONE and compare(None, a) is Level.NONE


def test_extractor_reads_the_labels_it_is_told() -> None:
    extractor = plugin(TopologyExtractor, {"rack": "example.com/rack", "zone": ""})
    e = endpoint(labels={HOST: "n1", "example.com/rack": "r7", ZONE: "z"})
    assert extractor.topology(e) == Topology("n1", "r7", "z", "")
    assert extractor.topology(endpoint()) is None


def bound_filter(**params: str) -> tuple[TopologyExtractor, TopologyAffinityFilter]:
    extractor, flt = plugin(TopologyExtractor), plugin(TopologyAffinityFilter, params)
    flt.bind_producer(TOPOLOGY, extractor.name)
    return extractor, flt


def bound_scorer() -> tuple[TopologyExtractor, TopologyAffinityScorer]:
    extractor, scorer = plugin(TopologyExtractor), plugin(TopologyAffinityScorer)
    scorer.bind_producer(TOPOLOGY, extractor.name)
    return extractor, scorer


def with_peer(extractor: TopologyExtractor, peer: Endpoint | None, pool: list[Endpoint]) -> InferenceRequest:
    req = request()
    extractor.prepare(req, pool)
    if peer is not None:
        req.attributes[PEER_ENDPOINT] = peer
    return req


PEER = placed("decode", host="h1", rack="r1", zone="z1", region="eu")
SAME_HOST = placed("p-host", host="h1", rack="r1", zone="z1", region="eu")
SAME_RACK = placed("p-rack", host="h2", rack="r1", zone="z1", region="eu")
SAME_ZONE = placed("p-zone", host="h3", rack="r3", zone="z1", region="eu")
FAR = placed("p-far", host="h4", rack="r4", zone="z4", region="us")
BARE = placed("p-bare")
POOL = [SAME_HOST, SAME_RACK, SAME_ZONE, FAR, BARE]


@pytest.mark.parametrize(
    ("min_affinity", "kept"),
    [
        ("host", ["p-host"]),
        ("rack", ["p-host", "p-rack"]),
        ("zone", ["p-host", "p-rack", "p-zone"]),
        ("region", ["p-host", "p-rack", "p-zone"]),
    ],
)
def test_filter_keeps_candidates_close_enough_to_the_peer(min_affinity: str, kept: list[str]) -> None:
    extractor, flt = bound_filter(minAffinity=min_affinity)
    req = with_peer(extractor, PEER, POOL)
    assert [e.name for e in flt.filter(req, POOL)] == kept


def test_filter_keeps_all_without_a_peer_or_when_nobody_is_close() -> None:
    extractor, flt = bound_filter()
    no_peer = with_peer(extractor, None, POOL)
    assert flt.filter(no_peer, POOL) == POOL
    bare_peer = with_peer(extractor, BARE, POOL)
    assert flt.filter(bare_peer, POOL) == POOL
    far_only = with_peer(extractor, PEER, [FAR, BARE])
    assert flt.filter(far_only, [FAR, BARE]) == [FAR, BARE]


def test_scorer_levels() -> None:
    extractor, scorer = bound_scorer()
    req = with_peer(extractor, PEER, POOL)
    assert scorer.score(req, POOL) == [1.0, 0.2, 0.05, 0.0, 0.0]
    assert scorer.score(with_peer(extractor, None, POOL), POOL) == [0.0] * 5


def test_upstream_pd_topology_config_prefills_next_to_the_decode_pick() -> None:
    components = build_components(load_config_file(CONFIG), PluginContext())
    decode = placed("decode", "decode", "10.0.0.1", host="h1", rack="r1")
    near = placed("near", "prefill", "10.0.1.1", host="h1", rack="r1")
    far = placed("far", "prefill", "10.0.1.2", host="h9", rack="r9")
    far.metrics.waiting_queue_size = 0
    near.metrics.waiting_queue_size = 3  # the queue scorer alone would pick `far`
    for _ in range(5):
        result = components.scheduler.schedule(request("x" * 4096), [decode, near, far])
        assert result.targets == [decode]
        assert result.headers["x-prefiller-host-port"] == "10.0.1.1:8000"

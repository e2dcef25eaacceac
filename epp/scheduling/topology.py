"""Where an endpoint sits (host, rack, zone, region) and how close two endpoints are: shared by
llm-d's `topology-extractor`, `topology-affinity-filter` and `topology-affinity-scorer`."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from epp.framework import DataKey


@dataclass(frozen=True, slots=True)
class Topology:
    hostname: str = ""
    rack: str = ""
    zone: str = ""
    region: str = ""


class Level(enum.IntEnum):
    """Closeness, closest first (llm-d's order)."""

    HOST = 0
    RACK = 1
    ZONE = 2
    REGION = 3
    NONE = 4


def compare(peer: Topology | None, candidate: Topology | None) -> Level:
    """The closest level at which both name the same (non-empty) place."""
    if peer is None or candidate is None:
        return Level.NONE
    for level, a, b in (
        (Level.HOST, peer.hostname, candidate.hostname),
        (Level.RACK, peer.rack, candidate.rack),
        (Level.ZONE, peer.zone, candidate.zone),
        (Level.REGION, peer.region, candidate.region),
    ):
        if a and a == b:
            return level
    return Level.NONE


# The per-request data the extractor provides: a callable Endpoint -> Topology | None.
TOPOLOGY = DataKey("Topology", "topology-extractor")

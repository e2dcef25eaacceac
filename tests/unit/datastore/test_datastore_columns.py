"""The metric columns the scorers read over many candidates follow every way metrics change."""

from __future__ import annotations

import numpy as np

from epp.datastore import Endpoint, EndpointMetrics, EndpointSpec
from epp.datastore.columns import column


def endpoints(count: int) -> list[Endpoint]:
    return [Endpoint(EndpointSpec(f"e{i}", f"10.0.{i // 250}.{i % 250}", 8000)) for i in range(count)]


def test_columns_follow_scrapes_in_place_changes_and_shared_objects() -> None:
    pool = endpoints(3)
    assert column(pool, "waiting_queue_size").tolist() == [0.0, 0.0, 0.0]
    pool[0].metrics = EndpointMetrics(waiting_queue_size=4, kv_cache_usage=0.5)  # a scrape
    pool[1].metrics.waiting_queue_size = 7  # changed in place
    shared = EndpointMetrics(kv_cache_usage=0.25)
    pool[2].metrics = shared
    pool[1].metrics = shared  # two endpoints, one object (as replicas share the primary's)
    assert column(pool, "waiting_queue_size").tolist() == [4.0, 0.0, 0.0]
    shared.kv_cache_usage = 0.75
    assert column(pool, "kv_cache_usage").tolist() == [0.5, 0.75, 0.75]
    pool[2].metrics = EndpointMetrics(kv_cache_usage=0.125)
    shared.kv_cache_usage = 0.0  # still endpoint 1's, no longer endpoint 2's
    assert column(pool, "kv_cache_usage").tolist() == [0.5, 0.0, 0.125]


def test_columns_follow_the_candidates_and_survive_growth() -> None:
    pool = endpoints(2500)  # beyond the table's first allocation
    for i, endpoint in enumerate(pool):
        endpoint.metrics = EndpointMetrics(waiting_queue_size=i, kv_cache_usage=i / 2500)
    assert np.array_equal(column(pool, "waiting_queue_size"), np.arange(2500, dtype=np.float64))
    same_ends = [pool[0], *pool[2:-1], pool[1], pool[-1]]  # same length, first and last
    assert column(same_ends, "waiting_queue_size")[-2:].tolist() == [1.0, 2499.0]
    got = column(pool, "kv_cache_usage")
    got[0] = 9.0  # a caller's copy: the table is untouched
    assert column(pool, "kv_cache_usage")[0] == 0.0
    assert column([], "kv_cache_usage").tolist() == []


def test_copies_of_attached_metrics_are_plain_and_compare_by_value() -> None:
    import copy
    import pickle

    [endpoint] = endpoints(1)
    endpoint.metrics = EndpointMetrics(waiting_queue_size=2, kv_cache_usage=0.5)
    for duplicate in (
        copy.copy(endpoint.metrics),
        copy.deepcopy(endpoint.metrics),
        pickle.loads(pickle.dumps(endpoint.metrics)),
    ):
        assert type(duplicate) is EndpointMetrics
        assert duplicate == endpoint.metrics == EndpointMetrics(waiting_queue_size=2, kv_cache_usage=0.5)
        duplicate.waiting_queue_size = 9  # not the endpoint's metrics: its row is untouched
        assert column([endpoint], "waiting_queue_size").tolist() == [2.0]
    assert endpoint.metrics != EndpointMetrics(waiting_queue_size=3)


def test_positions_index_each_candidate_and_show_a_duplicate() -> None:
    from epp.datastore.columns import positions

    pool = endpoints(4)
    assert positions(pool) == {e: i for i, e in enumerate(pool)}
    reordered = [pool[3], pool[1], pool[2], pool[0]]
    assert positions(reordered)[pool[3]] == 0
    assert len(positions([pool[0], pool[1], pool[0]])) == 2  # fewer than the candidates


def test_candidates_by_hostport_follow_the_candidate_list() -> None:
    from epp.datastore.columns import by_hostport

    pool = endpoints(4)
    found = by_hostport(pool)
    assert found == {e.hostport: e for e in pool}
    assert by_hostport(list(pool)) is found  # the same endpoints: kept
    moved = Endpoint(EndpointSpec("e2", "10.0.9.9", 8000))  # same ends and length, another middle
    assert by_hostport([pool[0], pool[1], moved, pool[3]]) == {
        e.hostport: e for e in (*pool[:2], moved, pool[3])
    }

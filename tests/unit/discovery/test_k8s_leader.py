"""Leader election over a Lease in the API server double, with the real kubernetes_asyncio client:
the double's Lease contract (create conflicts, optimistic concurrency), one leader among
candidates, takeover after a crash within the lease duration, at once after a release, and
leadership given up when it cannot be renewed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient, CoordinationV1Api, V1Lease, V1LeaseSpec, V1ObjectMeta
from kubernetes_asyncio.client.exceptions import ApiException

from epp.discovery.k8s.client import api_client
from epp.discovery.k8s.elector import LeaderElector
from epp.discovery.k8s.leader import LeaseTiming, lease_name
from epp.discovery.k8s.model import PoolRef
from tests.k8s_double import LEASES, ApiServerDouble
from tests.unit.discovery.conftest import until

FAST = LeaseTiming(lease_duration=1, renew_deadline=0.5, retry_period=0.05)
NAME = lease_name(PoolRef("pool", "default"))


@pytest.fixture
async def client(kubeconfig: Path) -> AsyncIterator[ApiClient]:
    api = await api_client(kubeconfig)
    yield api
    await api.close()


def holder(api: ApiServerDouble) -> str | None:
    lease = api.find(LEASES, NAME)
    return None if lease is None else lease["spec"].get("holderIdentity")


def test_the_lease_name_is_gies() -> None:
    assert lease_name(PoolRef("vllm", "ns1")) == "epp-ns1-vllm.gateway-api-inference-extension.sigs.k8s.io"


async def test_the_double_serves_leases_with_optimistic_concurrency(client: ApiClient) -> None:
    leases = CoordinationV1Api(client)
    with pytest.raises(ApiException) as missing:
        await leases.read_namespaced_lease("l", "default")
    assert missing.value.status == 404
    body = V1Lease(metadata=V1ObjectMeta(name="l"), spec=V1LeaseSpec(holder_identity="a"))
    created = await leases.create_namespaced_lease("default", body)
    with pytest.raises(ApiException) as exists:
        await leases.create_namespaced_lease("default", body)
    assert (exists.value.status, "AlreadyExists" in exists.value.body) == (409, True)

    created.spec.holder_identity = "b"
    updated = await leases.replace_namespaced_lease("l", "default", created)
    assert updated.spec.holder_identity == "b"
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    created.spec.holder_identity = "c"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as conflict:
        await leases.replace_namespaced_lease("l", "default", created)
    assert (conflict.value.status, "Conflict" in conflict.value.body) == (409, True)
    assert (await leases.read_namespaced_lease("l", "default")).spec.holder_identity == "b"


async def test_one_candidate_leads_and_takes_over_after_a_crash(
    api: ApiServerDouble, client: ApiClient
) -> None:
    first = LeaderElector(client, NAME, "default", "first", FAST)
    first.start()
    await asyncio.wait_for(first.elected.wait(), 5)
    second = LeaderElector(client, NAME, "default", "second", FAST)
    second.start()
    try:
        await until(lambda: len([r for r in api.requests if r.path.endswith(NAME)]) > 10, "renewals")
        assert (first.is_leader, second.is_leader, holder(api)) == (True, False, "first")

        loop = asyncio.get_running_loop()
        crashed = loop.time()
        await first.stop(release=False)  # no release: the standby must wait the lease out
        await asyncio.wait_for(second.elected.wait(), 5)
        waited = loop.time() - crashed
        assert FAST.lease_duration * 0.9 <= waited < FAST.lease_duration + 1.0
        lease = api.get(LEASES, NAME)
        assert (lease["spec"]["holderIdentity"], lease["spec"]["leaseTransitions"]) == ("second", 1)
    finally:
        await first.stop()
        await second.stop()


async def test_a_released_lease_is_taken_over_at_once(api: ApiServerDouble, client: ApiClient) -> None:
    slow = LeaseTiming(lease_duration=30, renew_deadline=10, retry_period=0.05)
    first = LeaderElector(client, NAME, "default", "first", slow)
    second = LeaderElector(client, NAME, "default", "second", slow)
    first.start()
    await asyncio.wait_for(first.elected.wait(), 5)
    second.start()
    try:
        await until(lambda: any(r.path.endswith(NAME) and r.method == "GET" for r in api.requests), "a read")
        await first.stop()
        assert holder(api) == ""
        await asyncio.wait_for(second.elected.wait(), 2)  # well within the 30s lease
        assert holder(api) == "second"
    finally:
        await second.stop()
    assert holder(api) == ""


async def test_leadership_not_renewed_in_time_is_given_up(api: ApiServerDouble, client: ApiClient) -> None:
    lost = asyncio.Event()
    elector = LeaderElector(client, NAME, "default", "first", FAST, on_lost=lost.set)
    elector.start()
    try:
        await asyncio.wait_for(elector.elected.wait(), 5)
        # Someone else holds it now (a split brain the API server resolved against us).
        api.update(LEASES, NAME, lambda lease: lease["spec"].update(holderIdentity="other"))
        await asyncio.wait_for(lost.wait(), 5)
        assert not elector.is_leader
        assert holder(api) == "other"
    finally:
        await elector.stop()
    assert holder(api) == "other"  # a former leader does not release what it no longer holds


async def test_rbac_without_leases_keeps_the_candidate_a_standby(kubeconfig: Path, tmp_path: Path) -> None:
    api = ApiServerDouble(rbac=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}])
    await api.start()
    client = await api_client(api.write_kubeconfig(tmp_path / "kc"))
    elector = LeaderElector(client, NAME, "default", "first", FAST)
    elector.start()
    try:
        await until(lambda: sum(r.path.endswith(NAME) for r in api.requests) >= 3, "retries")
        assert not elector.is_leader
    finally:
        await elector.stop()
        await client.close()
        await api.stop()


async def test_one_hung_request_does_not_cost_the_leadership(api: ApiServerDouble, client: ApiClient) -> None:
    """Each Lease request is given up after max(1 s, renew deadline / 2), as client-go's lock
    client, so a renewal whose read never answers is retried within the renew deadline instead of
    using it all up and costing the leadership."""
    timing = LeaseTiming(lease_duration=4, renew_deadline=2.5, retry_period=0.1)
    lost: list[bool] = []
    leader = LeaderElector(client, NAME, "default", "leader", timing, on_lost=lambda: lost.append(True))
    leader.start()
    await asyncio.wait_for(leader.elected.wait(), 5)
    api.hang_reads(LEASES)
    renewed = api.get(LEASES, NAME)["spec"]["renewTime"]
    await until(lambda: api.get(LEASES, NAME)["spec"]["renewTime"] != renewed, "a renewal after the hang", 5)
    assert leader.is_leader and not lost
    await leader.stop()


async def test_a_standby_whose_read_hangs_still_takes_over(
    api: ApiServerDouble, client: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A candidate's hung read is given up too, so a standby is not stuck on it when the leader goes."""
    timing = LeaseTiming(lease_duration=2, renew_deadline=1.5, retry_period=0.1)
    api.hang_reads(LEASES)  # the standby's first read of the Lease
    standby = LeaderElector(client, NAME, "default", "standby", timing)
    with caplog.at_level(logging.WARNING, logger="epp.discovery.k8s.leader"):
        standby.start()
        await asyncio.wait_for(standby.elected.wait(), 5)
    assert "leader election: API server unreachable: no answer within 1s" in caplog.text
    await standby.stop()

"""The list+watch loop against the API server double, through the real kubernetes_asyncio client:
paging, resourceVersion bookkeeping, dropped connections, 410 Gone and bookmarks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from epp.discovery.k8s.client import api_client, objective_lister, pod_lister
from epp.discovery.k8s.reflector import Lister, Reflector, ResourceNotServed, WatchTiming
from tests.k8s_double import OBJECTIVES, PODS, ApiServerDouble
from tests.k8s_double.objects import pod
from tests.unit.discovery.conftest import FAST, until


@pytest.fixture
async def client(kubeconfig: Path) -> AsyncIterator[ApiClient]:
    async with await api_client(kubeconfig) as client:
        yield client


class Mirror:
    """A reflector running in the background, with the number of change callbacks seen."""

    def __init__(self, lister: Lister, timing: WatchTiming = FAST, optional: bool = False) -> None:
        self.changes = 0
        self.reflector = Reflector("test", lister, self._changed, timing, optional=optional)
        self.task: asyncio.Task[None] | None = None

    def _changed(self, reflector: Reflector) -> None:
        self.changes += 1

    def names(self) -> set[str]:
        return set(self.reflector.items)

    async def __aenter__(self) -> Mirror:
        self.task = asyncio.get_running_loop().create_task(self.reflector.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def lists(api: ApiServerDouble) -> list[dict[str, str]]:
    return [r.query for r in api.requests if not r.watch]


def watches(api: ApiServerDouble) -> list[dict[str, str]]:
    return [r.query for r in api.requests if r.watch]


async def test_pages_through_the_list_then_watches_from_its_version(
    api: ApiServerDouble, client: ApiClient
) -> None:
    for i in range(5):
        api.apply(PODS, pod(f"p{i}", labels={"app": "a"}))
    api.apply(PODS, pod("other", labels={"app": "b"}))
    list_version = str(api.resource_version)
    async with Mirror(pod_lister(client, "default", "app=a")) as mirror:
        await until(lambda: bool(watches(api)), "the watch to start")
        assert mirror.names() == {f"p{i}" for i in range(5)}
        assert len(lists(api)) == 3  # pages of 2
        assert [q["labelSelector"] for q in lists(api)] == ["app=a"] * 3
        assert watches(api)[0]["resourceVersion"] == list_version
        assert watches(api)[0]["allowWatchBookmarks"] == "True"

        api.apply(PODS, pod("p5", labels={"app": "a"}))
        api.delete(PODS, "p0")
        api.update(PODS, "p1", lambda p: p["metadata"].setdefault("annotations", {}).update(x="1"))
        await until(lambda: mirror.names() == {"p1", "p2", "p3", "p4", "p5"}, "add and delete")
        await until(lambda: "x" in mirror.reflector.items["p1"]["metadata"].get("annotations", {}), "modify")
        assert mirror.reflector.resource_version == str(api.resource_version)


async def test_relabelling_moves_pods_in_and_out_of_the_selector(
    api: ApiServerDouble, client: ApiClient
) -> None:
    api.apply(PODS, pod("p", labels={"app": "a"}))
    async with Mirror(pod_lister(client, "default", "app=a")) as mirror:
        await until(lambda: mirror.names() == {"p"}, "the initial list")
        api.update(PODS, "p", lambda p: p["metadata"]["labels"].update(app="b"))
        await until(lambda: mirror.names() == set(), "the relabelled pod to leave")
        api.update(PODS, "p", lambda p: p["metadata"]["labels"].update(app="a"))
        await until(lambda: mirror.names() == {"p"}, "the pod to come back")


async def test_a_dropped_watch_resumes_from_the_last_version_without_relisting(
    api: ApiServerDouble, client: ApiClient
) -> None:
    api.apply(PODS, pod("p0", labels={"app": "a"}))
    async with Mirror(pod_lister(client, "default", "app=a")) as mirror:
        await until(lambda: api.open_watches == 1, "the watch to start")
        api.apply(PODS, pod("p1", labels={"app": "a"}))
        await until(lambda: mirror.names() == {"p0", "p1"}, "the first event")
        seen = mirror.reflector.resource_version
        api.drop_watches()
        api.apply(PODS, pod("p2", labels={"app": "a"}))  # happens while disconnected
        await until(lambda: mirror.names() == {"p0", "p1", "p2"}, "the missed event after reconnecting")
        assert len(lists(api)) == 1
        assert watches(api)[1]["resourceVersion"] == seen


async def test_410_on_an_open_watch_relists(api: ApiServerDouble, client: ApiClient) -> None:
    api.apply(PODS, pod("p0", labels={"app": "a"}))
    async with Mirror(pod_lister(client, "default", "app=a")) as mirror:
        await until(lambda: api.open_watches == 1, "the watch to start")
        api.expire_watches()
        await until(lambda: len(lists(api)) == 2, "a relist")
        await until(lambda: api.open_watches == 1, "the watch to restart")
        api.apply(PODS, pod("p1", labels={"app": "a"}))
        await until(lambda: mirror.names() == {"p0", "p1"}, "events after the relist")


async def test_410_when_resuming_from_a_compacted_version_relists_and_drops_deleted_objects(
    api: ApiServerDouble, client: ApiClient
) -> None:
    api.apply(PODS, pod("p0", labels={"app": "a"}))
    api.apply(PODS, pod("p1", labels={"app": "a"}))
    async with Mirror(pod_lister(client, "default", "app=a")) as mirror:
        await until(lambda: api.open_watches == 1, "the watch to start")
        changes = mirror.changes
        # The connection drops; before the client is back, a deletion happens and is compacted
        # out of history (all in one step, so the client cannot reconnect in between).
        api.drop_watches()
        api.delete(PODS, "p0")
        api.compact()
        await until(lambda: mirror.names() == {"p1"}, "the relist to drop the deleted pod")
        assert len(lists(api)) == 2
        assert mirror.changes == changes + 1  # one full replacement, no replayed events


async def test_a_continue_token_expiring_mid_list_restarts_the_list(
    api: ApiServerDouble, client: ApiClient
) -> None:
    for i in range(4):
        api.apply(PODS, pod(f"p{i}", labels={"app": "a"}))
    real = pod_lister(client, "default", "app=a")
    calls = 0

    async def compacting_lister(**kwargs: Any) -> Any:
        nonlocal calls
        response = await real(**kwargs)
        calls += 1
        if calls == 1:  # after the first page, the server moves on and compacts
            api.apply(PODS, pod("p4", labels={"app": "a"}))
            api.compact()
        return response

    async with Mirror(compacting_lister) as mirror:
        await until(lambda: api.open_watches == 1, "the watch to start")
        assert mirror.names() == {f"p{i}" for i in range(5)}
        continued = [q for q in lists(api) if "continue" in q]
        assert continued, "the list was paged"


async def test_bookmarks_advance_the_resume_version_past_a_compaction(
    api: ApiServerDouble, client: ApiClient
) -> None:
    api.apply(PODS, pod("mine", labels={"app": "a"}))
    async with Mirror(pod_lister(client, "default", "app=a")) as mirror:
        await until(lambda: api.open_watches == 1, "the watch to start")
        for i in range(3):  # changes the watcher's selector filters out
            api.apply(PODS, pod(f"not-mine-{i}", labels={"app": "b"}))
        api.bookmark()
        await until(lambda: mirror.reflector.resource_version == str(api.resource_version), "the bookmark")
        api.compact()
        api.drop_watches()
        await until(lambda: len(watches(api)) == 2 and api.open_watches == 1, "the watch to resume")
        assert len(lists(api)) == 1, "resumed from the bookmark instead of relisting"


async def test_a_watch_that_times_out_is_renewed(api: ApiServerDouble, client: ApiClient) -> None:
    timing = WatchTiming(watch_timeout=1, backoff_initial=0.01, backoff_max=0.05)
    async with Mirror(pod_lister(client, "default", "app=a"), timing) as mirror:
        await until(lambda: len(watches(api)) >= 2, "a second watch after the first timed out", timeout=10)
        api.apply(PODS, pod("p", labels={"app": "a"}))
        await until(lambda: mirror.names() == {"p"}, "events on the renewed watch")
        assert len(lists(api)) == 1


async def test_an_optional_resource_that_is_not_served_ends_the_reflector(kubeconfig: Path) -> None:
    api = ApiServerDouble(served=[PODS])
    await api.start()
    try:
        async with await api_client(api.write_kubeconfig(kubeconfig)) as client:
            mirror = Mirror(objective_lister(client, "default"), optional=True)
            with pytest.raises(ResourceNotServed):
                await asyncio.wait_for(mirror.reflector.run(), 5)
    finally:
        await api.stop()


async def test_a_required_resource_that_fails_is_retried_with_backoff(
    api: ApiServerDouble, client: ApiClient
) -> None:
    api.served.discard(OBJECTIVES)
    async with Mirror(objective_lister(client, "default")) as mirror:
        await until(lambda: len(api.requests) >= 4, "retries")
        assert not mirror.reflector.synced
        api.served.add(OBJECTIVES)
        await until(lambda: mirror.reflector.synced, "the list once the resource is served")


async def test_the_client_authenticates_with_the_kubeconfig_token(
    api: ApiServerDouble, tmp_path: Path
) -> None:
    config = api.write_kubeconfig(tmp_path / "kubeconfig")
    config.write_text(config.read_text().replace("double-token", "wrong"))
    async with await api_client(config) as client, Mirror(pod_lister(client, "default", "app=a")) as mirror:
        await until(lambda: len(api.requests) >= 3, "retries after 401")
        assert not mirror.reflector.synced


async def test_multi_megabyte_watch_events_arrive(api: ApiServerDouble, client: ApiClient) -> None:
    async with Mirror(pod_lister(client, "default", "app=a")) as mirror:
        await until(lambda: bool(watches(api)), "the watch to start")
        huge = pod("huge", labels={"app": "a"})
        huge["metadata"]["annotations"] = {"big": "x" * 3_000_000}
        api.apply(PODS, huge)
        await until(lambda: "huge" in mirror.names(), "a 3 MB pod event")
        api.apply(PODS, pod("after", labels={"app": "a"}))
        await until(lambda: "after" in mirror.names(), "the watch to go on")

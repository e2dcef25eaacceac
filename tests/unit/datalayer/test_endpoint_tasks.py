"""EndpointTasks: one task per endpoint, and none started once stopped."""

from __future__ import annotations

import asyncio

from epp.datalayer.endpointtasks import EndpointTasks
from epp.datastore import Datastore, Endpoint, EndpointSpec


async def test_an_endpoint_that_joins_after_stop_starts_no_task() -> None:
    polled: list[str] = []

    async def poll(endpoint: Endpoint) -> None:
        polled.append(endpoint.name)
        await asyncio.Event().wait()

    store = Datastore()
    tasks = EndpointTasks("test", poll)
    tasks.follow(store)
    store.replace_all([EndpointSpec(name="a", address="10.0.0.1", port=8000)])
    await asyncio.sleep(0)
    assert polled == ["a"]
    await tasks.stop()
    store.replace_all(  # discovery still running during shutdown
        [EndpointSpec(name=n, address=f"10.0.0.{i}", port=8000) for i, n in enumerate("ab", 1)]
    )
    await asyncio.sleep(0)
    assert polled == ["a"]
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("test-")]

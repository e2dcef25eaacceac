"""One polling task per endpoint of the pool: started when the endpoint joins, cancelled when it
leaves or when the poller stops (`models-data-source` polls this way; the metrics scraper drives
all its connections from one task instead, see epp.datalayer.scraper)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from epp.datastore import Datastore, Endpoint
from epp.tasks import cancel_and_wait

Poll = Callable[[Endpoint], Coroutine[Any, Any, None]]


class EndpointTasks:
    def __init__(self, prefix: str, poll: Poll) -> None:
        self._prefix = prefix
        self._poll = poll
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopped = False  # endpoints that arrive during shutdown start nothing

    def follow(self, datastore: Datastore) -> None:
        datastore.subscribe(on_added=self._start, on_removed=self._cancel)

    async def stop(self) -> None:
        self._stopped = True
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(*tasks)

    def _start(self, endpoint: Endpoint) -> None:
        self._cancel(endpoint)
        if self._stopped:
            return
        self._tasks[endpoint.name] = asyncio.get_running_loop().create_task(
            self._poll(endpoint), name=f"{self._prefix}-{endpoint.name}"
        )

    def _cancel(self, endpoint: Endpoint) -> None:
        task = self._tasks.pop(endpoint.name, None)
        if task is not None:
            task.cancel()

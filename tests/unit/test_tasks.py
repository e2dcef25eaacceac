"""Stopping background tasks."""

from __future__ import annotations

import asyncio

import pytest

from epp.tasks import cancel_and_wait


async def test_cancels_every_task_and_waits_for_each_to_end() -> None:
    cleaned: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits still runs to the end
            cleaned.append(name)

    tasks = [asyncio.create_task(worker(name)) for name in ("a", "b")]
    await asyncio.sleep(0)
    await cancel_and_wait(tasks[0], None, tasks[1])
    assert cleaned == ["a", "b"]
    assert all(task.cancelled() for task in tasks)


async def test_nothing_to_stop() -> None:
    await cancel_and_wait(None)
    await cancel_and_wait()


async def test_an_error_the_task_ends_with_is_raised() -> None:
    async def failing_cleanup() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("cleanup failed")

    task = asyncio.create_task(failing_cleanup())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task)

"""Stopping background tasks."""

from __future__ import annotations

import asyncio

import pytest

from epp.tasks import cancel_and_wait, cancel_until_done


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


async def test_an_error_of_one_task_does_not_leave_the_others_running() -> None:
    """EndpointTasks.stop hands every endpoint's poll task over at once: one that ended with an
    error must not keep the others from being waited for (they would outlive stop())."""
    cleaned: list[str] = []

    async def failing() -> None:
        raise RuntimeError("poll crashed")

    async def worker() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)
            cleaned.append("worker")

    crashed, running = asyncio.create_task(failing()), asyncio.create_task(worker())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="poll crashed"):
        await cancel_and_wait(crashed, running)
    assert running.done() and cleaned == ["worker"]


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    """A stop() cancelled while it waits (a shutdown deadline) must end cancelled, not carry on as
    if the task it waited for had merely been cancelled by it."""
    release, carried_on = asyncio.Event(), []

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()

    async def stop() -> None:
        await cancel_and_wait(task)
        carried_on.append(True)

    task = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(stop())
    await asyncio.sleep(0)
    stopping.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert carried_on == [] and task.done()


async def test_a_caller_cleaning_up_after_its_own_cancellation_still_waits() -> None:
    """A task that caught its cancellation and stops its parts in `finally` (asyncio.run on
    Ctrl-C) is still cancelling: that older cancellation must not cut the later stops short."""
    stopped: list[str] = []

    async def background() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        tasks = [asyncio.create_task(background()) for _ in range(2)]
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await cancel_and_wait(tasks[0])
            stopped.append("first")
            await cancel_and_wait(tasks[1])
            stopped.append("second")

    running = asyncio.create_task(main())
    await asyncio.sleep(0)
    running.cancel()
    await running
    assert stopped == ["first", "second"]


async def test_cancel_until_done_cancels_again_a_task_that_lost_its_cancellation() -> None:
    """asyncio.wait_for on Python 3.11 drops a cancellation that arrives as its operand
    completes (redis-py sends every command under it): the task runs on as if never cancelled."""
    lost: list[asyncio.CancelledError] = []

    async def loop_losing_one_cancellation() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError as cancelled:
                if lost:
                    raise
                lost.append(cancelled)

    task = asyncio.create_task(loop_losing_one_cancellation())
    await asyncio.sleep(0)
    cancel_until_done(task)
    done, _ = await asyncio.wait([task], timeout=2)  # without a second cancellation: runs for ever
    assert done == {task}
    assert task.cancelled()
    assert len(lost) == 1

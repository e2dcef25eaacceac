"""The in-memory precise index's storage (`epp.datalayer.kvblocks.KVBlockIndex`): block key ->
holders in least-recently-used order, kept per run of keys rather than per key.

A prompt's keys are stored, looked up and moved together: a group's shared system prompt is tens
of keys that each request of the group matches in order, adjacent in the LRU order and with the same
holders. Kept per key, each lookup paid a hash probe and an LRU move for every one of them, each a
first touch of a cold entry (≈ 280 ns a key in a 1,000-endpoint run); kept per run it pays one
probe, a compare of the prompt's keys with the run's and one move. The order and the holders are
exactly the per-key ones: a run is keys adjacent in the order whose holders are equal, so moving a
run moves its keys in their order, and whatever would give part of a run another place or other
holders (a lookup that stops inside it, one key's holders changing) cuts the run there first.
Removing keys never cuts a run: the keys left stay adjacent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

R = TypeVar("R", bound="_Keyed")
Holders = str | dict[str, float]  # a pod's name when one pod holds it at weight 1, else {pod: weight}


class Run:
    """Keys adjacent in the LRU order, oldest first, with equal holders (this run's own object:
    no two runs share a holders dictionary)."""

    __slots__ = ("holders", "keys", "newer", "older")

    def __init__(self, keys: list[int], holders: Holders) -> None:
        self.keys = keys
        self.holders = holders
        self.older: Run = self
        self.newer: Run = self


def _copy(holders: Holders) -> Holders:
    return holders if isinstance(holders, str) else dict(holders)


class _Keyed(Protocol):
    keys: list[int]


def stretch(run: _Keyed, keys: Sequence[int], index: int) -> tuple[int, int]:
    """Where `keys[index]` (a key of `run`) is in `run`, and how many of `keys` from it on follow
    it there in order: (offset, length)."""
    stored = run.keys
    key = keys[index]
    offset = 0 if stored[0] == key else stored.index(key)
    length = len(stored) - offset
    if keys[index : index + length] == (stored if offset == 0 else stored[offset:]):
        return offset, length  # the rest of the run (a C-level compare)
    length = 1
    limit = min(len(stored) - offset, len(keys) - index)
    while length < limit and keys[index + length] == stored[offset + length]:
        length += 1
    return offset, length


def _split(
    run_of: dict[int, R], run: R, start: int, stop: int, copy: Callable[[R, list[int]], R]
) -> tuple[list[R], R]:
    """`run` cut before `start` and `stop`: its pieces in order (none empty) and the middle one.
    The largest piece keeps `run`, so the fewest keys are mapped to a new run (`copy(run, keys)`,
    with `run`'s value)."""
    keys = run.keys
    pieces = (keys[:start], keys[start:stop], keys[stop:])
    largest = max(range(3), key=lambda number: len(pieces[number]))
    out: list[R] = []
    middle = run
    for number, piece in enumerate(pieces):
        if not piece:
            continue
        if number == largest:
            part = run
            part.keys = piece
        else:
            part = copy(run, piece)
            for key in piece:
                run_of[key] = part
        out.append(part)
        if number == 1:
            middle = part
    return out, middle


class KeyRuns:
    """Block key -> holders, least recently used first, stored per run (see the module's
    docstring). Every method keeps the order and holders a per-key ordered map would have."""

    def __init__(self) -> None:
        self.run_of: dict[int, Run] = {}
        # the ring's sentinel: `newer` is the oldest run, `older` the newest
        self._end = Run([], "")

    def __len__(self) -> int:
        return len(self.run_of)

    def get(self, key: int) -> Holders | None:
        run = self.run_of.get(key)
        return None if run is None else run.holders

    def items(self) -> Iterator[tuple[int, Holders]]:
        """(key, holders) from the least recently used on."""
        run = self._end.newer
        while run is not self._end:
            for key in run.keys:
                yield key, run.holders
            run = run.newer

    def newest(self, count: int) -> list[int]:
        """Up to `count` most recently used keys, the newest first."""
        out: list[int] = []
        run = self._end.older
        while run is not self._end and len(out) < count:
            out.extend(reversed(run.keys[-(count - len(out)) :]))
            run = run.older
        return out

    # --- the order ----------------------------------------------------------------------------

    def _link_newest(self, run: Run) -> None:
        end = self._end
        run.older, run.newer = end.older, end
        end.older.newer = run
        end.older = run

    @staticmethod
    def _unlink(run: Run) -> None:
        run.older.newer = run.newer
        run.newer.older = run.older

    def move_to_end(self, run: Run) -> None:
        """`run`'s keys become the most recently used, in their order."""
        if self._end.older is not run:
            self._unlink(run)
            self._link_newest(run)

    def cut(self, run: Run, start: int, stop: int) -> Run:
        """`run.keys[start:stop]` as a run of their own, where they are in the order (the keys
        before and after them stay where they were)."""
        if start == 0 and stop == len(run.keys):
            return run
        where = run.older
        self._unlink(run)
        pieces, middle = _split(
            self.run_of, run, start, stop, lambda old, keys: Run(keys, _copy(old.holders))
        )
        for part in pieces:
            part.older, part.newer = where, where.newer
            where.newer.older = part
            where.newer = part
            where = part
        return middle

    def touch(self, keys: Sequence[int]) -> None:
        """Move each of `keys` held here to the end of the order, one after the other."""
        run_of, index, count = self.run_of, 0, len(keys)
        while index < count:
            run = run_of.get(keys[index])
            if run is None:
                index += 1
                continue
            offset, length = stretch(run, keys, index)
            self.move_to_end(self.cut(run, offset, offset + length))
            index += length

    # --- holders ------------------------------------------------------------------------------

    def hold(self, keys: Sequence[int], pod: str, weight: float, pod_cache_size: int) -> int:
        """`pod` holds each of `keys` in turn at `weight` (a holder keeps its highest weight, a key
        its `pod_cache_size` latest holders), each moved to the end: returns how many were new."""
        run_of, end = self.run_of, self._end
        admitted, index, count = 0, 0, len(keys)
        fresh: Run | None = None  # the run this call's new keys join while it is the newest
        while index < count:
            key = keys[index]
            run = run_of.get(key)
            if run is None:
                if fresh is None or end.older is not fresh:
                    fresh = Run([], pod if weight == 1.0 else {pod: weight})
                    self._link_newest(fresh)
                fresh.keys.append(key)
                run_of[key] = fresh
                admitted += 1
                index += 1
                continue
            offset, length = stretch(run, keys, index)
            run = self.cut(run, offset, offset + length)
            self.move_to_end(run)
            index += length
            holders = run.holders
            if isinstance(holders, str):
                if holders == pod:
                    continue  # held at weight 1 already, the highest
                holders = run.holders = {holders: 1.0}
            if holders.get(pod, 0.0) < weight:
                holders.pop(pod, None)
                holders[pod] = weight
                while len(holders) > pod_cache_size:
                    del holders[next(iter(holders))]
        return admitted

    def drop(self, key: int, pod: str) -> None:
        """`pod` no longer holds `key` (a key no pod holds is removed)."""
        run = self.run_of.get(key)
        if run is None:
            return
        holders = run.holders
        if isinstance(holders, str):
            if holders == pod:
                self._remove(run, key)
            return
        if pod not in holders:
            return
        if len(run.keys) > 1:
            offset = run.keys.index(key)
            run = self.cut(run, offset, offset + 1)
        holders = run.holders
        assert isinstance(holders, dict)
        del holders[pod]
        if not holders:
            self._remove(run, key)

    def pop_oldest(self) -> int:
        """Remove the least recently used key and return it."""
        run = self._end.newer
        key = run.keys[0]
        self._remove(run, key)
        return key

    def _remove(self, run: Run, key: int) -> None:
        run.keys.remove(key)
        del self.run_of[key]
        if not run.keys:
            self._unlink(run)


class PinRun:
    """Keys a pod's requests in flight pin, each by `count` requests."""

    __slots__ = ("count", "keys")

    def __init__(self, keys: list[int], count: int) -> None:
        self.keys = keys
        self.count = count


class PinRuns:
    """One pod's pin counts, key -> requests in flight pinning it, kept per run of keys pinned
    together: the requests of a group pin its shared prefix again and again, one count per run
    instead of one per key. Every method keeps the counts a per-key map would have."""

    def __init__(self) -> None:
        self.run_of: dict[int, PinRun] = {}

    def __len__(self) -> int:
        return len(self.run_of)

    def items(self) -> Iterator[tuple[int, int]]:
        for key, run in self.run_of.items():
            yield key, run.count

    def _cut(self, run: PinRun, start: int, stop: int) -> PinRun:
        if start == 0 and stop == len(run.keys):
            return run
        return _split(self.run_of, run, start, stop, lambda old, keys: PinRun(keys, old.count))[1]

    def add(self, keys: Sequence[int], orphans: dict[int, int] | None) -> list[int]:
        """One more request pins each of `keys` (in turn: a key listed twice counts twice). A key
        not pinned before starts from its count in `orphans`, taken out of it. Returns those."""
        run_of, index, count = self.run_of, 0, len(keys)
        fresh: list[int] = []
        joined: PinRun | None = None  # the run new keys join while their counts are its count
        while index < count:
            key = keys[index]
            run = run_of.get(key)
            if run is not None:
                offset, length = stretch(run, keys, index)
                self._cut(run, offset, offset + length).count += 1
                index += length
                continue
            pins = (orphans.pop(key, 0) if orphans else 0) + 1
            if joined is None or joined.count != pins:
                joined = PinRun([], pins)
            joined.keys.append(key)
            run_of[key] = joined
            fresh.append(key)
            index += 1
        return fresh

    def remove(self, keys: Sequence[int], orphans: dict[int, int] | None) -> list[int]:
        """A request pinning `keys` ended: one count less each (a key no longer pinned here is
        one count less in `orphans`). Returns the keys no request pins any more."""
        run_of, index, count = self.run_of, 0, len(keys)
        ended: list[int] = []
        while index < count:
            key = keys[index]
            run = run_of.get(key)
            if run is None:
                if orphans and (left := orphans.pop(key, 0) - 1) > 0:
                    orphans[key] = left
                index += 1
                continue
            offset, length = stretch(run, keys, index)
            run = self._cut(run, offset, offset + length)
            if run.count > 1:
                run.count -= 1
            else:
                for ended_key in run.keys:
                    del run_of[ended_key]
                ended += run.keys
            index += length
        return ended

    def pop(self, key: int) -> int | None:
        """Stop counting `key`: its count, or None when it was not pinned."""
        run = self.run_of.pop(key, None)
        if run is None:
            return None
        run.keys.remove(key)  # the rest of the run keeps its count: no cut
        return run.count

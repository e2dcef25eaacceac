"""SSRF allowlist: host AND port, canonical spelling, and the endpoint-file source."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from epp.datastore import Datastore, EndpointSpec
from epp.sidecar.allowlist import AllowList, EndpointFileSource
from epp.sidecar.hostport import HostPort
from epp.stack.processes import wait_until


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10.0.0.1:8000", HostPort("10.0.0.1", 8000)),
        ("[fd00:0:0::1]:8000", HostPort("fd00::1", 8000)),
        ("[FD00::1]:8000", HostPort("fd00::1", 8000)),
        ("Prefill-0.Pool.svc.:8000", HostPort("prefill-0.pool.svc", 8000)),
        ("10.0.0.1.:8000", HostPort("10.0.0.1", 8000)),
        ("[FE80::1%eth0]:8000", HostPort("fe80::1%eth0", 8000)),  # a zone id naming an interface
    ],
)
def test_hostport_spellings_are_canonical(text: str, expected: HostPort) -> None:
    assert HostPort.parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "10.0.0.1",
        "10.0.0.1:",
        "10.0.0.1:0",
        "10.0.0.1:70000",
        "fd00::1:8000",
        "user@10.0.0.1:8000",
        "10.0.0.1/x:8000",
        "a b:8000",
        ":8000",
        "10.0.0.1:\u0668\u0660\u0660\u0660",  # Arabic-Indic digits, which int() reads as 8000
        "10.0.0.1:\uff18\uff10\uff10\uff10",  # fullwidth digits
        "[::1%2f@evil.example]:80",  # a zone id Python takes: yarl refused the URL (a 500)
        "[fe80::1%eth0 x]:80",
    ],
)
def test_hostport_rejects_anything_but_host_and_port(text: str) -> None:
    with pytest.raises(ValueError):
        HostPort.parse(text)


@pytest.mark.parametrize(
    "host", ["127.1", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "10.0.0.1.5", "0", "pool.0x1"]
)
def test_hostport_refuses_legacy_ipv4_spellings(host: str) -> None:
    """The resolver's spellings of an address: aiohttp refuses to connect to them, so they used to
    pass as DNS names and reach the client as a 502 "no reply from prefiller"."""
    with pytest.raises(ValueError, match="not a canonical IPv4 address"):
        HostPort.parse(f"{host}:8000")


@pytest.mark.parametrize("host", ["prefill-0.pool.svc", "10-0-0-1.pool.svc", "host1", "a.b1"])
def test_hostport_keeps_names_with_digits(host: str) -> None:
    assert HostPort.parse(f"{host}:8000") == HostPort(host, 8000)


def test_allowlist_checks_host_and_port() -> None:
    allowlist = AllowList()
    assert not allowlist.synced
    allowlist.replace(["10.0.0.1:8000", "[fd00::1]:8000"])
    assert allowlist.synced
    assert allowlist.allows(HostPort.parse("10.0.0.1:8000"))
    assert allowlist.allows(HostPort.parse("[fd00:0::1]:8000"))
    assert not allowlist.allows(HostPort.parse("10.0.0.1:8200")), "another port of a pool pod"
    assert not allowlist.allows(HostPort.parse("10.0.0.2:8000"))


def test_a_mapped_spelling_of_an_allowed_ipv4_is_allowed_and_nothing_else() -> None:
    """`[::ffff:10.0.0.1]:8000` is the pod at 10.0.0.1:8000 (the sidecar connects there over
    IPv4): it was refused (403) as a host not in the pool. Only that mapping is read as IPv4; other
    IPv6 forms holding an IPv4 address (compatible, NAT64, SIIT) are other hosts."""
    allowlist = AllowList()
    allowlist.replace(["10.0.0.1:8000", "[::ffff:10.0.0.3]:8000"])
    for allowed in ("[::ffff:10.0.0.1]:8000", "[::ffff:a00:1]:8000", "[0:0:0:0:0:FFFF:10.0.0.1]:8000"):
        target = HostPort.parse(allowed)
        assert target == HostPort("10.0.0.1", 8000) and allowlist.allows(target), allowed
    assert allowlist.allows(HostPort.parse("10.0.0.3:8000")), "a list entry written mapped"
    for refused in (
        "[::ffff:10.0.0.1]:8001",
        "[::ffff:10.0.0.2]:8000",
        "[::10.0.0.1]:8000",
        "[64:ff9b::10.0.0.1]:8000",
        "[::ffff:0:10.0.0.1]:8000",
        "[::ffff:127.0.0.1]:8000",
    ):
        assert not allowlist.allows(HostPort.parse(refused)), refused


async def test_a_miss_waits_for_the_next_change_that_allows_it() -> None:
    """Many concurrent misses share one wait; each is admitted as soon as a change allows it."""
    allowlist = AllowList(catch_up=30.0)
    allowlist.replace(["10.0.0.1:8000"])
    late = HostPort.parse("10.0.0.2:8000")
    waiting = [asyncio.create_task(allowlist.admits(late)) for _ in range(50)]
    await asyncio.sleep(0)
    assert allowlist._next_change is not None, "the misses wait on one shared change"
    allowlist.replace(["10.0.0.3:8000"])  # a change that does not allow it: they keep waiting
    await asyncio.sleep(0)
    assert not any(task.done() for task in waiting)
    allowlist.replace(["10.0.0.2:8000"])
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == [True] * 50


async def test_a_target_never_reported_is_refused_after_the_catch_up() -> None:
    allowlist = AllowList(catch_up=0.05)
    allowlist.replace(["10.0.0.1:8000"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    first, second = await asyncio.gather(
        allowlist.admits(HostPort.parse("10.0.0.9:8000")), allowlist.admits(HostPort.parse("10.0.0.9:8000"))
    )
    assert (first, second) == (False, False)
    assert loop.time() - started >= 0.05
    allowlist.replace(["10.0.0.9:8000"])  # the shared future a timed-out waiter left is still usable
    assert await allowlist.admits(HostPort.parse("10.0.0.9:8000"))


async def test_without_catch_up_a_miss_is_refused_at_once() -> None:
    allowlist = AllowList()
    allowlist.replace(["10.0.0.1:8000"])
    assert await allowlist.admits(HostPort.parse("10.0.0.1:8000"))
    assert not await allowlist.admits(HostPort.parse("10.0.0.2:8000"))
    assert allowlist._next_change is None


def test_replace_swaps_the_whole_set_and_skips_malformed_entries() -> None:
    allowlist = AllowList()
    allowlist.replace(["10.0.0.1:8000"])
    allowlist.replace({"10.0.0.2:8000", "garbage"})
    assert len(allowlist) == 1
    assert allowlist.allows(HostPort.parse("10.0.0.2:8000"))
    assert not allowlist.allows(HostPort.parse("10.0.0.1:8000"))


def test_follow_tracks_a_datastore() -> None:
    datastore = Datastore()
    allowlist = AllowList()
    allowlist.follow(datastore)
    assert not allowlist.synced
    datastore.replace_all([EndpointSpec(name="p0", address="10.0.0.1", port=8000)])
    assert allowlist.allows(HostPort.parse("10.0.0.1:8000"))
    datastore.replace_all([EndpointSpec(name="p1", address="10.0.0.2", port=8000)])
    assert not allowlist.allows(HostPort.parse("10.0.0.1:8000"))
    assert allowlist.allows(HostPort.parse("10.0.0.2:8000"))
    datastore.replace_all([])
    assert allowlist.synced and len(allowlist) == 0


async def test_endpoint_file_source_rereads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text("endpoints:\n  - {address: 10.0.0.1, port: 8000}\n")
    source = EndpointFileSource(path, poll_interval=0.01)
    await source.start()
    try:
        assert source.allowlist.allows(HostPort.parse("10.0.0.1:8000"))
        path.write_text(
            "endpoints:\n  - {address: 10.0.0.2, port: 8000}\n  - {address: 10.0.0.3, port: 8001}\n"
        )

        async def reloaded() -> bool | None:
            return len(source.allowlist) == 2 or None

        await wait_until(reloaded, "the allowlist to follow the edited file", timeout=10)
        assert not source.allowlist.allows(HostPort.parse("10.0.0.1:8000"))
        assert source.allowlist.allows(HostPort.parse("10.0.0.3:8001"))
    finally:
        await source.stop()


async def test_endpoint_file_source_refuses_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text("endpoints: [{address: 10.0.0.1}]\n")
    with pytest.raises(ValueError, match="port"):
        await EndpointFileSource(path).start()

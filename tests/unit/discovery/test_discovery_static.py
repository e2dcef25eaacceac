"""Standalone discovery: the endpoint file, its reloads, and --endpoint flags."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from epp.datastore import Datastore, EndpointSpec
from epp.discovery.static import DiscoveryError, FileDiscovery, parse_endpoint_file, parse_endpoint_flag

FILE = """
endpoints:
  - address: 10.0.0.1
    port: 8000
    models: [m]
    labels: {llm-d.ai/role: decode}
  - name: p0
    address: 10.0.0.2
    port: 8000
    metricsPort: 9000
"""


def test_file_entries_become_specs() -> None:
    first, second = parse_endpoint_file(FILE)
    assert (first.name, first.hostport, first.models, dict(first.labels)) == (
        "10.0.0.1:8000",
        "10.0.0.1:8000",
        frozenset({"m"}),
        {"llm-d.ai/role": "decode"},
    )
    assert (second.name, second.metrics_hostport) == ("p0", "10.0.0.2:9000")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("endpoints: [{address: a}]", "endpoints.0.port: Field required"),
        (
            "endpoints: [{address: a, port: 70000}]",
            "endpoints.0.port: Input should be less than or equal to 65535",
        ),
        (
            "endpoints: [{address: a, port: 1, colour: red}]",
            "endpoints.0.colour: Extra inputs are not permitted",
        ),
        ("hosts: []", "endpoints: Field required"),
        ("", "f.yaml: expected a mapping with an `endpoints:` list, found an empty file"),
        ("- address: 10.0.0.1", "f.yaml: expected a mapping with an `endpoints:` list, found a YAML list"),
        ("endpoints: [", "invalid YAML"),
        (
            "endpoints: [{address: 10.0.0.1, port: 1, name: x}, {address: 10.0.0.2, port: 2, name: x}]",
            "duplicate endpoint names",
        ),
        (
            "endpoints: [{address: 10.0.0.1, port: 1, name: a}, {address: 10.0.0.2, port: 1, name: b},"
            " {address: '::ffff:10.0.0.2', port: 1, name: c}, {address: 10.0.0.1, port: 1, name: d}]",
            "f.yaml: endpoints at the same address and port: 10.0.0.1:1 (a, d); 10.0.0.2:1 (b, c)",
        ),
        ("endpoints: [{address: vllm.local, port: 8000}]", "endpoints.0.address: value is not a valid IP"),
    ],
)
def test_bad_files_name_the_field(text: str, message: str) -> None:
    with pytest.raises(DiscoveryError, match=r"f\.yaml") as caught:
        parse_endpoint_file(text, "f.yaml")
    assert message in str(caught.value)


def test_model_server_metrics_port_fills_in_for_entries_without_their_own() -> None:
    first, second = parse_endpoint_file(FILE, metrics_port=9400)
    assert (first.metrics_hostport, second.metrics_hostport) == ("10.0.0.1:9400", "10.0.0.2:9000")
    assert parse_endpoint_flag("127.0.0.1:8000", metrics_port=9400).metrics_hostport == "127.0.0.1:9400"
    assert parse_endpoint_flag("127.0.0.1:8000").metrics_port is None


def test_endpoint_flags_including_ipv6() -> None:
    assert parse_endpoint_flag("127.0.0.1:8000", ["m"]).models == {"m"}
    v6 = parse_endpoint_flag("[::1]:8000")
    assert (v6.address, v6.hostport) == ("::1", "[::1]:8000")
    for bad in ("nohost", "h:0", "h:x", ":80"):
        with pytest.raises(DiscoveryError, match="expected host:port"):
            parse_endpoint_flag(bad)
    with pytest.raises(DiscoveryError, match="the host must be an IP address"):
        parse_endpoint_flag("vllm.local:8000")


def test_an_endpoint_flags_ip_is_written_as_envoy_writes_it() -> None:
    """Envoy names a host by its address's canonical text (`[::1]:8000` for a cluster host given
    as 0:0:0:0:0:0:0:1): the destination the EPP sends must be that text, or the override-host
    policy finds no such host and the endpoint Envoy reports as having served (that same text) is
    not the one the EPP picked, which it then suspends as if it had failed."""
    for given, hostport in (
        ("[0:0:0:0:0:0:0:1]:8000", "[::1]:8000"),
        ("[FD00::AB]:8001", "[fd00::ab]:8001"),
        ("[::ffff:a00:1]:8002", "10.0.0.1:8002"),  # IPv4-mapped: the IPv4 it maps
    ):
        spec = parse_endpoint_flag(given)
        assert (spec.hostport, spec.name) == (hostport, hostport), given


@pytest.mark.parametrize("mapped", ["::ffff:10.0.0.1", "::FFFF:a00:1", "0:0:0:0:0:ffff:a00:1"])
def test_an_ipv4_mapped_address_is_its_ipv4_address(mapped: str) -> None:
    """`::ffff:10.0.0.1` reaches the pod at 10.0.0.1 (a dual-stack socket connects over IPv4): it
    was a second endpoint beside the same pod written as IPv4, each taking half its load, and a
    served-endpoint header or allowlist entry written one way missed the other."""
    (entry,) = parse_endpoint_file(f"endpoints:\n  - address: '{mapped}'\n    port: 8000\n")
    assert (entry.address, entry.hostport, entry.name) == ("10.0.0.1", "10.0.0.1:8000", "10.0.0.1:8000")
    ipv4 = "{address: 10.0.0.1, port: 8000, name: a}"
    text = f"endpoints: [{ipv4}, {{address: '{mapped}', port: 8000, name: b}}]"
    with pytest.raises(
        DiscoveryError, match=r"endpoints at the same address and port: 10\.0\.0\.1:8000 \(a, b\)"
    ):
        parse_endpoint_file(text, "f.yaml")
    # Other IPv6 forms holding an IPv4 address are other hosts, and stay IPv6.
    for other, written in (("::10.0.0.1", "::a00:1"), ("64:ff9b::10.0.0.1", "64:ff9b::a00:1")):
        (entry,) = parse_endpoint_file(f"endpoints:\n  - address: '{other}'\n    port: 8000\n")
        assert entry.address == written


@asynccontextmanager
async def watched(tmp_path: Path) -> AsyncIterator[tuple[Path, Datastore]]:
    """FILE as the endpoints file, watched every 10 ms: its path and the datastore it fills."""
    path = tmp_path / "endpoints.yaml"
    path.write_text(FILE)
    datastore = Datastore()
    discovery = FileDiscovery(path, datastore, poll_interval=0.01)
    await discovery.start()
    try:
        yield path, datastore
    finally:
        await discovery.stop()


MOVED = FILE.replace("10.0.0.1", "10.0.0.9")


async def moved(datastore: Datastore) -> list[str]:
    """The endpoint names once MOVED is loaded (or after 5 s)."""
    for _ in range(500):
        if datastore.get("10.0.0.9:8000"):
            break
        await asyncio.sleep(0.01)
    return [e.name for e in datastore.endpoints()]


async def test_file_is_reloaded_on_change_and_a_broken_edit_is_ignored(tmp_path: Path) -> None:
    async with watched(tmp_path) as (path, datastore):
        assert datastore.synced
        kept = datastore.get("p0")
        assert kept is not None
        kept.inflight_requests = 3
        path.write_text(MOVED)
        assert await moved(datastore) == ["p0", "10.0.0.9:8000"]
        assert datastore.get("p0") is kept, "an unchanged endpoint keeps its state across reloads"
        path.write_text("endpoints: [")
        await asyncio.sleep(0.1)
        assert len(datastore.endpoints()) == 2


async def test_a_file_that_cannot_be_looked_at_for_a_while_is_watched_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A path whose stat fails other than by its absence (a symlink loop here; a directory made
    unreadable, or a part of the path made a file, fail the same way) keeps the previous endpoints
    and is logged once; the edit that follows is loaded. The watch task died of it before, and no
    later edit of the file was read until the EPP restarted."""
    async with watched(tmp_path) as (path, datastore):
        path.unlink()
        loop = tmp_path / "loop.yaml"
        loop.symlink_to(path)
        path.symlink_to(loop)
        for _ in range(500):
            if "Too many levels of symbolic links" in caplog.text:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # ten more polls of the looping path
        assert caplog.text.count("Too many levels of symbolic links") == 1
        assert sorted(e.name for e in datastore.endpoints()) == ["10.0.0.1:8000", "p0"]
        path.unlink()
        path.write_text(MOVED)
        assert sorted(await moved(datastore)) == ["10.0.0.9:8000", "p0"]


def test_first_load_of_a_broken_file_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("endpoints: 3")
    with pytest.raises(DiscoveryError):
        FileDiscovery(path, Datastore()).load()


async def test_a_reloaded_file_is_parsed_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large endpoints file (~0.1 s of CPU per 3,000 entries through libyaml, seconds at the
    1 MiB limit in pure Python) is read and parsed in a thread: parsed on the event loop, every
    request in flight stalled that long at each edit. (Comparing the loop's stalls with an inline
    parse failed both quiet and loaded: a collection of the test session's heap stalls either.)"""
    path = tmp_path / "endpoints.yaml"
    path.write_text(FILE)
    datastore = Datastore()
    discovery = FileDiscovery(path, datastore, poll_interval=0.01)
    threads: set[int] = set()
    parse = discovery._read_and_parse

    def recorded() -> tuple[list[EndpointSpec], list[str]]:
        threads.add(threading.get_ident())
        return parse()

    await discovery.start()
    monkeypatch.setattr(discovery, "_read_and_parse", recorded)
    entries = "".join(f"  - address: 10.0.{i // 256}.{i % 256}\n    port: 8000\n" for i in range(3000))
    try:
        path.write_text("endpoints:\n" + entries)
        for _ in range(3000):
            if len(datastore.endpoints()) == 3000:
                break
            await asyncio.sleep(0.005)
        assert len(datastore.endpoints()) == 3000
    finally:
        await discovery.stop()
    assert threads and threading.get_ident() not in threads

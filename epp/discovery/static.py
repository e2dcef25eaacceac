"""Standalone discovery: endpoints from a YAML file (re-read when it changes) or from flags.

File format:

    endpoints:
      - address: 127.0.0.1
        port: 8000
        name: sim-0                  # optional, default "<address>:<port>"
        metricsPort: 8000            # optional, default port
        models: [sim-model]          # optional: served model names; empty = any model
        labels: {llm-d.ai/role: decode}

Addresses are IPs, written as `canonical_ip` writes them: an IPv4-mapped IPv6 address
(`::ffff:10.0.0.1`) is the IPv4 address it maps, so it and `10.0.0.1` at one port are the same
endpoint (listed twice: refused, as any server listed twice).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, IPvAnyAddress, ValidationError

from epp.compiled import safe_yaml
from epp.datastore import Datastore, EndpointSpec
from epp.datastore.endpoint import canonical_ip, join_host_port, split_host_port
from epp.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class _EndpointEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    address: IPvAnyAddress  # Envoy's ORIGINAL_DST cluster connects to an IP, never resolves names
    port: int = Field(ge=1, le=65535)
    name: str | None = None
    metrics_port: int | None = Field(default=None, alias="metricsPort", ge=1, le=65535)
    models: list[str] = []
    labels: dict[str, str] = {}


class _EndpointFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[_EndpointEntry]


class DiscoveryError(ValueError):
    """The endpoint file or flag is malformed; the message names the field."""


def _spec(entry: _EndpointEntry, metrics_port: int | None) -> EndpointSpec:
    address = canonical_ip(str(entry.address))
    return EndpointSpec(
        name=entry.name or join_host_port(address, entry.port),
        address=address,
        port=entry.port,
        labels=MappingProxyType(dict(entry.labels)),
        models=frozenset(entry.models),
        metrics_port=entry.metrics_port or metrics_port,
    )


def parse_endpoint_file(
    text: str, source: str = "<text>", metrics_port: int | None = None
) -> list[EndpointSpec]:
    """`metrics_port` (--model-server-metrics-port) applies to entries without a metricsPort."""
    try:
        data: Any = safe_yaml(text)
        if not isinstance(data, dict):  # pydantic would name its private model: "instance of _EndpointFile"
            found = "an empty file" if data is None else f"a YAML {type(data).__name__}"
            raise DiscoveryError(f"{source}: expected a mapping with an `endpoints:` list, found {found}")
        parsed = _EndpointFile.model_validate(data)
    except yaml.YAMLError as exc:
        raise DiscoveryError(f"{source}: invalid YAML: {exc}") from None
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise DiscoveryError(f"{source}: {details}") from None
    specs = [_spec(entry, metrics_port or None) for entry in parsed.endpoints]
    duplicates = sorted(name for name, count in Counter(s.name for s in specs).items() if count > 1)
    if duplicates:
        raise DiscoveryError(f"{source}: duplicate endpoint names {duplicates}")
    names_at: dict[str, list[str]] = {}
    for spec in specs:
        names_at.setdefault(spec.hostport, []).append(spec.name)
    shared = [f"{hostport} ({', '.join(names)})" for hostport, names in names_at.items() if len(names) > 1]
    if shared:
        # One server listed twice was two candidates: picked twice as often, its in-flight load
        # split between them, so neither ever looked as busy as the server is.
        raise DiscoveryError(f"{source}: endpoints at the same address and port: {'; '.join(shared)}")
    return specs


def parse_endpoint_flag(
    value: str, models: Sequence[str] = (), metrics_port: int | None = None
) -> EndpointSpec:
    """`host:port` (IPv6 as `[addr]:port`) from a repeated --endpoint flag, scraped on
    `metrics_port` (--model-server-metrics-port) if given."""
    try:
        host, port = split_host_port(value)
    except ValueError:
        host, port = "", None
    if not host or port is None or not 0 < port < 65536:
        raise DiscoveryError(f"--endpoint {value!r}: expected host:port")
    try:
        host = canonical_ip(host)  # as Envoy writes it: the host:port it reports is compared
    except ValueError:
        raise DiscoveryError(f"--endpoint {value!r}: the host must be an IP address") from None
    return EndpointSpec(
        name=join_host_port(host, port),
        address=host,
        port=port,
        models=frozenset(models),
        metrics_port=metrics_port or None,
    )


# A file's text and its name -> its endpoints and one problem per entry left out (raises
# ValueError for a file that cannot be used at all).
EndpointParser = Callable[[str, str], tuple[list[EndpointSpec], list[str]]]


class FileDiscovery:
    """Loads the file into the datastore, then polls its mtime and reloads on change. A broken
    edit is logged and ignored: the last good endpoint set stays in force. `parse` reads another
    format (llm-d's file-discovery plugin): at start a problem with any entry stops the EPP; on a
    reload the entries with problems are left out and logged. `watch` False: read once."""

    def __init__(
        self,
        path: Path,
        datastore: Datastore,
        poll_interval: float = 1.0,
        metrics_port: int | None = None,
        parse: EndpointParser | None = None,
        watch: bool = True,
    ) -> None:
        self._path = path
        self._datastore = datastore
        self._poll_interval = poll_interval
        self._parse = parse or (lambda text, source: (parse_endpoint_file(text, source, metrics_port), []))
        self._watch_file = watch
        self._stamp: tuple[float, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def load(self) -> None:
        """First load: errors propagate so the EPP refuses to start on a broken file."""
        self._stamp = self._file_stamp()
        try:
            text = self._path.read_text()
        except OSError as exc:
            raise DiscoveryError(f"{self._path}: cannot read the endpoints file: {exc.strerror}") from None
        specs, problems = self._parse(text, str(self._path))
        if problems:
            raise DiscoveryError("; ".join(problems))
        self._datastore.replace_all(specs)

    async def start(self) -> None:
        self.load()
        if self._watch_file:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="endpoint-file-watch")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    def _file_stamp(self) -> tuple[float, int] | None:
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            return None
        return (stat.st_mtime, stat.st_size)

    def _read_and_parse(self) -> tuple[list[EndpointSpec], list[str]]:
        return self._parse(self._path.read_text(), str(self._path))

    async def _watch(self) -> None:
        unseen: str | None = None  # why the file could not be looked at, as last logged
        while True:
            await asyncio.sleep(self._poll_interval)
            try:
                stamp = await asyncio.to_thread(self._file_stamp)
            except OSError as exc:  # not its absence: a symlink loop, a directory made unreadable
                if str(exc) != unseen:  # logged once, not at every poll
                    log.error("keeping the previous endpoints: %s", exc)
                unseen = str(exc)
                continue
            unseen = None
            if stamp is None or stamp == self._stamp:
                continue
            self._stamp = stamp
            try:  # read and parsed in a thread: a large file's YAML takes seconds of CPU
                specs, problems = await asyncio.to_thread(self._read_and_parse)
            except (ValueError, OSError) as exc:
                log.error("keeping the previous endpoints: %s", exc)
                continue
            for problem in problems:
                log.error("left out: %s", problem)
            log.info("endpoint file changed: %d endpoints", len(specs))
            self._datastore.replace_all(specs)

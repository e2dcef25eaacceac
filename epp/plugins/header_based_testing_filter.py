"""`header-based-testing-filter` (GIE conformance): keep only the endpoints the request header
`test-epp-endpoint-selection` names, as `IP` or `IP:port`, comma-separated, in header order. No
header keeps nothing. As in GIE, at most one endpoint per IP is kept, and a bare IP selects the
last endpoint with that IP."""

from __future__ import annotations

from epp.datastore import Endpoint
from epp.framework import Plugin, register
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter

SELECTION_HEADER = "test-epp-endpoint-selection"


@register
class HeaderBasedTestingFilter(Plugin, Filter):
    type_name = "header-based-testing-filter"

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        wanted = request.headers.get(SELECTION_HEADER, "").strip()
        if not wanted:
            return []
        by_ip = {_bare(e.address): e for e in candidates}
        by_hostport = {f"{_bare(e.address)}:{e.port}": e for e in candidates}
        kept: list[Endpoint] = []
        seen_ips: set[str] = set()
        for item in (part.strip() for part in wanted.split(",")):
            if not item:
                continue
            host, port = _split(item)
            endpoint = by_hostport.get(f"{host}:{port}") if port else by_ip.get(host)
            if endpoint is not None and _bare(endpoint.address) not in seen_ips:
                seen_ips.add(_bare(endpoint.address))
                kept.append(endpoint)
        return kept


def _bare(host: str) -> str:
    return host.strip().strip("[]")


def _split(item: str) -> tuple[str, str]:
    """`host:port`, `[v6]:port`, or a bare host (IPv4, IPv6 with or without brackets)."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, rest.removeprefix(":")
    if item.count(":") == 1:
        host, _, port = item.partition(":")
        return host, port
    return _bare(item), ""

"""`host:port` values from headers and endpoint lists, parsed strictly and normalised so that an
allowlist comparison cannot be fooled by spelling (IPv6 forms, case, brackets, URL syntax), nor
refuse an allowed host spelled another way (an IPv4-mapped IPv6 address is its IPv4 address)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from epp.datastore.endpoint import canonical_ip, join_host_port

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_ZONE = re.compile(r"^[0-9A-Za-z_.-]+$")
"""An IPv6 zone id as interfaces are named: Python takes any text after `%` (`::1%2f@x y`),
which in a URL's authority is userinfo, spaces and more."""
_NUMBER_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")
"""A last label that makes a name an IPv4 address in URL syntax (WHATWG's "ends in a number"):
`127.1`, `2130706433`, `0x7f.1` and `0177.0.0.1` are the resolver's legacy spellings of 127.0.0.1,
which aiohttp refuses to connect to; only the canonical dotted quad is an address here."""


def normalise_host(host: str) -> str:
    """Canonical text of an IP literal (brackets stripped), or a lower-cased DNS name.
    Anything else (userinfo, paths, spaces...) is rejected, so it can never reach a URL."""
    bare = host.strip()
    if bare.startswith("[") and bare.endswith("]"):
        bare = bare[1:-1]
    try:
        canonical = canonical_ip(bare)  # an IPv4-mapped address as the IPv4 it maps: the same host
    except ValueError:
        pass
    else:
        if not _ZONE.match(canonical.partition("%")[2] or "0"):
            raise ValueError(f"invalid host {host!r}: a zone id is an interface name or number")
        return canonical
    name = bare.lower().rstrip(".")
    if name != bare.lower():
        try:  # `10.0.0.1.`: an address with the root's dot, as URL parsers read it
            return ipaddress.IPv4Address(name).compressed
        except ValueError:
            pass
    if not _HOSTNAME.match(name):
        raise ValueError(f"invalid host {host!r}")
    if _NUMBER_LABEL.match(name.rpartition(".")[2]):
        raise ValueError(f"invalid host {host!r}: not a canonical IPv4 address")
    return name


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def of(cls, host: str, port: int) -> HostPort:
        if not 0 < port < 65536:
            raise ValueError(f"invalid port {port}")
        return cls(normalise_host(host), port)

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """`host:port`, `[v6]:port`; the port is required (the EPP always sends one)."""
        host, sep, port = text.strip().rpartition(":")
        # isdigit() alone takes any script's digits ("٣٥٥٥٩"), which int() reads as a port
        if not sep or not (port.isascii() and port.isdigit()) or (":" in host and not host.startswith("[")):
            raise ValueError(f"expected host:port, got {text!r}")
        return cls.of(host, int(port))

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)

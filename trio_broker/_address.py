"""Broker addresses as people write them: parsed and printed in one place.

``HOST:PORT``, or ``[HOST]:PORT`` for an IPv6 host (as in URLs, so that the port is never
ambiguous); the command line, the client and the broker's own seeds all use these.
"""

from __future__ import annotations

from collections.abc import Iterable

Address = tuple[str, int]
"""A broker's ``(host, port)``."""


def parse_address(seed: str | tuple[str, int]) -> Address:
    """``"HOST:PORT"``, ``"[IPv6]:PORT"`` or ``(host, port)`` to ``(host, port)``; ValueError
    (TypeError for neither a string nor a pair) says what is wrong."""
    if isinstance(seed, tuple):
        if len(seed) != 2:
            raise ValueError(f"a broker address is (host, port), got {seed!r}")
        host, port = seed
        if not isinstance(host, str) or not host:
            raise ValueError(f"bad host in broker address {seed!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"a broker address's port must be 1-65535, got {seed!r}")
        return host, port
    if not isinstance(seed, str):
        raise TypeError(f"a broker address is 'HOST:PORT' or (host, port), got {seed!r}")
    text = seed.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"an IPv6 address must look like [HOST]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"a broker address must look like HOST:PORT, got {text!r}")
        if ":" in host:
            raise ValueError(f"write an IPv6 address in brackets, as [{host}]:{port_text}")
    if not host:
        raise ValueError(f"a broker address needs a host, got {text!r}")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"a broker address's port must be 1-65535, got {text!r}")
    return host, int(port_text)


def parse_addresses(value: str | Iterable[str]) -> list[Address]:
    """A comma-separated list, or several of them (repeated flags, a TOML list).

    Empty items are skipped; duplicates are kept once, in their first place."""
    items = [value] if isinstance(value, str) else list(value)
    found: list[Address] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected HOST:PORT strings, got {item!r}")
        for part in item.split(","):
            if part.strip():
                address = parse_address(part)
                if address not in found:
                    found.append(address)
    return found


def format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

"""Seed brokers on the command line: parsed in one place, for ``node`` and ``client`` alike.

A seed list is ``HOST:PORT`` items separated by commas, from repeated ``--seed`` flags, the
``TRIO_BROKER_SEEDS`` environment variable or a settings file. IPv6 hosts are written in
brackets (``[::1]:9001``), as in URLs, so that the port is never ambiguous.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping

SEEDS_ENV = "TRIO_BROKER_SEEDS"
DEFAULT_SEED = ("127.0.0.1", 9001)

Address = tuple[str, int]


def parse_seed(text: str) -> Address:
    """``"HOST:PORT"`` or ``"[IPv6]:PORT"`` to ``(host, port)``; ValueError says what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"an IPv6 seed must look like [HOST]:PORT, got {text!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"a seed must look like HOST:PORT, got {text!r}")
        if ":" in host:
            raise ValueError(f"write an IPv6 seed in brackets, as [{host}]:{port_text}")
    if not host:
        raise ValueError(f"a seed needs a host, got {text!r}")
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"a seed's port must be 1-65535, got {text!r}")
    return host, int(port_text)


def parse_seeds(value: str | Iterable[str]) -> list[Address]:
    """A comma-separated list, or several of them (repeated flags, a TOML list).

    Empty items are skipped; duplicates are kept once, in their first place."""
    items = [value] if isinstance(value, str) else list(value)
    seeds: list[Address] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"expected HOST:PORT strings, got {item!r}")
        for part in item.split(","):
            if part.strip():
                seed = parse_seed(part)
                if seed not in seeds:
                    seeds.append(seed)
    return seeds


def format_seed(seed: Address) -> str:
    host, port = seed
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def seed_list(text: str) -> str:
    """argparse ``type=`` for ``--seed``: checks every item now, keeps the text."""
    try:
        if not parse_seeds(text):
            raise ValueError("no seed given")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def client_seeds(flags: list[str] | None, environ: Mapping[str, str]) -> list[Address]:
    """The client's seeds: the ``--seed`` flags, else ``TRIO_BROKER_SEEDS``, else the default.

    ValueError (naming the variable) if the environment variable holds no valid list."""
    if flags:
        return parse_seeds(flags)
    text = environ.get(SEEDS_ENV, "")
    if text.strip():
        try:
            seeds = parse_seeds(text)
        except ValueError as exc:
            raise ValueError(f"{SEEDS_ENV}: {exc}") from None
        if not seeds:
            raise ValueError(f"{SEEDS_ENV} holds no HOST:PORT")
        return seeds
    return [DEFAULT_SEED]

"""Seed brokers on the command line: parsed in one place, for ``node`` and ``client`` alike.

A seed list is ``HOST:PORT`` items separated by commas, from repeated ``--seed`` flags, the
``TRIO_BROKER_SEEDS`` environment variable or a settings file. IPv6 hosts are written in
brackets (``[::1]:9001``), as in URLs, so that the port is never ambiguous.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from .._address import Address, format_address, parse_address, parse_addresses

SEEDS_ENV = "TRIO_BROKER_SEEDS"
DEFAULT_SEED = ("127.0.0.1", 9001)

# One parser for every address the project reads (trio_broker/_address.py).
parse_seed = parse_address
parse_seeds = parse_addresses
format_seed = format_address


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

"""The trio shell: broker lifetimes, connections, group commit.

Its names are loaded when first used (PEP 562): a process that only needs the configuration's
defaults (the command line's client commands, which build every command's parser) does not
import the broker, its storage and its metrics, about half of ``import trio_broker``'s time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_names

if TYPE_CHECKING:
    from ._broker import Broker
    from ._config import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, BrokerConfig
    from ._log import configure_logging
    from ._membership import IdentityMismatch, JoinFailed
    from ._open import open_broker, serve_broker
    from ._statistics import BrokerStatistics

_WHERE = {
    "Broker": "._broker",
    "BrokerConfig": "._config",
    "DEFAULT_DATA_DIR": "._config",
    "DEFAULT_HOST": "._config",
    "DEFAULT_PORT": "._config",
    "configure_logging": "._log",
    "IdentityMismatch": "._membership",
    "JoinFailed": "._membership",
    "open_broker": "._open",
    "serve_broker": "._open",
    "BrokerStatistics": "._statistics",
}

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Broker",
    "BrokerConfig",
    "BrokerStatistics",
    "IdentityMismatch",
    "JoinFailed",
    "configure_logging",
    "open_broker",
    "serve_broker",
]


__getattr__, __dir__ = lazy_names(globals(), _WHERE)

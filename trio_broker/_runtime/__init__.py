"""The trio shell: broker lifetimes, connections, group commit."""

from ._broker import Broker
from ._config import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, BrokerConfig
from ._log import configure_logging
from ._membership import IdentityMismatch, JoinFailed
from ._open import open_broker, serve_broker
from ._statistics import BrokerStatistics

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

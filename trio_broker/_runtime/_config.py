"""A broker's configuration: one frozen object, validated when built."""

from __future__ import annotations

import math
import os
from pathlib import Path

import attrs

from .._ids import BROKER_ID_RE, CLUSTER_ID_RE
from .._protocol import DEFAULT_MAX_FRAME

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9001
DEFAULT_DATA_DIR = "trio-broker-data"


def _check_optional_id(pattern):
    def check(instance, attribute, value):
        if value is not None and not pattern.fullmatch(value):
            raise ValueError(f"{attribute.name} must look like {pattern.pattern}, got {value!r}")

    return check


def _positive(instance, attribute, value):
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _port(instance, attribute, value):
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be between 0 and 65535, got {value!r}")


def _parse_seed(seed: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(seed, tuple):
        return seed
    host, sep, port = seed.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a seed must look like HOST:PORT, got {seed!r}")
    return host, int(port)


@attrs.frozen(kw_only=True)
class BrokerConfig:
    """Everything a broker needs to start. Only ``data_dir`` has no sensible default elsewhere.

    ``port=0`` asks the operating system for a free port (tests use it); the broker reports the
    port it got as :attr:`Broker.port`.
    """

    data_dir: Path = attrs.field(converter=lambda p: Path(os.fspath(p)))
    host: str = DEFAULT_HOST
    port: int = attrs.field(default=DEFAULT_PORT, validator=_port)
    advertise_host: str | None = None
    """Host name announced to clients and peers (CLUSTER_QUERY, JOIN_CLUSTER, PEER_HELLO);
    defaults to ``host``."""
    advertise_port: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_port)
    )
    """Port announced likewise; defaults to the port the broker listens on (a proxy or a
    port mapping in front of the broker needs its own port announced)."""
    broker_id: str | None = attrs.field(default=None, validator=_check_optional_id(BROKER_ID_RE))
    cluster_id: str | None = attrs.field(default=None, validator=_check_optional_id(CLUSTER_ID_RE))
    seeds: tuple[tuple[str, int], ...] = attrs.field(
        default=(), converter=lambda seeds: tuple(_parse_seed(s) for s in seeds)
    )
    join_wait: bool = False
    """A new broker founds no cluster of its own: it waits, with an empty membership, until
    the leader of ``cluster_id`` (required) adds it (``client add-member HOST:PORT``)."""
    metrics_port: int | None = attrs.field(default=None, validator=attrs.validators.optional(_port))
    """Serve Prometheus metrics at ``http://host:metrics_port/metrics`` (0: any free port)."""
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=_positive)
    """Largest frame accepted or sent, in bytes (length prefix excluded)."""
    max_connections: int = attrs.field(default=10_000, validator=_positive)
    max_in_flight: int = attrs.field(default=256, validator=_positive)
    """Requests one connection may have pipelined before the broker stops reading from it."""
    max_pending: int = attrs.field(default=8192, validator=_positive)
    """Proposals waiting to be applied, across all connections, before requests wait."""
    shutdown_grace: float = attrs.field(default=5.0, validator=_positive)
    """Seconds in-flight requests get to finish when the broker shuts down."""
    heartbeat_interval: float = attrs.field(default=0.2, validator=_positive)
    """Seconds between the leader's HEARTBEATs (the design's diagrams use 5)."""
    failure_timeout: float = attrs.field(default=1.5, validator=_positive)
    """Seconds of silence after which a member is ``inactive``, a replica starts an election
    (randomised up to twice this, lower broker ids first) and a leader that has not heard from
    a majority steps down (the design's diagrams use 15)."""
    compact_threshold: int = attrs.field(default=5_000, validator=_positive)
    """Applied log entries beyond ``compact_keep`` that trigger a compaction."""
    compact_keep: int = attrs.field(default=500, validator=_positive)
    """Applied entries kept in the log after a compaction, for replicas slightly behind."""

    def __attrs_post_init__(self) -> None:
        if self.join_wait and (self.cluster_id is None or self.seeds):
            raise ValueError(
                "join_wait needs the cluster_id of the cluster that will add this broker, "
                "and no seeds (with seeds, the broker asks to join by itself)"
            )
        if self.failure_timeout < 2 * self.heartbeat_interval:
            raise ValueError(
                f"failure_timeout ({self.failure_timeout}) must be at least twice "
                f"heartbeat_interval ({self.heartbeat_interval})"
            )

    @property
    def announced_host(self) -> str:
        return self.advertise_host or self.host

    @property
    def tick_seconds(self) -> float:
        """The consensus core counts time in ticks of half a heartbeat interval."""
        return self.heartbeat_interval / 2

    @property
    def heartbeat_ticks(self) -> int:
        return 2

    @property
    def election_ticks(self) -> int:
        return max(self.heartbeat_ticks + 1, math.ceil(self.failure_timeout / self.tick_seconds))

    @property
    def max_data_bytes(self) -> int:
        """Largest stored value: a READ response must still fit in one frame."""
        return max(self.max_frame - 256, 1)

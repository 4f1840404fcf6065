"""A broker's configuration: one frozen object, validated when built."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from .._address import parse_address
from .._core._commands import MAX_GROUPS
from .._core._metadata import MAX_BROKERS, MAX_REPLICATION_FACTOR
from .._ids import BROKER_ID_RE, CLUSTER_ID_RE
from .._protocol import DEFAULT_MAX_FRAME
from ._disk_space import free_space

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


def _at_most(limit):
    def check(instance, attribute, value):
        if value > limit:
            raise ValueError(f"{attribute.name} must be at most {limit}, got {value}")

    return check


def _not_negative(instance, attribute, value):
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a number, 0 or more, got {value!r}")


def _port(instance, attribute, value):
    if not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be between 0 and 65535, got {value!r}")


def _optional_path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(os.fspath(value))


def _parse_seed(seed: str | tuple[str, int]) -> tuple[str, int]:
    try:
        return parse_address(seed)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad seed {seed!r}: {exc}") from None


DEFAULT_SCRUB_PERIOD = 6 * 3600.0
"""A full pass of the periodic value scrub every six hours by default."""


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
    groups: int = attrs.field(
        default=1, validator=attrs.validators.and_(_positive, _at_most(MAX_GROUPS))
    )
    """When founding: how many replication groups the cluster has (docs/replication.md,
    "Several leaders"); a joining or restarted broker takes its cluster's."""
    replication_factor: int = attrs.field(
        default=3,
        validator=attrs.validators.and_(attrs.validators.ge(0), _at_most(MAX_REPLICATION_FACTOR)),
    )
    """When founding with several groups: on how many brokers each group lives (bounded by
    the brokers known at founding; the cluster keeps the setting, and groups grow to it as
    brokers join). 0 (``--replication-factor all``): every broker hosts every group (the
    stage-1 list, docs/replication.md)."""
    founding_brokers: int = attrs.field(
        default=1, validator=attrs.validators.and_(_positive, _at_most(MAX_BROKERS))
    )
    """When founding with several groups: wait until this many brokers (the founder included)
    are members before placing the groups (``cluster --nodes N`` passes N)."""
    metrics_port: int | None = attrs.field(default=None, validator=attrs.validators.optional(_port))
    """Serve Prometheus metrics at ``http://host:metrics_port/metrics`` (0: any free port)."""
    max_frame: int = attrs.field(default=DEFAULT_MAX_FRAME, validator=_positive)
    """Largest frame accepted or sent, in bytes (length prefix excluded)."""
    max_connections: int = attrs.field(default=10_000, validator=_positive)
    max_in_flight: int = attrs.field(default=256, validator=_positive)
    """Requests one connection may have pipelined before the broker stops reading from it."""
    frame_timeout: float = attrs.field(default=30.0, validator=_positive)
    """Seconds a connection may stall inside a frame (part of a request sent, the rest not
    coming) before the broker closes it; a connection idle between frames is left open."""
    max_buffered_bytes: int = attrs.field(default=256 * 1024 * 1024, validator=_positive)
    """Bytes of requests read and not yet answered, and of answers not yet written, over all
    connections; a connection that would go past it stops being read until answers drain."""
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
    compact_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=_positive)
    """Bytes the applied log entries hold in memory (their message data and about 256 bytes per
    command: ``_snapshots.held_size``) that also trigger a compaction (the log is held in
    memory: this bounds it); then at most a quarter of it is kept."""
    # -- security (docs/security.md); all off by default ----------------------------------------
    tls_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    """PEM certificate (chain) of this broker: with ``tls_key``, the main listener speaks TLS
    and so do the connections this broker opens to others."""
    tls_key: Path | None = attrs.field(default=None, converter=_optional_path)
    tls_ca: Path | None = attrs.field(default=None, converter=_optional_path)
    """PEM bundle of the CAs that other brokers' certificates are checked against (default:
    the system's)."""
    cluster_secret_file: Path | None = attrs.field(default=None, converter=_optional_path)
    """Only connections that prove this secret may send PRIVILEGED_REQUESTS (join, replicate,
    vote, fetch snapshots, change the membership); this broker proves it when it dials."""
    client_tokens_file: Path | None = attrs.field(default=None, converter=_optional_path)
    """Client operations on the main listener need an ``AUTH`` with one of these tokens."""
    allow_open_peers: bool = False
    """Accept client tokens without a cluster secret, which leaves broker-to-broker requests
    open to anyone who can connect (docs/security.md); refused at start otherwise (by
    :func:`~._security.load_security`, once the files are read)."""
    plaintext_port: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_port)
    )
    """A second listener, plain TCP without tokens, serving only client operations: for
    clients of the original design (0: any free port)."""
    retention_interval: float = attrs.field(default=1.0, validator=_positive)
    """Seconds between the leader's retention enforcements (only while some queue has a
    retention policy)."""
    forget_idle_positions: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    """Seconds after which the leader forgets a client position no READ, ACK or SEEK has used
    (None: positions are kept until forgotten explicitly). Swept every quarter of it, at most
    every minute (docs/protocol.md, "FORGET_POSITION")."""
    scrub_period: float | None = attrs.field(
        default=DEFAULT_SCRUB_PERIOD, validator=attrs.validators.optional(_positive)
    )
    """Seconds over which the periodic value scrub spreads one pass over every stored value
    (after the start-up pass; a few hundred rows per storage job, at most 20 jobs a second, so
    a large store takes longer); None: the start-up pass only (docs/reliability.md,
    "Repairing damaged values")."""
    min_free_mb: float | None = attrs.field(default=None, validator=_not_negative)
    """The reserve: with less free space than this (MiB) on the data directory's filesystem,
    the leader refuses writes that add data (APPEND, CREATE_QUEUE, ...) with ``UNAVAILABLE``
    (``"reason": "disk_full"``) and serves the rest; None: 64 MiB, or 5 % of a filesystem
    smaller than 1.25 GiB; 0: no reserve (docs/reliability.md, "Full disks")."""
    disk_space: Callable[[Path], tuple[int, int]] = attrs.field(
        default=free_space, eq=False, repr=False
    )
    """(free bytes, total bytes) of the filesystem holding a path: a seam for tests, which
    cannot fill a real disk under the mock clock."""
    wall_clock: Callable[[], float] = attrs.field(default=time.time, eq=False, repr=False)
    """Seconds since the epoch: what the leader stamps appends and enforcements with. A seam
    for the mock clock, whose virtual time the real clock does not follow."""

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
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key (a broker speaks TLS or not)")
        if self.plaintext_port is not None and self.plaintext_port == self.port != 0:
            raise ValueError(f"plaintext_port must differ from port ({self.port})")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

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

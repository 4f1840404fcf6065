"""The node's settings: one table gives the flags, the TOML keys and the environment variables.

Each setting is taken from, in order of precedence: its command-line flag, its environment
variable (``TRIO_BROKER_`` + the key in upper case), the ``--config`` TOML file (the key, with
``-`` or ``_``), and the default. Every value is validated the same way whatever its source.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._core._commands import MAX_GROUPS
from .._core._metadata import MAX_BROKERS, MAX_REPLICATION_FACTOR
from .._runtime import DEFAULT_DATA_DIR, DEFAULT_HOST, DEFAULT_PORT, BrokerConfig
from .._runtime._security import load_security
from ._exit import EXIT_STATUS_HELP
from ._seeds import parse_seeds

ENV_PREFIX = "TRIO_BROKER_"


def _defaults() -> dict[str, Any]:
    return {f.name: f.default for f in attrs.fields(BrokerConfig) if f.default is not attrs.NOTHING}


def _seeds(value: Any) -> list[tuple[str, int]]:
    if isinstance(value, str | list):
        return parse_seeds(value)
    raise ValueError(f"expected HOST:PORT strings, got {value!r}")


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"expected true or false, got {value!r}")


def _groups(value: Any) -> int:
    count = _int(value)
    if not 1 <= count <= MAX_GROUPS:
        raise ValueError(f"a cluster has 1 to {MAX_GROUPS} groups, not {count}")
    return count


def _replication_factor(value: Any) -> int:
    if value == "all":
        return 0  # every broker hosts every group (the stage-1 list)
    count = _int(value)
    if not 1 <= count <= MAX_REPLICATION_FACTOR:
        raise ValueError(
            f"the replication factor is 1 to {MAX_REPLICATION_FACTOR} or 'all', not {count}"
        )
    return count


def _founding_brokers(value: Any) -> int:
    count = _int(value)
    if not 1 <= count <= MAX_BROKERS:
        raise ValueError(f"a cluster is founded by 1 to {MAX_BROKERS} brokers, not {count}")
    return count


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


@attrs.frozen
class Option:
    key: str
    """The BrokerConfig field (or a node-only setting), also the TOML key."""
    parse: Callable[[Any], Any]
    help: str
    default: Any = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        return "--" + ("seed" if self.key == "seeds" else self.key.replace("_", "-"))

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


_D = _defaults()
OPTIONS = [
    Option("host", _str, "address to listen on", DEFAULT_HOST),
    Option("port", _int, "port to listen on", DEFAULT_PORT),
    Option("advertise_host", _str, "host announced to clients and peers (default: host)"),
    Option("advertise_port", _int, "port announced to clients and peers (default: port)"),
    Option("data_dir", _str, "data directory", DEFAULT_DATA_DIR),
    Option("broker_id", _str, "B-XXXXX; generated and stored on first start if absent"),
    Option("cluster_id", _str, "G-XXXXX; generated and stored on first start if absent"),
    Option(
        "seeds",
        _seeds,
        "a member of the cluster to join: HOST:PORT, [IPv6]:PORT, a comma-separated list, "
        "or repeated",
        (),
        metavar="HOST:PORT",
    ),
    Option(
        "join_wait",
        _bool,
        "found no cluster: wait until the leader of --cluster-id adds this broker "
        "(client add-member HOST:PORT)",
        False,
    ),
    Option("max_frame", _int, "largest frame accepted, in bytes", _D["max_frame"]),
    Option("max_connections", _int, "connections served at once", _D["max_connections"]),
    Option(
        "max_in_flight",
        _int,
        "requests one connection may have unanswered before the broker stops reading it",
        _D["max_in_flight"],
    ),
    Option(
        "frame_timeout",
        _float,
        "seconds a connection may stall inside a frame before it is closed",
        _D["frame_timeout"],
    ),
    Option(
        "max_buffered_bytes",
        _int,
        "bytes of unanswered requests and unwritten answers over all connections before "
        "reading the connection that asks for more pauses",
        _D["max_buffered_bytes"],
    ),
    Option(
        "max_pending",
        _int,
        "proposals waiting to be applied, over all connections, before requests wait",
        _D["max_pending"],
    ),
    Option(
        "shutdown_grace",
        _float,
        "seconds in-flight requests get to finish when the broker stops",
        _D["shutdown_grace"],
    ),
    Option(
        "heartbeat_interval",
        _float,
        "seconds between the leader's heartbeats",
        _D["heartbeat_interval"],
    ),
    Option(
        "failure_timeout",
        _float,
        "seconds of silence before a member is shown inactive and an election starts",
        _D["failure_timeout"],
    ),
    Option(
        "compact_threshold",
        _int,
        "applied log entries that trigger a compaction",
        _D["compact_threshold"],
    ),
    Option(
        "compact_keep",
        _int,
        "applied entries kept in the log after a compaction",
        _D["compact_keep"],
    ),
    Option(
        "compact_bytes",
        _int,
        "bytes the applied log entries hold in memory (their data and about 256 per"
        " command) that also trigger a compaction",
        _D["compact_bytes"],
    ),
    Option(
        "retention_interval",
        _float,
        "seconds between the leader's retention enforcements, while a queue has a policy",
        _D["retention_interval"],
    ),
    Option(
        "forget_idle_positions",
        _float,
        "forget a client position no READ, ACK or SEEK has used for this many seconds (off)",
        metavar="SECONDS",
    ),
    Option(
        "scrub_period",
        _float,
        "seconds over which the periodic scrub checks every stored value once, a few hundred "
        "at a time (a large store takes longer)",
        _D["scrub_period"],
    ),
    Option(
        "min_free_mb",
        _float,
        "refuse writes that add data while the data directory's filesystem has less free "
        "space than this, in MiB; 0: no reserve (64, or 5%% of a smaller disk)",
        metavar="MB",
    ),
    Option("metrics_port", _int, "serve Prometheus metrics on this port at /metrics (off)"),
    # Security (docs/security.md): all off by default.
    Option(
        "tls_cert",
        _str,
        "PEM certificate of this broker: with --tls-key, clients and peers talk TLS (off)",
        metavar="FILE",
    ),
    Option("tls_key", _str, "PEM private key of --tls-cert", metavar="FILE"),
    Option(
        "tls_ca",
        _str,
        "PEM CA bundle that other brokers' certificates are checked against (system CAs)",
        metavar="FILE",
    ),
    Option(
        "cluster_secret_file",
        _str,
        "file holding the cluster secret: only brokers that hold it may join, replicate, "
        "vote or change the membership (off)",
        metavar="FILE",
    ),
    Option(
        "client_tokens_file",
        _str,
        "file of client tokens, one per line: client operations need one (off)",
        metavar="FILE",
    ),
    Option(
        "allow_open_peers",
        _bool,
        "with --client-tokens-file and no --cluster-secret-file, start anyway: anyone who can "
        "connect may join, replicate, vote or change the membership (refused otherwise)",
        False,
    ),
    Option(
        "plaintext_port",
        _int,
        "also serve client operations on this port in plain TCP without tokens, for clients "
        "of the original design (off)",
    ),
    Option(
        "groups",
        _groups,
        "when founding a cluster: its number of replication groups, each hosted by "
        "--replication-factor brokers and led by one, leadership spread over the brokers (a "
        "joining or restarted broker takes its cluster's)",
        1,
    ),
    Option(
        "replication_factor",
        _replication_factor,
        "when founding with several groups: on how many brokers each group lives (bounded by "
        "the brokers known at founding; 'all': every broker hosts every group; a joining "
        "broker takes its cluster's)",
        3,
    ),
    Option(
        "founding_brokers",
        _founding_brokers,
        "when founding with several groups: place them once this many brokers (the founder "
        "included) have joined, so each group starts with its replication factor of replicas",
        1,
    ),
    Option("log_level", _str, "log level", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
    Option(
        "log_format",
        _str,
        "one line per event, as text or as a JSON object",
        "text",
        choices=("text", "json"),
    ),
]
NODE_ONLY = {"log_level", "log_format"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML file of settings (keys as the flags' names); {ENV_PREFIX}<NAME> environment "
        "variables override it, flags override both",
    )
    for option in OPTIONS:
        shown = "" if option.default in (None, ()) else f" ({option.default})"
        kwargs: dict[str, Any] = {
            "dest": option.key,
            "default": None,
            "help": f"{option.help}{shown} [{option.env}]",
        }
        if option.key == "seeds":
            kwargs["action"] = "append"
        if option.parse is _bool:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        if option.metavar:
            kwargs["metavar"] = option.metavar
        if option.choices:
            kwargs["choices"] = option.choices
        parser.add_argument(option.flag, **kwargs)


class SettingsError(ValueError):
    pass


def resolve(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> tuple[BrokerConfig, dict[str, Any], dict[str, str]]:
    """The broker configuration, the node-only settings, and where each value came from."""
    environ = os.environ if environ is None else environ
    from_file: dict[str, Any] = {}
    if args.config:
        try:
            data = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {args.config}: {exc}") from None
        known = {o.key for o in OPTIONS} | {"seed"}
        for raw_key, value in data.items():
            key = raw_key.replace("-", "_")
            key = "seeds" if key == "seed" else key
            if key not in known:
                raise SettingsError(f"{args.config}: unknown setting {raw_key!r}")
            from_file[key] = value
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for option in OPTIONS:
        for source, raw in (
            ("flag", getattr(args, option.key, None)),
            ("env", environ.get(option.env)),
            ("file", from_file.get(option.key)),
        ):
            if raw is not None:
                try:
                    value = option.parse(raw)
                except (TypeError, ValueError) as exc:
                    where = {"flag": option.flag, "env": option.env, "file": args.config}[source]
                    raise SettingsError(f"{option.key} from {where}: {exc}") from None
                if option.choices and value not in option.choices:
                    raise SettingsError(
                        f"{option.key} must be one of {', '.join(option.choices)}, not {value!r}"
                    )
                values[option.key], sources[option.key] = value, source
                break
        else:
            values[option.key], sources[option.key] = option.default, "default"
    node_only = {k: values.pop(k) for k in NODE_ONLY}
    try:
        config = BrokerConfig(**values)
        load_security(config)  # files missing or unusable: said now, not once serving
    except (TypeError, ValueError) as exc:
        raise SettingsError(str(exc)) from None
    return config, node_only, sources


def add_node_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "node",
        help="run one broker",
        description="Run one broker. With no arguments: a single-node cluster on "
        f"{DEFAULT_HOST}:{DEFAULT_PORT} storing its data in ./{DEFAULT_DATA_DIR}.",
        epilog=EXIT_STATUS_HELP,
    )
    add_arguments(p)

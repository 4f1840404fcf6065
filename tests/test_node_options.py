"""Node settings: flags override environment variables, which override the TOML file."""

from __future__ import annotations

import argparse

import attrs
import pytest

from trio_broker._cli._node_options import SettingsError, add_arguments, resolve


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_a_single_node_on_localhost():
    config, node_only, sources = resolve(parse(), environ={})
    assert (config.host, config.port, str(config.data_dir)) == (
        "127.0.0.1",
        9001,
        "trio-broker-data",
    )
    assert config.seeds == ()
    assert node_only == {"log_level": "INFO", "log_format": "text"}
    assert set(sources.values()) == {"default"}


def test_precedence_flag_then_environment_then_file(tmp_path):
    path = tmp_path / "broker.toml"
    path.write_text(
        "port = 9100\nheartbeat-interval = 0.5\nfailure_timeout = 4.0\n"
        'seed = ["127.0.0.1:9200"]\nlog_format = "json"\n'
    )
    environ = {
        "TRIO_BROKER_HEARTBEAT_INTERVAL": "0.25",
        "TRIO_BROKER_PORT": "9300",
        "TRIO_BROKER_SEEDS": "127.0.0.1:1, 127.0.0.1:2",
    }
    config, node_only, sources = resolve(
        parse("--config", str(path), "--port", "9400"), environ=environ
    )
    assert config.port == 9400 and sources["port"] == "flag"
    assert config.heartbeat_interval == 0.25 and sources["heartbeat_interval"] == "env"
    assert config.failure_timeout == 4.0 and sources["failure_timeout"] == "file"
    assert config.seeds == (("127.0.0.1", 1), ("127.0.0.1", 2))
    assert node_only["log_format"] == "json"
    config, _, _ = resolve(
        parse("--config", str(path), "--seed", "h:3", "--seed", "h:4"), environ={}
    )
    assert config.seeds == (("h", 3), ("h", 4))


@pytest.mark.parametrize(
    ("argv", "environ", "toml", "message"),
    [
        ((), {"TRIO_BROKER_PORT": "many"}, None, "port from TRIO_BROKER_PORT"),
        (("--max-frame", "0"), {}, None, "max_frame must be positive"),
        ((), {}, "prot = 1\n", "unknown setting 'prot'"),
        ((), {}, 'port = "x"\n', "port from"),
        ((), {}, "port = [\n", "cannot read config file"),
        ((), {"TRIO_BROKER_LOG_FORMAT": "xml"}, None, "log_format must be one of"),
        (("--heartbeat-interval", "2", "--failure-timeout", "3"), {}, None, "at least twice"),
        (("--min-free-mb", "-1"), {}, None, "min_free_mb must be a number, 0 or more"),
        ((), {"TRIO_BROKER_MIN_FREE_MB": "nan"}, None, "min_free_mb must be a number"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(tmp_path, argv, environ, toml, message):
    if toml is not None:
        path = tmp_path / "bad.toml"
        path.write_text(toml)
        argv = (*argv, "--config", str(path))
    with pytest.raises(SettingsError, match=message):
        resolve(parse(*argv), environ=environ)


def test_every_config_field_is_settable_from_flags_environment_and_file(tmp_path):
    """Each BrokerConfig setting has a flag, an environment variable and a TOML key."""
    from trio_broker._cli._node_options import OPTIONS
    from trio_broker._runtime import BrokerConfig

    keys = {o.key for o in OPTIONS}
    # wall_clock and disk_space are seams for tests (functions), not settings.
    fields = {f.name for f in attrs.fields(BrokerConfig)} - {"wall_clock", "disk_space"}
    assert fields <= keys, fields - keys
    config, _, _ = resolve(parse("--max-in-flight", "7", "--shutdown-grace", "2.5"), environ={})
    assert (config.max_in_flight, config.shutdown_grace) == (7, 2.5)
    config, _, _ = resolve(parse(), environ={"TRIO_BROKER_MAX_IN_FLIGHT": "9"})
    assert config.max_in_flight == 9
    config, _, _ = resolve(parse("--min-free-mb", "0.5"), environ={})
    assert config.min_free_mb == 0.5
    path = tmp_path / "b.toml"
    path.write_text("max_pending = 77\ncompact_bytes = 1000\n")
    config, _, _ = resolve(parse("--config", str(path)), environ={})
    assert (config.max_pending, config.compact_bytes) == (77, 1000)


def test_security_settings_from_flags_environment_and_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    tokens = tmp_path / "tokens"
    tokens.write_text("# clients\nt1\n")
    path = tmp_path / "broker.toml"
    path.write_text(f'client-tokens-file = "{tokens}"\nplaintext_port = 9500\n')
    config, _, sources = resolve(
        parse("--config", str(path), "--plaintext-port", "9600"),
        environ={"TRIO_BROKER_CLUSTER_SECRET_FILE": str(secret)},
    )
    assert config.cluster_secret_file == secret and sources["cluster_secret_file"] == "env"
    assert config.client_tokens_file == tokens and sources["client_tokens_file"] == "file"
    assert config.plaintext_port == 9600 and sources["plaintext_port"] == "flag"
    assert (config.tls_cert, config.tls_key, config.tls_ca) == (None, None, None)


@pytest.mark.parametrize(
    ("argv", "files", "message"),
    [
        (("--tls-cert", "{d}/cert.pem"), {"cert.pem": "x"}, "tls_cert and tls_key go together"),
        (("--tls-key", "{d}/key.pem"), {"key.pem": "x"}, "tls_cert and tls_key go together"),
        (("--tls-ca", "{d}/ca.pem"), {"ca.pem": "x"}, "tls_ca needs tls_cert"),
        (
            ("--tls-cert", "{d}/cert.pem", "--tls-key", "{d}/missing.pem"),
            {"cert.pem": "x"},
            "cannot load TLS certificate",
        ),
        (("--cluster-secret-file", "{d}/nope"), {}, "cannot read cluster secret file"),
        (("--cluster-secret-file", "{d}/s"), {"s": "short\n"}, "at least 16"),
        (("--client-tokens-file", "{d}/nope"), {}, "cannot read client tokens file"),
        (("--client-tokens-file", "{d}/t"), {"t": "# none\n\n"}, "holds no token"),
        (("--port", "9001", "--plaintext-port", "9001"), {}, "must differ from port"),
    ],
)
def test_bad_security_settings_are_refused_with_a_clear_message(tmp_path, argv, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    argv = tuple(arg.format(d=tmp_path) for arg in argv)
    with pytest.raises(SettingsError, match=message):
        resolve(parse(*argv), environ={})


def test_retention_interval_is_a_node_setting():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config, _, sources = resolve(
        parser.parse_args(["--data-dir", "d"]), {"TRIO_BROKER_RETENTION_INTERVAL": "0.25"}
    )
    assert config.retention_interval == 0.25 and sources["retention_interval"] == "env"
    with pytest.raises(SettingsError, match="retention_interval"):
        resolve(parser.parse_args(["--data-dir", "d", "--retention-interval", "0"]), {})


def test_join_wait_from_the_flag_the_environment_or_the_file(tmp_path):
    config, _, sources = resolve(parse("--join-wait", "--cluster-id", "G-AAAAA"), environ={})
    assert config.join_wait and sources["join_wait"] == "flag"
    environ = {"TRIO_BROKER_JOIN_WAIT": "yes", "TRIO_BROKER_CLUSTER_ID": "G-AAAAA"}
    config, _, sources = resolve(parse(), environ=environ)
    assert config.join_wait and sources["join_wait"] == "env"
    path = tmp_path / "broker.toml"
    path.write_text('join-wait = true\ncluster-id = "G-AAAAA"\n')
    config, _, _ = resolve(parse("--config", str(path)), environ={"TRIO_BROKER_JOIN_WAIT": "0"})
    assert not config.join_wait
    assert not resolve(parse(), environ={})[0].join_wait
    with pytest.raises(SettingsError, match="join_wait"):
        resolve(parse("--join-wait"), environ={})
    with pytest.raises(SettingsError, match="join_wait"):
        resolve(parse(), environ={"TRIO_BROKER_JOIN_WAIT": "maybe"})

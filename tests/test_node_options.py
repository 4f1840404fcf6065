"""Node settings: flags override environment variables, which override the TOML file."""

from __future__ import annotations

import argparse

import pytest

from trio_broker._node_options import SettingsError, add_arguments, resolve


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
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(tmp_path, argv, environ, toml, message):
    if toml is not None:
        path = tmp_path / "bad.toml"
        path.write_text(toml)
        argv = (*argv, "--config", str(path))
    with pytest.raises(SettingsError, match=message):
        resolve(parse(*argv), environ=environ)


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

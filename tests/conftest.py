from __future__ import annotations

import argparse
import resource

import pytest
import trio

from trio_broker._cli._client import add_client_parser, run_client
from trio_broker._runtime import BrokerConfig, open_broker


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


_raise_fd_limit()


@pytest.fixture
def broker_config(tmp_path):
    return BrokerConfig(data_dir=tmp_path / "broker", port=0)


@pytest.fixture
async def broker(broker_config):
    async with open_broker(broker_config) as broker:
        yield broker


def build_client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio_broker")
    add_client_parser(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture
def cli(capsys):
    """Run one ``client`` command in a worker thread (it runs its own trio loop there).

    Returns (exit status, stdout, stderr).
    """

    async def run(*argv: str) -> tuple[int, str, str]:
        args = build_client_parser().parse_args(["client", *argv])
        status = await trio.to_thread.run_sync(run_client, args)
        out, err = capsys.readouterr()
        return status, out, err

    return run

from __future__ import annotations

import resource

import pytest

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

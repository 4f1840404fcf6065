"""A group the map places on a broker again while that broker's old replica of it is still
stopping (its data being moved aside) is reopened once the old one has stopped."""

from __future__ import annotations

import contextlib
import types

import trio
import trio.testing

from trio_broker._runtime._groups import GroupHost


class Record:
    def __init__(self, replicas):
        self.replicas = replicas
        self.move = None


class Map:
    def __init__(self, version, groups):
        self.version = version
        self.groups = groups
        self.brokers = {}

    def group(self, _group_id):
        return None


def test_a_group_placed_again_while_its_replica_stops_is_reopened(tmp_path):
    async def main():
        config = types.SimpleNamespace(
            failure_timeout=1.0, heartbeat_interval=0.5, data_dir=tmp_path
        )
        primary = types.SimpleNamespace(
            config=config,
            broker_id="B-AAAAA",
            cluster_id="G-META0",
            connections=types.SimpleNamespace(hosted_groups=set()),
        )

        async def run(fn, *args):
            return fn(*args)

        @contextlib.asynccontextmanager
        async def storage(group_id, _path):
            store = types.SimpleNamespace(
                identity=lambda: types.SimpleNamespace(broker_id="B-AAAAA", cluster_id=group_id),
                raft_state=lambda: types.SimpleNamespace(snapshot_config=None, entries=[]),
            )
            yield types.SimpleNamespace(run=run), store

        async def retire(_group_id, _path):
            await trio.sleep(2)  # a slow move aside

        storage.retire = retire

        async def make_broker(_config, _identity, _store, _worker):
            async def start_services(_nursery):
                pass

            return types.SimpleNamespace(
                broker_id="B-AAAAA",
                config=config,
                start_services=start_services,
                driver=types.SimpleNamespace(hinted_addresses={}, node=None),
                cluster_id="G-DATA1",
            )

        host = GroupHost(primary, storage, make_broker)
        host._replica_config = lambda *a, **k: None
        async with trio.open_nursery() as nursery:
            host.meta.map = Map(1, {"G-DATA1": Record(("B-AAAAA",))})
            await host._follow_map(nursery)
            assert "G-DATA1" in host.groups
            host.meta.map = Map(2, {"G-DATA1": Record(("B-OTHER",))})
            await host._follow_map(nursery)  # stops the replica: its retirement takes 2 s
            await trio.sleep(0.5)
            host.meta.map = Map(3, {"G-DATA1": Record(("B-AAAAA",))})
            host._wake = trio.Event()
            await host._follow_map(nursery)  # placed here again, the old one still stopping
            assert "G-DATA1" not in host.groups
            await trio.sleep(5)  # the old replica stopped; no other change of the map
            # The host is told to follow the map again (what ``GroupHost.run`` waits for),
            # and then hosts the group.
            assert host._wake.is_set()
            await host._follow_map(nursery)
            assert "G-DATA1" in host.groups
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

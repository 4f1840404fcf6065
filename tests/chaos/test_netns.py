"""Chaos with real network partitions: brokers in Linux network namespaces (root only).

Each test builds a :class:`~trio_broker.testing._netns.NetnsLab`: a hub namespace holding a
bridge, and one namespace per broker plugged into it by a veth, all in 10.213.7.0/24, an address
range that exists only inside these namespaces. Brokers run as
``ip netns exec tbI-SUFFIX python -m trio_broker node --host 10.213.7.I ...``; the test process
stays in the root namespace and drives everything through ``python -m trio_broker client``
processes run in the hub namespace (or, to talk to a cut-off broker, in that broker's own
namespace). Partitions are made by setting the hub's end of a broker's veth down
(``isolate``) and up again (``heal``): packets are dropped, nothing is reset.

Every wait is bounded; every process is killed and reaped, and every namespace deleted, however
the test ends. Skipped unless ``--chaos`` / ``TRIO_BROKER_CHAOS=1`` (see ``conftest.py``), and
when not root or ``ip netns add`` fails.

Run: ``TRIO_BROKER_CHAOS=1 pytest tests/chaos/test_netns.py -v``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest
import trio

from trio_broker.testing._netns import NetnsLab

pytestmark = pytest.mark.chaos

PORT = 9001
"""Every broker has a namespace (and an address) of its own, so they can share the port."""
HEARTBEAT = 0.1
FAILURE_TIMEOUT = 1.0
READY_TIMEOUT = 20.0
FORM_TIMEOUT = 30.0
ELECTION_WITHIN = 15 * FAILURE_TIMEOUT
"""A new leader must be seen this long after the old one was cut off (docs: 1.5-3 s; the rest
is for the client processes that look, which take seconds each on a loaded machine)."""
REJOIN_WITHIN = 20.0
CLI_TIMEOUT = 10.0
"""The client's own ``--timeout``."""
CLI_WITHIN = CLI_TIMEOUT + 15.0
"""Bound on a client process, start-up included."""
ISOLATED_CLI_TIMEOUT = 3.0
READY_RE = re.compile(r"^trio_broker node (?P<broker_id>B-[A-Z0-9]{5}) of cluster ")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}] {message}")


def _log_file(path: Path) -> BinaryIO:
    # Blocking, but a local file: the child gets its own copy of the descriptor.
    return open(path, "wb")


# -- brokers and clients in the namespaces -------------------------------------------------------


class Broker:
    def __init__(self, lab: NetnsLab, index: int, base: Path) -> None:
        self.index = index
        self.name = f"b{index + 1}"
        self.namespace = lab.nodes[index]
        self.host = lab.host(index)
        self.data_dir = base / self.name
        self.stdout_path = base / f"{self.name}.stdout"
        self.stderr_path = base / f"{self.name}.stderr"
        self.process: trio.Process | None = None
        self.broker_id: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{PORT}"

    def describe(self, tail: int = 3000) -> str:
        def read(path: Path) -> str:
            text = path.read_text(errors="replace") if path.exists() else ""
            return text if len(text) <= tail else "...\n" + text[-tail:]

        status = "not started"
        if self.process is not None:
            code = self.process.poll()
            status = "running" if code is None else f"exited with {code}"
        return (
            f"--- {self.name} {self.broker_id} in {self.namespace} ({status})\n"
            f"stdout:\n{read(self.stdout_path)}stderr:\n{read(self.stderr_path)}"
        )


class Cluster:
    """Three brokers in a lab; knows how to run client commands next to them."""

    def __init__(self, lab: NetnsLab, base: Path) -> None:
        self.lab = lab
        self.base = base
        self.brokers = [Broker(lab, i, base) for i in range(lab.count)]

    def by_id(self, broker_id: str | None) -> Broker | None:
        return next((b for b in self.brokers if b.broker_id == broker_id), None)

    def seeds(self, *, last: Broker | None = None) -> list[str]:
        """Every broker as a seed, ``last`` (a cut-off one) at the end so discovery does not
        wait on it first."""
        ordered = [b for b in self.brokers if b is not last] + ([last] if last else [])
        args: list[str] = []
        for broker in ordered:
            args += ["--seed", broker.address]
        return args

    async def start(self, broker: Broker, seed: Broker | None, *extra: str) -> None:
        """Start (or restart, from its data) ``broker``, joining through ``seed`` if given, with
        ``extra`` node flags; returns once it printed its ready line."""
        command = [
            sys.executable,
            *("-m", "trio_broker", "node"),
            *("--host", broker.host, "--port", str(PORT), "--data-dir", str(broker.data_dir)),
            *("--heartbeat-interval", str(HEARTBEAT), "--failure-timeout", str(FAILURE_TIMEOUT)),
            *(("--seed", seed.address) if seed else ()),
            *extra,
        ]
        with _log_file(broker.stdout_path) as out, _log_file(broker.stderr_path) as err:
            broker.process = await trio.lowlevel.open_process(
                self.lab.exec(broker.namespace, command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
            )
        try:
            with trio.fail_after(READY_TIMEOUT):
                while True:
                    line, newline, _ = broker.stdout_path.read_text(errors="replace").partition(
                        "\n"
                    )
                    if newline:
                        break
                    if broker.process.poll() is not None:
                        pytest.fail(f"{broker.name} exited before it was ready\n{self.report()}")
                    await trio.sleep(0.05)
        except trio.TooSlowError:
            pytest.fail(f"{broker.name} not ready within {READY_TIMEOUT} s\n{self.report()}")
        match = READY_RE.match(line)
        assert match, f"unexpected ready line {line!r}"
        broker.broker_id = match["broker_id"]
        log(f"{broker.name} = {broker.broker_id} ready on {broker.address} in {broker.namespace}")

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(15):
            for broker in self.brokers:
                if broker.process is None:
                    continue
                if broker.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        broker.process.send_signal(signal.SIGKILL)
                await broker.process.wait()

    def report(self) -> str:
        return "\n".join(b.describe() for b in self.brokers)

    async def cli(
        self,
        *args: str,
        namespace: str | None = None,
        client_timeout: float = CLI_TIMEOUT,
        within: float = CLI_WITHIN,
    ) -> tuple[int, str, str]:
        """Run ``python -m trio_broker client --timeout CLIENT_TIMEOUT ARGS`` in ``namespace``
        (the hub by default); its exit status, stdout and stderr."""
        command = [
            sys.executable,
            *("-m", "trio_broker", "client", "--timeout", str(client_timeout), *args),
        ]
        with trio.fail_after(within):
            result = await trio.run_process(
                self.lab.exec(namespace or self.lab.hub, command),
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    async def health(self, broker: Broker, *, inside: bool = False) -> dict[str, Any] | None:
        """``client --json health`` against ``broker`` (from its own namespace if ``inside``):
        its own view of the cluster, or None if it did not answer."""
        code, out, _ = await self.cli(
            "--json",
            "--seed",
            broker.address,
            "health",
            namespace=broker.namespace if inside else None,
            client_timeout=2.0,
        )
        if code not in (0, 1) or not out.strip():
            return None
        return json.loads(out)

    async def status(self, *, last: Broker | None = None) -> dict[str, Any] | None:
        code, out, _ = await self.cli(
            "--json", *self.seeds(last=last), "status", client_timeout=3.0
        )
        if code != 0:
            return None
        return json.loads(out)["clusters"][0]

    async def wait_formed(self) -> Broker:
        """All brokers agree on one leader, all members active, both joins promoted."""
        last: Any = None
        try:
            with trio.fail_after(FORM_TIMEOUT):
                while True:
                    views = [await self.health(b) for b in self.brokers]
                    status = await self.status()
                    last = (views, status)
                    leaders = {v["leader_id"] if v else None for v in views}
                    if (
                        len(leaders) == 1
                        and None not in leaders
                        and status is not None
                        and status["leader"] in leaders
                        and status["cluster_version"] >= 2 * len(self.brokers) - 1
                        and len(status["brokers"]) == len(self.brokers)
                        and all(b["status"] == "active" for b in status["brokers"])
                    ):
                        leader = self.by_id(status["leader"])
                        assert leader is not None
                        return leader
                    await trio.sleep(0.2)
        except trio.TooSlowError:
            pytest.fail(f"cluster not formed within {FORM_TIMEOUT} s: {last}\n{self.report()}")

    async def append(self, queue: str, value: int, *, last: Broker | None = None) -> int:
        code, out, err = await self.cli(*self.seeds(last=last), "append", queue, str(value))
        assert code == 0, f"append {value} failed ({code}): {err}"
        return int(out)

    async def append_isolated(self, broker: Broker, queue: str, value: int) -> None:
        """From inside a cut-off broker's namespace: it must not acknowledge anything."""
        code, out, err = await self.cli(
            "--seed",
            broker.address,
            "append",
            queue,
            str(value),
            namespace=broker.namespace,
            client_timeout=ISOLATED_CLI_TIMEOUT,
        )
        log(f"append {value} to isolated {broker.name}: exit {code}, {out.strip()} {err.strip()}")
        if code == 0:
            pytest.fail(
                f"isolated {broker.name} ({broker.broker_id}) acknowledged append {value} "
                f"as sequence number {out.strip()}: a minority must not acknowledge writes"
            )

    async def read_all(self, queue: str) -> list[dict[str, Any]]:
        """Every message of ``queue`` for a fresh client id, in order."""
        code, out, err = await self.cli("--json", *self.seeds(), "read", queue, "--count", "1000")
        assert code == 0, f"final read failed ({code}): {err}"
        return json.loads(out)


@contextlib.asynccontextmanager
async def running_cluster(lab: NetnsLab, base: Path) -> AsyncIterator[tuple[Cluster, Broker]]:
    cluster = Cluster(lab, base)
    try:
        first = cluster.brokers[0]
        await cluster.start(first, None)
        for broker in cluster.brokers[1:]:
            await cluster.start(broker, first)
        leader = await cluster.wait_formed()
        log(f"cluster formed, leader {leader.name} ({leader.broker_id})")
        yield cluster, leader
    except BaseException:
        print(cluster.report())
        raise
    finally:
        await cluster.aclose()


async def create_queue(cluster: Cluster) -> str:
    code, out, err = await cluster.cli(*cluster.seeds(), "create-queue")
    assert code == 0, f"create-queue failed ({code}): {err}"
    return out.strip()


def expected_messages(values: list[int]) -> list[dict[str, Any]]:
    return [{"sequence_num": i + 1, "data": v} for i, v in enumerate(values)]


# -- scenarios -----------------------------------------------------------------------------------

PARTITION = 35.0
"""How long the old leader stays cut off (seconds from the cut to the heal), at least."""


def heal_time(work_done: float) -> float:
    """When to heal (seconds after the cut), given when the work under the partition ended.

    TCP retransmits a black-holed segment 0.2 s, 0.6, 1.4, ... 0.2 * (2**k - 1) s after it
    was first sent, capped at 120 s apart; the new leader's first unanswered message to the old
    one leaves 1-5 s after the cut. So its retransmissions fall near 13-18, 27-31 and 53-57 s
    after the cut, and a heal at 35 s (or anywhere in 31-40) is followed by more than
    :data:`REJOIN_WITHIN` without any: a broker that waited on TCP's retransmissions instead of
    noticing the dead link itself would miss the bound. Work that took longer (a loaded
    machine: client processes taking seconds each) heals at once.
    """
    return max(work_done, PARTITION)


REJOIN_WITHIN = 10 * FAILURE_TIMEOUT
"""Once the network is healed, the old leader must follow the new one this soon."""


class SlowRejoin(Exception):
    """The healed broker did not rejoin within :data:`REJOIN_WITHIN`."""


def test_isolated_leader_is_replaced_and_rejoins(lab: NetnsLab, tmp_path: Path) -> None:
    # Regression: peer links used to stay "connected" to a black-holed peer (no FIN/RST) until
    # TCP's backed-off retransmissions, so a healed leader rejoined 20 s or more late. Links
    # now fail once their data goes unacknowledged (TCP_USER_TIMEOUT) and reconnect.
    trio.run(isolated_leader_scenario, lab, tmp_path)


async def isolated_leader_scenario(lab: NetnsLab, tmp_path: Path) -> None:
    async with running_cluster(lab, tmp_path) as (cluster, old):
        queue = await create_queue(cluster)
        acked: list[int] = []
        for value in range(1, 21):
            assert await cluster.append(queue, value) == len(acked) + 1
            acked.append(value)
        log(f"20 appends to {queue} acknowledged; isolating leader {old.name}")

        lab.isolate(old.index)
        cut_at = trio.current_time()
        others = [b for b in cluster.brokers if b is not old]
        new: Broker | None = None

        async def elect() -> None:
            nonlocal new
            last: Any = None
            try:
                with trio.fail_after(ELECTION_WITHIN):
                    while True:
                        status = await cluster.status(last=old)
                        last = status
                        leader = cluster.by_id(status["leader"]) if status else None
                        if leader in others:
                            new = leader
                            return
                        await trio.sleep(0.1)
            except trio.TooSlowError:
                pytest.fail(f"no new leader {ELECTION_WITHIN} s after the cut: {last}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(elect)
            # Sent to the cut-off leader while it may still believe it leads.
            nursery.start_soon(cluster.append_isolated, old, queue, 1001)
        assert new is not None
        log(f"new leader {new.name} ({new.broker_id}), {trio.current_time() - cut_at:.1f} s after")
        with trio.fail_after(ELECTION_WITHIN):
            while True:  # both brokers of the majority follow it
                views = [await cluster.health(b) for b in others]
                if all(v and v["leader_id"] == new.broker_id for v in views):
                    break
                await trio.sleep(0.1)

        # check-quorum: the cut-off leader stops claiming leadership.
        view = None
        try:
            with trio.fail_after(ELECTION_WITHIN):
                while True:
                    view = await cluster.health(old, inside=True)
                    if view is not None and view["role"] != "leader":
                        break
                    await trio.sleep(0.2)
        except trio.TooSlowError:
            pytest.fail(f"cut-off {old.name} still claims to lead: {view}")
        log(f"{old.name} on its own: {view}")

        for value in range(21, 41):
            assert await cluster.append(queue, value, last=old) == len(acked) + 1
            acked.append(value)
        log("20 more appends acknowledged through the majority")
        await cluster.append_isolated(old, queue, 1002)

        await trio.sleep_until(cut_at + heal_time(trio.current_time() - cut_at))
        lab.heal(old.index)
        healed_at = trio.current_time()
        log(f"healed {old.name} {healed_at - cut_at:.1f} s after the cut")
        last: Any = None
        rejoined = False
        with trio.move_on_after(REJOIN_WITHIN):
            while True:
                view = await cluster.health(old)
                status = await cluster.status()
                last = (view, status)
                if (
                    view is not None
                    and view["leader_id"] == new.broker_id
                    and view["role"] == "replica"
                    and status is not None
                    and status["leader"] == new.broker_id
                    and all(b["status"] == "active" for b in status["brokers"])
                ):
                    log(f"{old.name} rejoined as a replica of {new.name}")
                    rejoined = True
                    break
                await trio.sleep(0.2)

        # Whatever happened to the old leader: the majority lost nothing, invented nothing.
        messages = await cluster.read_all(queue)
        assert messages == expected_messages(acked), messages
        log(f"final read: all {len(acked)} acknowledged values, once each, in order")
        if not rejoined:
            raise SlowRejoin(
                f"{old.name} not a replica of {new.name} {REJOIN_WITHIN:g} s after the heal: {last}"
            )

"""Real network partitions with Linux network namespaces (root only), for the chaos tests.

:class:`NetnsLab` builds, for one test run::

    hub namespace  tbh-SUFFIX   bridge br0 (10.213.7.254/24), veths v1..vN enslaved to it
    node namespace tbI-SUFFIX   eth0 (10.213.7.I/24), the other end of vI; lo up

Everything lives inside namespaces this lab creates: the links are created from inside the hub
namespace (``ip -n HUB link add vI type veth peer name eth0 netns NODE``), so no link ever
appears in the root namespace, and the 10.213.7.0/24 addresses exist only inside the lab. The
suffix is random, so parallel runs never collide.

``isolate(i)`` sets the hub's end of node i's veth down: nothing crosses it any more in either
direction (packets are dropped, connections are not reset: a real partition), while node i can
still reach its own address, so a client run inside its namespace still talks to it.
``heal(i)`` sets it up again.

:meth:`NetnsLab.close` kills whatever still runs inside the lab's namespaces (by pid, as
``ip netns pids`` lists them) and deletes every namespace it created, which destroys their
links; it is idempotent, is called by the context manager whatever happens (exceptions, Ctrl-C),
and is registered with :mod:`atexit` as a last resort.

Commands run inside a namespace with ``ip netns exec NAME ...`` (see :meth:`NetnsLab.exec`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Iterator, Sequence

SUBNET = "10.213.7"
"""The lab's private /24; its addresses exist only inside the lab's namespaces."""
HUB_HOST = f"{SUBNET}.254"
_IP_TIMEOUT = 10.0


class NetnsUnavailable(Exception):
    """This machine or user cannot create network namespaces (not root, no ``ip``, ...)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_IP_TIMEOUT,
        check=check,
    )


class NetnsLab:
    """A hub namespace with a bridge and ``count`` node namespaces plugged into it."""

    def __init__(self, count: int) -> None:
        if not 1 <= count <= 200:
            raise ValueError("between 1 and 200 nodes")
        self.count = count
        self.suffix = secrets.token_hex(3)
        self.hub = f"tbh-{self.suffix}"
        self.nodes = [f"tb{i + 1}-{self.suffix}" for i in range(count)]
        self.created: list[str] = []
        """The namespaces created so far, deleted by :meth:`close`."""
        self.isolated: set[int] = set()
        self._closed = False

    # -- addresses and commands -----------------------------------------------------------------

    def host(self, i: int) -> str:
        """Node ``i``'s address (0-based index)."""
        return f"{SUBNET}.{i + 1}"

    def exec(self, namespace: str, command: Sequence[str]) -> list[str]:
        """``command`` as run inside ``namespace``."""
        return ["ip", "netns", "exec", namespace, *command]

    # -- building -------------------------------------------------------------------------------

    def open(self) -> None:
        """Create the namespaces and links; on any failure, remove what was created and raise
        :class:`NetnsUnavailable` (when not even the first namespace could be made) or
        :class:`subprocess.CalledProcessError`."""
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        atexit.register(self.close)
        try:
            self._add_namespace(self.hub, probe=True)
            hub = ("-n", self.hub)
            _ip(*hub, "link", "set", "lo", "up")
            _ip(*hub, "link", "add", "br0", "type", "bridge")
            _ip(*hub, "addr", "add", f"{HUB_HOST}/24", "dev", "br0")
            _ip(*hub, "link", "set", "br0", "up")
            for i, node in enumerate(self.nodes):
                self._add_namespace(node)
                veth = f"v{i + 1}"
                _ip(
                    *hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node
                )
                _ip(*hub, "link", "set", veth, "master", "br0")
                _ip(*hub, "link", "set", veth, "up")
                _ip("-n", node, "link", "set", "lo", "up")
                _ip("-n", node, "addr", "add", f"{self.host(i)}/24", "dev", "eth0")
                _ip("-n", node, "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str, *, probe: bool = False) -> None:
        try:
            result = _ip("netns", "add", name, check=not probe)
        except FileNotFoundError as exc:
            raise NetnsUnavailable(f"no ip command: {exc}") from None
        if probe and result.returncode != 0:
            raise NetnsUnavailable(f"ip netns add failed: {result.stderr.strip()}")
        self.created.append(name)

    # -- faults ---------------------------------------------------------------------------------

    def isolate(self, i: int) -> None:
        """Cut node ``i`` off from the hub and every other node (both directions)."""
        _ip("-n", self.hub, "link", "set", f"v{i + 1}", "down")
        self.isolated.add(i)

    def heal(self, i: int) -> None:
        _ip("-n", self.hub, "link", "set", f"v{i + 1}", "up")
        self.isolated.discard(i)

    def link_up(self, i: int) -> bool:
        out = _ip("-n", self.hub, "-o", "link", "show", f"v{i + 1}").stdout
        return ",UP" in out or "<UP" in out

    # -- teardown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Kill what still runs in the lab's namespaces, delete them all. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for name in reversed(self.created):
            with contextlib.suppress(Exception):
                for pid in _ip("netns", "pids", name, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        for name in reversed(self.created):
            with contextlib.suppress(Exception):
                _ip("netns", "delete", name, check=False)
        self.created.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.close)

    def leftovers(self) -> list[str]:
        """Namespaces of this lab that still exist (should be none after :meth:`close`)."""
        listed = _ip("netns", "list", check=False).stdout.split()
        return [name for name in [self.hub, *self.nodes] if name in listed]


@contextlib.contextmanager
def netns_lab(count: int) -> Iterator[NetnsLab]:
    """A :class:`NetnsLab` that is torn down when the block exits, however it exits."""
    lab = NetnsLab(count)
    try:
        lab.open()
        yield lab
    finally:
        lab.close()

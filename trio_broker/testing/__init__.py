"""Public test helpers, like ``trio.testing``.

- :func:`open_local_cluster`: several real brokers on 127.0.0.1 in one trio program.
- :func:`open_mock_cluster`: the same broker tasks over :class:`MemoryNetwork` and
  :class:`MemoryStore`, for partition and crash scenarios under a mock clock.
- :class:`FaultProxy` and :class:`History`: the chaos suite's fault-injecting TCP proxy and its
  Jepsen-style history checker.
- :class:`PowerLossVFS`: an SQLite VFS that keeps only what was fsynced when its power is
  cut, for durability tests of anything stored through SQLite.
- ``python -m trio_broker.testing.sim``: the deterministic simulator of the consensus core.
"""

from ._history import History
from ._local_cluster import LocalCluster, open_local_cluster
from ._memory_network import MemoryNetwork
from ._memory_store import InlineWorker, MemoryStore, open_memory_storage
from ._mock_cluster import MockCluster, open_mock_cluster
from ._powerloss import PowerCut, PowerLossVFS
from ._proxy import FaultProxy

__all__ = [
    "FaultProxy",
    "History",
    "InlineWorker",
    "LocalCluster",
    "MemoryNetwork",
    "MemoryStore",
    "MockCluster",
    "PowerCut",
    "PowerLossVFS",
    "open_local_cluster",
    "open_memory_storage",
    "open_mock_cluster",
]

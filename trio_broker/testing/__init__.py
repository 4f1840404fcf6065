"""Public test helpers, like ``trio.testing``: local clusters of real brokers and the simulator."""

from ._local_cluster import LocalCluster, open_local_cluster
from ._memory import InlineWorker, MemoryNetwork, MemoryStore, open_memory_storage
from ._mock_cluster import MockCluster, open_mock_cluster

__all__ = [
    "InlineWorker",
    "LocalCluster",
    "MemoryNetwork",
    "MemoryStore",
    "MockCluster",
    "open_local_cluster",
    "open_memory_storage",
    "open_mock_cluster",
]

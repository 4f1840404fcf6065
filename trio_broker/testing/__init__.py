"""Public test helpers, like ``trio.testing``: local clusters of real brokers and the simulator."""

from ._local_cluster import LocalCluster, open_local_cluster

__all__ = ["LocalCluster", "open_local_cluster"]

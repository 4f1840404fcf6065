"""Kept for ``trio_broker._bench``: the broker processes now live in ``trio_broker._cli``."""

from ._cli._processes import READY_DEADLINE, start_node, stop_nodes

__all__ = ["READY_DEADLINE", "start_node", "stop_nodes"]

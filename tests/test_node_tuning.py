"""What the node command sets in its interpreter, and only there."""

from __future__ import annotations

import gc
import sys

import pytest

from trio_broker._cli import _node


def test_the_node_command_shortens_the_gil_switch_interval():
    """The node's two threads that run Python (the event loop's, the storage thread's) wait
    for the GIL at most SWITCH_INTERVAL, not Python's 5 ms (docs/performance-history.md, "100
    connections: the fsync on the loop, and the GIL's switch interval"); the collector keeps
    the node's thresholds."""
    interval, thresholds = sys.getswitchinterval(), gc.get_threshold()
    try:
        sys.setswitchinterval(0.005)
        _node._tune_interpreter()
        assert sys.getswitchinterval() == pytest.approx(_node.SWITCH_INTERVAL)
        assert _node.SWITCH_INTERVAL < 0.005
        assert gc.get_threshold() == _node.GC_THRESHOLDS
    finally:
        sys.setswitchinterval(interval)
        gc.set_threshold(*thresholds)

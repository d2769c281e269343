"""``Pool``: a concurrent.futures.Executor of worker processes fed and drained through
channels; arrays travel through shared memory, written once and never pickled.

- ``executor``: the Pool (the parent's side: feeder and collector threads, worker table);
- ``worker``: the worker process; ``packing``: how a call or an outcome is laid out in a frame.
"""

from .executor import Pool

__all__ = ["Pool"]

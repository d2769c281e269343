"""shmarray on a Dask cluster: ``shmarray.Pool``'s semantics, and SharedArrays by reference.

Install with ``pip install 'shmarray[dask]'``; ``import shmarray`` never imports Dask.

    import distributed, numpy as np
    from shmarray.dask import Executor

    with Executor(distributed.Client(address)) as ex:     # was: with shmarray.Pool(4) as ex:
        spectra = list(ex.map(np.fft.rfft, frames))        # the same calls, the same results

:class:`Executor` is a :class:`concurrent.futures.Executor` with ``imap`` and
``imap_unordered``: the code written for ``shmarray.Pool`` runs unchanged on a cluster.

SharedArrays by reference. Importing this package registers a Dask serializer for
``SharedArray``: it sends only the segment's name to a peer *proven* to share this process's
/dev/shm, and the bytes to any other (proof: each process publishes a beacon segment with a
random token; a peer counts as sharing /dev/shm only once its beacon was opened by name here
and held the token it announced, with the same boot id, uid and /dev/shm; never an IP address;
see ``_beacon``). A name that no longer exists is sent as bytes; a reference that cannot be
attached raises at once (NotFoundError), never hangs. The receiver of a name maps the same
segment (zero copy); the receiver of bytes gets a plain ndarray. :func:`install` (which
``Executor`` calls) sets up every worker of a cluster; ``dask worker --preload shmarray.dask``
does it from a worker's first connection. A segment a task creates and returns is unlinked
once nothing on its worker holds it (``SharedArray.unlink_when_unreferenced``), so results
handed on through Dask never leak, and a killed worker's are found by ``shmarray clean``.

What still differs from ``shmarray.Pool`` (and cannot be hidden):

=========================  ==================================  ===================================
                           shmarray.Pool                       shmarray.dask.Executor
=========================  ==================================  ===================================
start-up, per-task cost    workers start at the first task;    the cluster is yours, started
                           bench_dask.py: 7-15 ms/task for 8   already; each task pays Dask's
                           MiB in and out, 2 workers (2 vCPU)  scheduling: 17-22 ms/task, same runs
``map`` reads iterables    at once (as concurrent.futures)     in a window, as ``imap`` does
worker death               only the task the worker held       the cluster reruns the tasks the
                           fails (PeerDiedError); ``retries=N`` dead worker held, running or
                           sends it N more times               queued, up to ``distributed.
                                                               scheduler.allowed-failures`` times
                                                               (default 3); then PeerDiedError,
                                                               after ``retries=N`` more sends.
                                                               Tasks whose input died with a
                                                               worker are sent again (3 times)
array arguments            every ndarray through shared        to a worker sharing /dev/shm:
                           memory (one copy); the worker gets  ndarrays of 256 KiB or more through
                           a writable view                     a recycled one-off segment (one
                                                               copy), writable view; elsewhere,
                                                               and smaller arrays: Dask's bytes
SharedArray arguments and  by reference                        by reference to a proven peer;
results                                                        elsewhere bytes, arriving as a
                                                               plain ndarray
where arrays are found     anywhere (a pickler hook)           top level, tuples, lists, dict
                                                               values; a SharedArray inside any
                                                               other object is pickled by name
                                                               (pickle's rule), as is one passed
                                                               to ``client.submit`` directly:
                                                               only workers sharing /dev/shm can
                                                               run such a task (Dask waits)
``running()``/``cancel()``  running once in the task ring       running once handed to the cluster
                           (capacity slots)                    (``max_in_flight`` at a time)
``initializer``,           yes                                 no: use a Dask WorkerPlugin; the
``terminate()``                                                cluster is not this object's to
                                                               stop; shutdown never closes it
memory                     shared pages count in workers' RSS  the same, and Dask's pause / spill
                                                               / terminate thresholds act on RSS:
                                                               a worker mapping large shared
                                                               arrays can be paused or restarted
                                                               for memory it does not own
=========================  ==================================  ===================================

Internals used (one module, ``_internals``): ``shmarray.array._rebuild`` (to rebuild a
by-name reference exactly as unpickling does, without unpickling) and
``shmarray._os.names.segment_path`` (whether a name still exists). One patch of Dask:
``distributed.comm.core.Comm.handshake_info`` gains our field (``_beacon.install_handshake``);
where it is missing, peers send bytes.
"""

from __future__ import annotations

from typing import Any

from . import _beacon
from ._executor import Executor
from ._plugin import install, setup_process
from ._wire import MOVE_BYTES

__all__ = ["Executor", "install", "beacon", "shares_shm_with", "MOVE_BYTES", "dask_setup"]

# Serializers are registered by importing _wire (above, through _executor); our field joins the
# handshakes of comms opened from now on. The beacon itself is published on first use.
_beacon.install_handshake()


def beacon() -> str:
    """The name of this process's beacon segment (published on first use; ``shmarray ls``
    lists it as ``dkb-...``). Raises LimitError when /dev/shm cannot hold it."""
    return str(_beacon.local()["name"])


def shares_shm_with(handshake: dict[str, Any]) -> bool:
    """Whether the peer whose Dask comm handshake is ``handshake`` (a comm's ``remote_info``)
    is proven to share this process's /dev/shm. Never raises."""
    return _beacon.shares_shm(handshake.get(_beacon.FIELD) if isinstance(handshake, dict)
                              else None)


def dask_setup(service: Any) -> None:
    """Hook for ``dask worker --preload shmarray.dask`` (and scheduler preloads): the process is
    set up before it opens its first connection."""
    setup_process()

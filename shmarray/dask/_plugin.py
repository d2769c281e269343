"""Setting up a process for shmarray.dask: serializers, handshake field, beacon."""

from __future__ import annotations

from typing import Any

import distributed
from distributed.diagnostics.plugin import WorkerPlugin

from . import _beacon

__all__ = ["install", "setup_process", "ShmarrayPlugin"]

PLUGIN_NAME = "shmarray-dask"


def setup_process() -> str | None:
    """Make this process speak shmarray.dask: register the serializers, add our field to the
    comm handshakes opened from now on, publish the beacon. Returns the beacon's name, or None
    where /dev/shm cannot hold one (peers then send us bytes). Idempotent."""
    from . import _wire  # noqa: F401  (registers the serializers)

    _beacon.install_handshake()
    entry = _beacon.handshake_entry()
    return None if entry is None else str(entry["name"])


class ShmarrayPlugin(WorkerPlugin):
    """Runs :func:`setup_process` in every worker, present and future."""

    name = PLUGIN_NAME

    def setup(self, worker: Any) -> None:
        setup_process()


def install(client: distributed.Client) -> None:
    """Set up this process and every worker of ``client``'s cluster (present and future: a
    worker plugin). Blocks for one round trip to the scheduler. Connections opened before
    (between workers, or to this client) keep their handshake, so they carry bytes; start
    workers with ``--preload shmarray.dask`` to have it from their first connection."""
    setup_process()
    client.register_plugin(ShmarrayPlugin(), name=PLUGIN_NAME)

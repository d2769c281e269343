"""Shared fixtures: unique names, leak checks, and helpers to run code in real processes."""

from __future__ import annotations

import os
import time
import uuid
from typing import Iterator

import pytest

SHM = "/dev/shm"


def _ours() -> set[str]:
    # Filtered to our prefixes: multiprocessing's own sem.mp-* must never make this flaky.
    return {f for f in os.listdir(SHM) if f.startswith(("shmarray.", "sem.shmarray."))}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a shmarray segment or semaphore in /dev/shm."""
    before = _ours()
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = _ours() - before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # children may still be exiting
    if left:
        _remove_dead(left)  # do not cascade into the next test
        pytest.fail(f"test left shmarray objects in /dev/shm: {sorted(left)}")


def _remove_dead(files: set[str]) -> None:
    """Remove leftovers whose owner is dead; never a live process's (another test run's)."""
    from shmarray._os import names as _names
    from shmarray._os import registry as _registry
    from shmarray._os import segment as _segment

    for f in files:
        name = _names.from_segment_file(f)
        if name is not None:
            entry = _registry.inspect(name)
            if entry.alive:
                continue
            _segment.unlink_objects(entry.objects)  # its queue cannot be seen in /dev/shm
        try:
            os.unlink(os.path.join(SHM, f))
        except OSError:
            pass


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A name no other test (or run) uses."""
    stem = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"



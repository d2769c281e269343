"""An exception at any step of creating a channel or an array undoes every step before it:
nothing is left in /dev/shm, and the channel's control queue is gone too (issue 11, C18)."""

from __future__ import annotations

import os

import pytest

from helpers import run_py

CHANNEL_STEPS = ["segment.opened", "segment.locked", "segment.truncated", "channel.header",
                 "channel.objects"]
ARRAY_STEPS = ["segment.opened", "segment.locked", "segment.truncated"]

# The child records the names of the queues the creation made (by watching the name helper, not
# by replacing any IPC call), then checks each is gone after the injected KeyboardInterrupt.
CHILD = """
    import os, sys
    import numpy as np
    import posix_ipc
    import shmarray
    from shmarray._os import names

    made = []
    real = names.sub_object
    def recording(*a, **k):
        made.append(real(*a, **k))
        return made[-1]
    names.sub_object = recording

    name, kind = sys.argv[1], sys.argv[2]
    try:
        if kind == "channel":
            shmarray.Channel.create(name, slot_bytes=64, capacity=2)
        else:
            shmarray.create(name, (4,), np.float64)
    except KeyboardInterrupt as e:
        print("interrupted:", e)
    else:
        print("created")
    for q in made:
        try:
            posix_ipc.MessageQueue(q).close()
            print("left", q)
        except posix_ipc.ExistentialError:
            print("gone", q)
"""


@pytest.mark.parametrize("kind,step", [("channel", s) for s in CHANNEL_STEPS]
                         + [("array", s) for s in ARRAY_STEPS])
def test_an_interrupted_create_leaves_nothing(name: str, kind: str, step: str) -> None:
    before = set(os.listdir("/dev/shm"))
    res = run_py(CHILD, name, kind, env={"SHMARRAY_FAULT": f"{step}:1:raise"})
    assert f"interrupted: shmarray fault injected at {step}" in res.stdout, res.stdout
    assert "left" not in res.stdout, res.stdout
    if kind == "channel" and step == "channel.objects":
        assert "gone /shmarray." in res.stdout, res.stdout  # the queue existed, then went
    assert set(os.listdir("/dev/shm")) == before

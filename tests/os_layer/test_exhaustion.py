"""Resource exhaustion: a full /dev/shm, too many open files, message-queue limits.

Each case runs in a child with its own mount and IPC namespaces (`unshare -m -i`, root here): a
small tmpfs on /dev/shm and the child's own message queues, listed through an mqueue mount, so
"nothing half-created is left behind" is checked for segments, semaphores AND queues, and the
limits set (queues_max is per IPC namespace) touch nobody else. Where namespaces cannot be made
the tests are skipped with the reason.

Every failure must be a LimitError naming the limit; a channel's pages are reserved at create, so
a /dev/shm that fills up later cannot SIGBUS a stream.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap

import pytest

from helpers import CHILD_CWD, PY

PRELUDE = """
import json, os, resource, sys
import numpy as np
import shmarray
from shmarray._os import segment as _segment
MQ = sys.argv[1]
def left():
    return sorted(os.listdir("/dev/shm")) + sorted("mq:" + q for q in os.listdir(MQ))
def free():
    s = os.statvfs("/dev/shm")
    return s.f_bavail * s.f_frsize
def attempt(fn):
    try:
        fn()
        return ["ok"]
    except shmarray.ShmArrayError as e:
        return [type(e).__name__, str(e)]
    except Exception as e:
        return ["BUG", type(e).__name__ + ": " + str(e)]
results = {}
"""


def isolated(tmp_path, code: str, shm_size: str = "1M", timeout: float = 60) -> dict:
    """Run ``code`` with a private /dev/shm (tmpfs of ``shm_size``) and private message queues
    (mounted at argv[1]); return the JSON object it prints last."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private /dev/shm and IPC namespace")
    mq = tmp_path / "mq"
    mq.mkdir()
    script = tmp_path / "child.py"
    script.write_text(PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(results))\n")
    shell = (f"mount -t tmpfs -o size={shm_size},mode=1777 tmpfs /dev/shm && "
             f"mount -t mqueue none {mq} && exec {PY} {script} {mq}")
    res = subprocess.run(["unshare", "--mount", "--ipc", "sh", "-c", shell], capture_output=True,
                         text=True, timeout=timeout, cwd=CHILD_CWD)
    if res.returncode != 0 and ("Operation not permitted" in res.stderr
                                or "Permission denied" in res.stderr) and not res.stdout:
        pytest.skip(f"cannot make a private /dev/shm here (needs CAP_SYS_ADMIN): "
                    f"{res.stderr.strip()[:200]}")
    assert res.returncode == 0, f"child failed ({res.returncode}): {res.stdout}\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_full_dev_shm_fails_at_create_never_mid_stream(tmp_path) -> None:
    r = isolated(tmp_path, """
        # 1. more than /dev/shm has: refused by the statvfs check
        results["too_big"] = attempt(lambda: shmarray.Channel.create("big", slot_bytes=2 << 20,
                                                                     capacity=2))
        results["after_too_big"] = left()
        # 2. the same with the check out of the way: fallocate refuses (pages are reserved)
        check, _segment.check_space = _segment.check_space, lambda *a: None
        results["reserve"] = attempt(lambda: shmarray.Channel.create("big", slot_bytes=2 << 20,
                                                                     capacity=2))
        _segment.check_space = check
        results["after_reserve"] = left()
        # 3. the segment fits exactly and takes the last page: a channel is nothing but its
        # segment in /dev/shm (it waits on futexes in it; its queue is not in /dev/shm)
        from shmarray._os.native import ffi, lib
        p = ffi.new("shm_chan_params *")
        p.mode, p.policy, p.capacity, p.max_participants = 1, 1, 2, 4
        slot = 4096
        while True:  # the largest slot whose segment still fits
            p.slot_bytes = slot + 4096
            if 4096 + lib.shm_chan_size(p) > free():
                break
            slot += 4096
        p.slot_bytes = slot
        results["exact_fit"] = 4096 + lib.shm_chan_size(p) == free()
        def exact():
            with shmarray.Channel.create("exact", slot_bytes=slot, capacity=2,
                                         max_participants=4):
                pass
        results["exact"] = attempt(exact)
        results["after_exact"] = left()
        # 4. a channel made while there was room keeps streaming after /dev/shm fills up
        ch = shmarray.Channel.create("ok", slot_bytes=64 << 10, capacity=4)
        st = os.stat("/dev/shm/shmarray.ok")
        results["reserved"] = st.st_blocks * 512 >= st.st_size
        with open("/dev/shm/filler", "wb") as f:
            try:
                while True:
                    f.write(b"x" * 65536)
                    f.flush()
            except OSError:
                pass
        results["free_after_fill"] = free()
        rx = shmarray.Channel.open("ok")
        total = 0
        for i in range(12):  # three laps of the ring, every slot written in full
            ch.send(np.full(64 << 10, i % 251, np.uint8), timeout=5)
            with rx.recv(timeout=5) as v:
                total += int(v[-1])
        results["streamed"] = total
        results["another"] = attempt(lambda: shmarray.Channel.create("more", slot_bytes=64,
                                                                     capacity=2))
        results["array_reserved"] = attempt(lambda: shmarray.create("arr", shape=(1 << 20,),
                                                                    reserve=True))
        rx.close()
        ch.unlink()
        os.unlink("/dev/shm/filler")
        results["at_end"] = left()
    """)
    assert r["too_big"][0] == "LimitError" and "/dev/shm has" in r["too_big"][1], r["too_big"]
    assert r["reserve"][0] == "LimitError" and "/dev/shm is full" in r["reserve"][1], r
    assert r["exact_fit"]
    assert r["exact"] == ["ok"], r["exact"]
    assert r["after_too_big"] == r["after_reserve"] == r["after_exact"] == []
    assert r["reserved"] and r["free_after_fill"] < 65536
    assert r["streamed"] == sum(i % 251 for i in range(12))
    assert r["another"][0] == "LimitError" and "/dev/shm" in r["another"][1], r["another"]
    assert r["array_reserved"][0] == "LimitError", r["array_reserved"]
    assert r["at_end"] == []


def test_too_many_open_files_is_a_limit_error(tmp_path) -> None:
    r = isolated(tmp_path, """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        def fds():
            return len(os.listdir("/proc/self/fd")) - 1  # the listing's own
        base = fds()
        for extra in range(14):  # every step of create, open, send, recv, control can run out
            resource.setrlimit(resource.RLIMIT_NOFILE, (base + extra, hard))
            def go():
                ch = shmarray.Channel.create(f"n{extra}", slot_bytes=64, capacity=2)
                try:
                    rx = shmarray.Channel.open(ch.name)
                    ch.send(np.zeros(2))
                    rx.recv(timeout=1).release()
                    rx.control.send({"a": 1})
                    assert ch.control.recv(timeout=1) == {"a": 1}
                    rx.close()
                finally:
                    ch.close()
                    ch.unlink()
            res = attempt(go)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            results[str(extra)] = [res, left()]
    """)
    kinds = {k: v[0][0] for k, v in r.items()}
    for k, (res, after) in r.items():
        assert res[0] in ("ok", "LimitError"), (k, res)
        if res[0] == "LimitError":
            assert "ulimit -n" in res[1] or "RLIMIT_MSGQUEUE" in res[1], (k, res)
        assert after == [], (k, after)  # nothing half-created
    assert kinds["0"] == "LimitError" and kinds["13"] == "ok", kinds


def test_message_queue_limits(tmp_path) -> None:
    r = isolated(tmp_path, """
        # queues_max is per IPC namespace: this one is ours
        with open("/proc/sys/fs/mqueue/queues_max", "w") as f:
            f.write("1\\n")
        a = shmarray.Channel.create("q1", slot_bytes=64, capacity=2)
        results["queues_max"] = attempt(lambda: shmarray.Channel.create("q2", slot_bytes=64,
                                                                        capacity=2))
        results["left_qmax"] = left()
        a.send(np.arange(3))
        rx = shmarray.Channel.open("q1")
        results["first_still_works"] = rx.recv_copy(timeout=1).tolist()
        rx.close()
        a.unlink()
        results["at_end"] = left()
    """)
    assert r["queues_max"][0] == "LimitError" and "queues_max" in r["queues_max"][1]
    # only the first channel's objects: the refused one left nothing (RLIMIT_MSGQUEUE, a
    # per-user budget shared with every other process of the uid, is tests/test_control.py's)
    assert all("q2" not in f for f in r["left_qmax"]) and len(r["left_qmax"]) == 2
    assert r["first_still_works"] == [0, 1, 2]
    assert r["at_end"] == []

"""Hostile neighbours: permissions, names, untrusted bytes, and what `shmarray clean` may touch.

- Channel objects (segment, semaphores, control queue) are 0600: another user can neither
  open the channel nor any of its objects directly (setpriv to user 'nobody', as
  tests/test_lifecycle.py does; skipped without root / setpriv / a Python 'nobody' can run).
- Names with '/', '..', NUL, a leading '-' or over 100 characters are refused for channels
  as for arrays, before anything touches the file system.
- Nothing from shared memory or the control queue is unpickled or evaluated.
- `shmarray clean` never removes a live owner's objects, nor anything that is not shmarray's,
  even when a dead segment's header lists somebody else's objects.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import pickle
import sys

import posix_ipc
import pytest

import shmarray
import shmarray.cli as shmarray_cli
from helpers import nobody_user, run_py, start_py, stop


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = shmarray_cli.main(list(args))
    return rc, out.getvalue()




def test_other_user_cannot_open_send_or_receive(name: str) -> None:
    user = nobody_user()
    if user is None:
        pytest.skip("needs root, setpriv and a Python that user 'nobody' can run")
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as ch:
        assert os.stat(f"/dev/shm/shmarray.{name}").st_mode & 0o777 == 0o600
        ch.send(b"secret")
        res = run_py(f"""
            import os, posix_ipc, shmarray
            objects = [{ch._seg.control_name!r}]
            try:
                shmarray.Channel.open({name!r}, timeout=0)
            except shmarray.AccessDeniedError as e:
                print("channel denied:", e)
            for o in objects:
                try:
                    posix_ipc.MessageQueue(o)
                    print("opened", o)
                except posix_ipc.PermissionsError:
                    print("denied", o)
            try:
                os.open("/dev/shm/shmarray.{name}", os.O_RDONLY)
                print("read the segment")
            except PermissionError:
                print("segment denied")
            print(shmarray.ShmArrayError.__name__)
        """, user=user, env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        out = res.stdout
        assert "channel denied:" in out and "0600" in out, out + res.stderr
        assert "opened" not in out and out.count("denied /shmarray.") == 1, out
        assert "segment denied" in out
        with shmarray.Channel.open(name) as rx:
            assert rx.recv_copy(timeout=1).tobytes() == b"secret"  # untouched


@pytest.mark.parametrize("mode", ["work-queue", "broadcast"])
def test_perm_shares_every_object_with_another_user(name: str, mode: str) -> None:
    # perm= reaches the segment and the control queue exactly, whatever the umask: another user
    # opens the channel, receives, sends and talks on the control queue (issue 11, C15)
    user = nobody_user()
    if user is None:
        pytest.skip("needs root, setpriv and a Python that user 'nobody' can run")
    kw = {"max_subscribers": 2} if mode == "broadcast" else {}
    old_umask = os.umask(0o077)
    try:
        ch = shmarray.Channel.create(name, slot_bytes=64, capacity=4, mode=mode, perm=0o666, **kw)
    finally:
        os.umask(old_umask)
    with ch:
        assert os.stat(f"/dev/shm/shmarray.{name}").st_mode & 0o777 == 0o666
        ch.send(b"shared")  # (a subscriber starts at the newest frame)
        child = start_py(f"""
            import shmarray
            ch = shmarray.Channel.open({name!r})
            rx = ch.subscribe() if ch.mode == "broadcast" else ch
            print(rx.recv_copy(timeout=10).tobytes().decode(), flush=True)
            ch.control.send({{"from": "nobody"}}, timeout=10)
            if ch.mode != "broadcast":
                rx.close()
                with shmarray.Channel.open({name!r}) as tx:  # a handle has one role
                    tx.send(b"reply")
            print("done", flush=True)
        """, user=user, env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "shared"
            assert child.stdout.readline().strip() == "done", stop(child)
            notes = [ch.control.recv(timeout=10) for _ in range(2 if mode == "broadcast" else 1)]
            assert notes[-1] == {"from": "nobody"}, notes  # (after the subscriber's join note)
            if mode != "broadcast":
                with shmarray.Channel.open(name) as back:
                    assert back.recv_copy(timeout=10).tobytes() == b"reply"
        finally:
            stop(child)


BAD_NAMES = ["a/b", "..", "../x", "a\0b", "", "-x", ".hidden", "x" * 101, "a b", "a.b", "é"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_bad_channel_names_are_refused(bad: str) -> None:
    before = set(os.listdir("/dev/shm"))
    for call in (lambda: shmarray.Channel.create(bad, slot_bytes=64, capacity=2),
                 lambda: shmarray.Channel.open(bad, timeout=0),
                 lambda: shmarray.Channel.create(bad, slot_bytes=64, capacity=2,
                                                 mode="work-queue"),
                 lambda: shmarray.create(bad, shape=(2,)),
                 lambda: shmarray.attach(bad, timeout=0),
                 lambda: shmarray.unlink(bad)):
        with pytest.raises(shmarray.InvalidNameError, match="rule"):
            call()
    with pytest.raises(shmarray.InvalidNameError):
        cli("clean", "--", bad)
    assert set(os.listdir("/dev/shm")) == before


def test_the_longest_name_works(name: str) -> None:
    long = (name + "x" * 100)[:100]
    with shmarray.Channel.create(long, slot_bytes=64, capacity=2) as ch, \
            shmarray.Channel.open(long) as rx:
        ch.send(b"ok")
        assert rx.recv_copy(timeout=1).tobytes() == b"ok"
    with pytest.raises(shmarray.InvalidNameError):
        shmarray.Channel.create(long + "y", slot_bytes=64, capacity=2)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/shmarray-pwned",))


def test_control_queue_never_unpickles(name: str) -> None:
    marker = "/tmp/shmarray-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    with shmarray.Channel.create(name, slot_bytes=64, capacity=2) as ch:
        ch.control._mq.send(pickle.dumps(_Boom()))
        ch.control._mq.send(b'__import__("os").system("touch /tmp/shmarray-pwned")')
        ch.control._mq.send(b"[1, 2]")  # JSON, but not an object
        for _ in range(3):
            assert set(ch.control.recv(timeout=1)) == {"invalid"}
    assert not os.path.exists(marker)


def test_clean_leaves_live_and_foreign_objects(name: str) -> None:
    live = start_py(f"""
        import shmarray, time
        ch = shmarray.Channel.create({name!r} + "_live", slot_bytes=64, capacity=2)
        print(ch._seg.control_name, flush=True)
        time.sleep(60)
    """)
    dead = start_py(f"""
        import shmarray, time
        ch = shmarray.Channel.create({name!r} + "_dead", slot_bytes=64, capacity=2)
        print(ch._seg.control_name, flush=True)
        time.sleep(60)
    """)
    foreign = [f"/dev/shm/notshmarray.{name}", f"/dev/shm/sem.{name}.x",
               f"/dev/shm/shmarray.{name}.bad.name", f"/dev/shm/shmarray_{name}"]
    link = f"/dev/shm/shmarray.{name}_link"
    target = f"/dev/shm/notshmarray.{name}"
    try:
        assert live.stdout is not None and dead.stdout is not None
        live_objects = live.stdout.readline().split()
        dead_objects = dead.stdout.readline().split()
        assert len(live_objects) == len(dead_objects) == 1
        for f in foreign:
            with open(f, "wb") as fh:
                fh.write(b"not ours" * 512)
        os.symlink(target, link)  # a segment name that is a symlink to somebody's file
        dead.kill()
        dead.wait(10)
        # the dead channel's header now lists the LIVE channel's queue
        path = f"/dev/shm/shmarray.{name}_dead"
        fd = os.open(path, os.O_RDWR)
        mm = mmap.mmap(fd, 4096)
        text = "\n".join(live_objects).encode()
        mm[176:176 + 1024] = text + bytes(1024 - len(text))
        mm[168:172] = len(text).to_bytes(4, "little")
        mm.close()
        os.close(fd)
        rc, out = cli("clean")
        assert f"{name}_live" not in out, out
        assert not os.path.exists(path)  # the dead one went...
        for o in live_objects:  # ...without touching what its scribbled header named
            posix_ipc.MessageQueue(o).close()
        assert os.path.exists(f"/dev/shm/shmarray.{name}_live")
        for f in foreign + [target]:
            assert os.path.exists(f), f
        with pytest.raises(shmarray.ShmArrayError):
            shmarray.attach(f"{name}_link", timeout=0)  # never followed
        rc, out = cli("clean", f"{name}_live")
        assert rc == 1 and "refused" in out
        # the dead channel's own queue went with it: a scribbled object list is refused, and
        # the queue's name is derived from the segment's name and nonce instead
        for o in dead_objects:
            with pytest.raises(posix_ipc.ExistentialError):
                posix_ipc.MessageQueue(o)
    finally:
        stop(live)
        stop(dead)
        for f in foreign + [link]:
            with contextlib.suppress(OSError):
                os.unlink(f)
        with contextlib.suppress(shmarray.ShmArrayError):
            cli("clean", "--force", f"{name}_live")
        with contextlib.suppress(shmarray.ShmArrayError):
            shmarray.unlink(f"{name}_dead")

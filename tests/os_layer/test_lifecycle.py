"""Who unlinks what, and when: normal exit, exceptions, SIGKILL, SIGTERM, fork; ls and clean."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import shmarray
import shmarray._os.segment
from helpers import CHILD_CWD, nobody_user, run_py, start_py, stop, wait_for


def seg(name: str) -> str:
    return f"/dev/shm/shmarray.{name}"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shmarray.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=CHILD_CWD)


def test_exit_and_exception_unlink(name: str) -> None:
    run_py(f"import shmarray; shmarray.create({name!r}, shape=(10,))")
    assert not os.path.exists(seg(name))
    res = run_py(f"""
        import shmarray
        a = shmarray.create({name!r}, shape=(10,))
        raise RuntimeError("boom")
    """, check=False)
    assert res.returncode == 1 and "boom" in res.stderr
    assert not os.path.exists(seg(name))


def test_ctrl_c_unlinks(name: str) -> None:
    child = start_py(f"""
        import shmarray, time
        a = shmarray.create({name!r}, shape=(10,))
        print("ready", flush=True)
        time.sleep(60)
    """)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGINT)
    child.wait(30)
    stop(child)
    assert not os.path.exists(seg(name))


def test_sigterm_opt_in(name: str) -> None:
    child = start_py(f"""
        import shmarray, time
        shmarray.cleanup_on_sigterm()
        a = shmarray.create({name!r}, shape=(10,))
        print("ready", flush=True)
        time.sleep(60)
    """)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    child.send_signal(signal.SIGTERM)
    assert child.wait(30) == 143
    stop(child)
    assert not os.path.exists(seg(name))


def test_forked_child_exit_unlinks_nothing(name: str) -> None:
    with shmarray.create(name, shape=(4,), dtype="i4") as a:
        pid = os.fork()
        if pid == 0:  # child: its exit (atexit included) must not unlink the parent's segment
            import atexit

            code = 1
            try:
                a[0] = 77
                shmarray._os.segment.cleanup_owned()
                atexit._run_exitfuncs()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists(seg(name)) and a[0] == 77
        assert shmarray.attach(name, timeout=0)[0] == 77


def test_sigkill_leaves_segment_ls_and_clean(name: str) -> None:
    live = shmarray.create(name + "_live", shape=(3,))
    child = start_py(f"""
        import shmarray, time
        a = shmarray.create({name!r}, shape=(1000,), dtype="f4")
        print("ready", flush=True)
        time.sleep(60)
    """)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        out = cli("ls").stdout
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert "alive" in line and str(child.pid) in line and "<f4 (1000,)" in line
        child.kill()
        child.wait(10)
        assert os.path.exists(seg(name))  # SIGKILL: nobody could unlink it
        out = cli("ls").stdout
        line = next(ln for ln in out.splitlines() if ln.startswith(name + " "))
        assert "dead" in line
        # attaching works but warns
        with pytest.warns(shmarray.OwnerDiedWarning, match=f"shmarray clean {name}"):
            b = shmarray.attach(name, timeout=0)
        del b
        res = cli("clean", "--dry-run")
        assert f"would remove array {name}" in res.stdout and os.path.exists(seg(name))
        res = cli("clean")
        assert f"removed array {name}" in res.stdout, res.stdout + res.stderr
        assert not os.path.exists(seg(name))
        assert os.path.exists(seg(name + "_live"))  # a live owner's segment stays
    finally:
        stop(child)
        live.unlink()


def test_clean_named_live_owner_refused_without_force(name: str) -> None:
    child = start_py(f"""
        import shmarray, time
        a = shmarray.create({name!r}, shape=(10,))
        print("ready", flush=True)
        time.sleep(60)
    """)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        res = cli("clean", name)
        assert res.returncode == 1 and "refused" in res.stdout and "--force" in res.stdout
        assert os.path.exists(seg(name))
        res = cli("clean", "--force", name)
        assert res.returncode == 0 and not os.path.exists(seg(name))
    finally:
        stop(child)


def test_clean_ignores_foreign_files(name: str) -> None:
    foreign = f"/dev/shm/notours_{name}"
    open(foreign, "w").close()
    try:
        cli("clean")
        assert os.path.exists(foreign)
    finally:
        os.unlink(foreign)


def test_killed_while_creating_is_recognised(name: str) -> None:
    # A creator that dies before publishing leaves a segment whose 'ready' word is 0.
    fd = os.open(seg(name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.ftruncate(fd, 8192)
    os.close(fd)
    with pytest.raises(shmarray.CorruptSegmentError, match="never finished|ready"):
        shmarray.attach(name, timeout=2)
    out = cli("ls").stdout
    assert name in out and "dead" in out
    cli("clean")
    assert not os.path.exists(seg(name))




def test_other_user_cannot_attach(name: str) -> None:
    user = nobody_user()
    if user is None:
        pytest.skip("needs root, setpriv and a Python that user 'nobody' can run")
    with shmarray.create(name, shape=(4,)):
        mode = os.stat(seg(name)).st_mode & 0o777
        assert mode == 0o600
        res = run_py(f"""
            import shmarray
            try:
                shmarray.attach({name!r}, timeout=0)
            except shmarray.AccessDeniedError as e:
                print("denied:", e)
        """, user=user, env={"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
        assert "denied:" in res.stdout and "0600" in res.stdout


def test_mode_is_honoured(name: str) -> None:
    with shmarray.create(name, shape=(4,), mode=0o644):
        assert os.stat(seg(name)).st_mode & 0o777 == 0o644


def test_wait_for_helper_bounds() -> None:
    with pytest.raises(AssertionError):
        wait_for(lambda: False, timeout=0.1)

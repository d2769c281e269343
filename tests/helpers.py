"""Helpers for tests: run code in real (spawned) processes, poll against deadlines."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from typing import Any, Callable

PY = sys.executable
# Children run outside the source tree, so `import shmarray` finds the installed build.
CHILD_CWD = "/"


def run_py(code: str, *args: str, timeout: float = 60, check: bool = True,
           env: dict[str, str] | None = None,
           user: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python process (spawned, never forked); returns the result."""
    cmd = _as_user(user, [PY, "-c", textwrap.dedent(code), *args])
    full_env = dict(os.environ)
    full_env.update(env or {})
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                         cwd=CHILD_CWD)
    if check and res.returncode != 0:
        raise AssertionError(f"child failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def start_py(code: str, *args: str, env: dict[str, str] | None = None,
             user: str | None = None) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh Python process; stdout is a pipe (line protocol)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.Popen(_as_user(user, [PY, "-c", textwrap.dedent(code), *args]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=CHILD_CWD)


def _as_user(user: str | None, cmd: list[str]) -> list[str]:
    """``cmd`` run as ``user`` (setpriv; the caller is root), or as is."""
    if user is None:
        return cmd
    import pwd

    pw = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", *cmd]


def wait_for(pred: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``pred`` until truthy, against a deadline (crash tests)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def worker_write(a: Any) -> tuple[int, int]:
    """For process pools: write our pid into a (shared) array."""
    a[...] = os.getpid()
    return a.__array_interface__["data"][0], os.getpid()


def stop(child: subprocess.Popen[str]) -> tuple[str, str]:
    """Kill ``child`` if it still runs, reap it and close its pipes; return (stdout, stderr)."""
    if child.poll() is None:
        child.kill()
    out, err = child.communicate(timeout=30)
    return out, err


def nobody_user() -> str | None:
    """'nobody' when this process can run the installed shmarray as that user (root, setpriv,
    a Python that user can read), else None: permission tests skip then."""
    import pwd
    import shutil

    if os.getuid() != 0 or shutil.which("setpriv") is None:
        return None
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        return None
    probe = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                            "--clear-groups", sys.executable, "-c", "import shmarray"],
                           capture_output=True, timeout=60, cwd=CHILD_CWD,
                           env={**os.environ,
                                "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    return "nobody" if probe.returncode == 0 else None


def run_async(coro: Callable[[], Any], limit: float = 60) -> Any:
    """Run ``coro()`` in a fresh event loop, bounded in time (asyncio.TimeoutError past it)."""
    import asyncio

    async def bounded() -> Any:
        return await asyncio.wait_for(coro(), limit)
    return asyncio.run(bounded())


def doorbells(name: str) -> list[str]:
    """The asyncio doorbell FIFOs of channel ``name`` in /dev/shm."""
    return [f for f in os.listdir("/dev/shm")
            if f.startswith(f"shmarray.{name}.") and ".db" in f]


#: a process whose asyncio consumer parks on channel {name} (after running {create}) and
#: prints "waiting"
ASYNC_WAITER = """
import asyncio, shmarray, shmarray.aio
{create}
async def main():
    ach = shmarray.aio.Channel.open({name!r})
    t = asyncio.ensure_future(ach.recv(timeout=60))
    await asyncio.sleep(0.2)
    print("waiting", flush=True)
    await t
asyncio.run(main())
"""

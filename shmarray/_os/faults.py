"""Fault injection for crash tests: stop this process at a named protocol step.

Off unless the environment says otherwise when shmarray is imported::

    SHMARRAY_FAULT=<step>[:<nth>[:<action>]]

``<step>`` is one of :data:`STEPS`; at the ``<nth>`` time (default 1) this process reaches
``point("<step>")`` it writes ``shmarray-fault: <step> pid <pid>`` to stderr and then

- ``kill`` (default): SIGKILLs itself (a crash: no atexit, no finally, no unlink);
- ``stop``: SIGSTOPs itself, frozen at the step and alive (the test decides what comes next);
- ``raise``: raises KeyboardInterrupt there (a signal handler's exception at that bytecode).

Cost when off: ``point`` is bound at import to a function that returns at once, and hot paths
test the module constant ``ENABLED`` (bound once into a module-level name by their importer)
before calling it, so the per-frame paths pay one global load and a branch. The choice is made
once, at import: setting the variable later has no effect.
"""

from __future__ import annotations

import os
import signal

__all__ = ["ENABLED", "STEPS", "point"]

#: Every fault point, with where it sits. A new point is added here and where it sits.
STEPS: dict[str, str] = {
    # segment.create
    "segment.opened": "an unnamed (O_TMPFILE) file open; owner lock not taken, name not linked",
    "segment.locked": "the file is linked under its name, empty, owner lock held; before ftruncate",
    "segment.truncated": "sized (and reserved); before mmap and the header write",
    # segment.unlink
    "segment.unlink": "the header's queue unlinked; the segment not yet",
    # Channel.create's init
    "channel.header": "segment header and ring formatted; no queue yet; ready == 0",
    "channel.objects": "the control queue created; ready == 0 (before publish)",
    # Channel participants
    "channel.register": "liveness lock of an entry taken; entry not yet ACTIVE",
    "channel.recover": "a dead peer's lock taken by this process; before reclaiming it",
    "channel.loan": "a slot claimed for a loan; before the caller sees it (claim, no commit)",
    "channel.end": "end of stream set (and waiting consumers woken); before end() returns",
    "channel.close": "close() begun; before unregistering (still ACTIVE)",
    # wait.wait (every blocking channel call)
    "wait.spun": "the spin found nothing; before arming",
    "wait.armed": "armed (waiter count raised); before the re-check",
    "wait.sleep": "armed and re-checked; about to sleep on the futex",
    "wait.woken": "woken; before disarming and taking the frame / slot",
    # ControlQueue
    "control.send": "a control message encoded; before mq_send",
    "control.recv": "a control message taken off the queue; before it is decoded",
}

_SPEC = os.environ.get("SHMARRAY_FAULT", "")
ENABLED = bool(_SPEC)

_step = ""
_nth = 1
_action = "kill"
_hits = 0


def _parse(spec: str) -> tuple[str, int, str]:
    parts = spec.split(":")
    step = parts[0]
    if step not in STEPS:
        raise ValueError(f"SHMARRAY_FAULT={spec!r}: unknown step {step!r} (known: "
                         f"{', '.join(sorted(STEPS))})")
    nth = int(parts[1]) if len(parts) > 1 and parts[1] else 1
    action = parts[2] if len(parts) > 2 and parts[2] else "kill"
    if nth < 1 or action not in ("kill", "stop", "raise") or len(parts) > 3:
        raise ValueError(f"SHMARRAY_FAULT={spec!r}: expected <step>[:<nth> >= 1[:kill|stop|"
                         "raise]]")
    return step, nth, action


def _fire(name: str) -> None:
    os.write(2, f"shmarray-fault: {name} pid {os.getpid()}\n".encode())
    if _action == "raise":
        raise KeyboardInterrupt(f"shmarray fault injected at {name}")
    os.kill(os.getpid(), signal.SIGSTOP if _action == "stop" else signal.SIGKILL)


def _point(name: str) -> None:
    global _hits
    if name == _step:
        _hits += 1
        if _hits == _nth:
            _fire(name)


def _off(name: str) -> None:
    return None


if ENABLED:
    _step, _nth, _action = _parse(_SPEC)
    point = _point
else:
    point = _off

"""Proof that a peer shares this process's /dev/shm: beacons, verdicts, the handshake field.

An IP address proves nothing (a container on the same IP has its own /dev/shm, and so does a
process in its own mount namespace), so a segment name is sent to a peer only after a proof:

- Every process that uses this package publishes a *beacon*: a 64-byte SharedArray
  ``dkb-<24 hex>`` holding, little-endian::

      0   8   magic b"SHMDKB1\\0"
      8   16  token: 16 random bytes, never sent anywhere
      24  16  boot id (/proc/sys/kernel/random/boot_id)
      40  4   uid      44  4  pid
      48  8   st_dev of /dev/shm      56  8  st_ino of /dev/shm

  It is an ordinary owned segment: unlinked at exit, and left for ``shmarray clean`` by a
  process that is killed.
- Every Dask comm handshake this process writes carries :func:`handshake_entry`: the beacon's
  name, SHA-256 of its token, boot id, uid and the device and inode of /dev/shm.
- A sender about to serialize a SharedArray for a peer reads that entry from the comm's
  handshake (Dask hands serializers the comm's ``context``) and calls :func:`shares_shm`: the
  peer counts as sharing our /dev/shm only once we opened *its* beacon by name in *our*
  /dev/shm and read a token whose digest is the one it announced, with the same boot id, uid
  and /dev/shm device and inode as ours. The verdict is cached per beacon; anything missing,
  malformed or unreadable is "no", and "no" means bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import struct
import threading
from typing import Any

import numpy as np

import shmarray

__all__ = ["FIELD", "local", "handshake_entry", "shares_shm", "install_handshake"]

FIELD = "shmarray-beacon"  # the key of our entry in a Dask comm handshake
PREFIX = "dkb-"
_NAME = re.compile(r"dkb-[0-9a-f]{24}\Z")
_MAGIC = b"SHMDKB1\0"
_LAYOUT = struct.Struct("<8s16s16sIIQQ")
_SHM = "/dev/shm"

_lock = threading.Lock()
_beacon: tuple[int, shmarray.SharedArray, dict[str, Any]] | None = None  # (pid, array, entry)
_verdicts: dict[tuple[str, ...], bool] = {}


def _boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return bytes.fromhex(f.read().strip().replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return bytes(16)


def _shm_identity() -> tuple[int, int]:
    try:
        st = os.stat(_SHM)
    except OSError:
        return (0, 0)
    return (st.st_dev, st.st_ino)


def local() -> dict[str, Any]:
    """This process's handshake entry, publishing its beacon on first use (again after a
    fork: a child is another peer). Never blocks; raises what :func:`shmarray.create` raises
    (LimitError when /dev/shm is full)."""
    global _beacon
    b = _beacon
    if b is not None and b[0] == os.getpid():
        return b[2]
    with _lock:
        b = _beacon
        if b is not None and b[0] == os.getpid():
            return b[2]
        token = secrets.token_bytes(16)
        boot = _boot_id()
        dev, ino = _shm_identity()
        arr = shmarray.create(PREFIX + secrets.token_hex(12), shape=(_LAYOUT.size,),
                              dtype=np.uint8)
        arr[:] = np.frombuffer(_LAYOUT.pack(_MAGIC, token, boot, os.getuid(), os.getpid(),
                                            dev, ino), np.uint8)
        entry = {"name": arr.name, "proof": hashlib.sha256(token).hexdigest(),
                 "boot": boot.hex(), "uid": os.getuid(), "dev": dev, "ino": ino}
        _beacon = (os.getpid(), arr, entry)
        return entry


def handshake_entry() -> dict[str, Any] | None:
    """:func:`local`, or None where no beacon can be published (then peers send us bytes)."""
    try:
        return local()
    except (shmarray.ShmArrayError, OSError):
        return None


def shares_shm(entry: Any) -> bool:
    """True only if the peer that announced ``entry`` (its handshake field) is proven to share
    this process's /dev/shm (see the module docstring). Cached per beacon; never raises, never
    blocks longer than opening one small segment."""
    if not isinstance(entry, dict):
        return False
    name, proof = entry.get("name"), entry.get("proof")
    if not (isinstance(name, str) and _NAME.match(name) and isinstance(proof, str)):
        return False
    key = (name, proof, *(repr(entry.get(k)) for k in ("boot", "uid", "dev", "ino")))
    got = _verdicts.get(key)
    if got is None:
        got = _verify(entry, name, proof)
        if len(_verdicts) > 4096:  # peers come and go; a long-lived client must not grow
            _verdicts.clear()
        _verdicts[key] = got
    return got


def _verify(entry: dict[str, Any], name: str, proof: str) -> bool:
    mine = handshake_entry()
    if mine is None:
        return False
    if name == mine["name"]:
        return True  # ourselves (a comm within one process)
    if any(entry.get(k) != mine[k] for k in ("boot", "uid", "dev", "ino")):
        return False  # another machine, user or /dev/shm: no need to look
    try:
        peer = shmarray.attach(name, readonly=True, timeout=0)
    except Exception:  # absent (another /dev/shm), not ours to read, a dead owner (a warning)
        return False
    try:
        if peer.shape != (_LAYOUT.size,) or peer.dtype != np.uint8:
            return False
        magic, token, boot, uid, _pid, dev, ino = _LAYOUT.unpack(peer.tobytes())
    finally:
        peer.close()
    return (magic == _MAGIC and secrets.compare_digest(hashlib.sha256(token).hexdigest(), proof)
            and (boot.hex(), uid, dev, ino) == (mine["boot"], mine["uid"], mine["dev"],
                                                 mine["ino"]))


_installed = False


def install_handshake() -> None:
    """Add :func:`handshake_entry` to every Dask comm handshake this process writes, from now
    on (idempotent). Comms opened before keep their handshake, so their peers send bytes."""
    global _installed
    if _installed:
        return
    from distributed.comm.core import Comm

    original = Comm.handshake_info

    def handshake_info(self: Any) -> dict[str, Any]:
        info: dict[str, Any] = original(self)
        entry = handshake_entry()
        if entry is not None:
            info = {**info, FIELD: entry}
        return info

    handshake_info.__wrapped__ = original  # type: ignore[attr-defined]
    Comm.handshake_info = handshake_info  # type: ignore[method-assign]
    _installed = True

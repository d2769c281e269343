"""What a channel looks like from outside: its counters and participants with their liveness,
for ``stats()``, ``shmarray ls`` and ``shmarray top``. One reading of the segment serves every
mode (the counters live in the segment: csrc/chan.h)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._os import names as _names
from .._os import registry as _registry
from .._os.native import chan_strerror, ffi, lib
from .handle import HEADER, MODE_NAMES, POLICY_NAMES, ROLE_NAMES, STATE_NAMES, Handle

if TYPE_CHECKING:
    from .base import Channel

_LIVE = (lib.SHM_CHAN_ACTIVE, lib.SHM_CHAN_JOINING)


def _rows(h: Any, maxp: int, probe_fd: int, mine: int = -1) -> list[dict[str, Any]]:
    status = ffi.new("shm_chan_status_info *")
    lib.shm_chan_status(h, status)
    head = int(status.enqueue_pos)
    rows = []
    p = ffi.new("shm_chan_part_info *")
    for i in range(maxp):
        if lib.shm_chan_participant(h, i, p) != 0 or int(p.state) == lib.SHM_CHAN_FREE:
            continue
        state = int(p.state)
        alive = state in _LIVE and (i == mine or lib.shm_seg_lock_probe(probe_fd, 1 + i) == 1)
        row = {"index": i, "role": ROLE_NAMES.get(int(p.role), "?"), "pid": int(p.pid),
               "state": STATE_NAMES.get(state, "?"), "alive": bool(alive),
               "frames": int(p.frames), "bytes": int(p.bytes), "waits": int(p.waits),
               "joined_ns": int(p.joined_ns), "self": i == mine}
        if int(p.role) == lib.SHM_CHAN_ROLE_CONSUMER:
            row["dropped"] = int(p.dropped)
            row["lost"] = int(p.lost)
            row["skipped"] = int(p.skipped)
            row["lag"] = max(0, min(head - int(p.cursor), 1 << 62))
        rows.append(row)
    return rows


def participants(handle: Handle) -> list[dict[str, Any]]:
    """Every used participant entry of ``handle``'s channel, with liveness and counters."""
    me = handle.self_info()
    mine = int(me.index) if me.registered else -1
    return _rows(handle.h, handle.seg.maxp, handle.seg.anchor_fd, mine)


def snapshot(mapping: Any, probe_fd: int) -> dict[str, Any]:
    """The counters and participants of the channel in ``mapping`` (any mode); raises
    ValueError for a ring that fails validation."""
    h = ffi.new("shm_chan_t *")
    info = ffi.new("shm_chan_info *")
    rc = lib.shm_chan_attach(h, mapping.ptr(HEADER), mapping.size - HEADER, info)
    if rc != 0:
        raise ValueError(f"ring corrupt ({chan_strerror(rc)})")
    return _snapshot(h, info, probe_fd)


def read(name: str) -> dict[str, Any] | None:
    """The snapshot of channel ``name`` read from outside (a read-only mapping: nothing is
    registered, nothing written), with its ``name``, ``owner_pid`` and ``nonce``; None when it
    is not a ready, valid channel (gone, an array, being created, corrupt)."""
    import mmap

    from .._os import segment as _segment

    try:
        fd = os.open(_names.segment_path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size < lib.SHM_SEG_MIN_SIZE:
            return None
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        mapping = _segment.Mapping(name, mm, size, True)
        rc, info = _segment.read_header(mapping, require_ready=True)
        if rc != 0 or int(info.kind) != lib.SHM_SEG_KIND_RING:
            return None
        fields = _segment.header_fields(info)
        try:
            snap = snapshot(mapping, fd)
        except ValueError:
            return None
        snap.update(name=name, owner_pid=fields["creator_pid"], nonce=fields["nonce"])
        return snap
    finally:
        os.close(fd)


def _snapshot(h: Any, info: Any, probe_fd: int) -> dict[str, Any]:
    """The counters of C handle ``h`` over a validated layout ``info`` (each shared word read
    once, as the core reads it: no second look at the header)."""
    st = ffi.new("shm_chan_status_info *")
    lib.shm_chan_status(h, st)
    mode = MODE_NAMES.get(int(info.mode), "?")
    rows = _rows(h, int(info.max_participants), probe_fd)
    cap = int(info.capacity)
    committed = int(st.enqueue_pos)
    if mode == "broadcast":
        lags = [r["lag"] for r in rows if r["role"] == "consumer" and r["alive"]]
        fill = min(max(lags, default=0), cap)
        consumed = committed - max(lags, default=0)
    else:
        consumed = int(st.dequeue_pos)
        fill = max(0, min(committed - consumed, cap))
    return {
        "mode": mode, "policy": POLICY_NAMES.get(int(info.policy), "?"), "capacity": cap,
        "slot_bytes": int(info.slot_bytes), "committed": committed, "consumed": consumed,
        "fill": fill, "dropped": int(st.dropped), "ended": bool(st.eos),
        "evicted": int(st.evicted), "joins": int(st.joins), "opens": int(st.opens),
        "closes": int(st.closes), "waiters": int(st.data_waiters) + int(st.space_waiters),
        "peers": rows,
    }


def channel_stats(ch: Channel) -> dict[str, Any]:
    """The body of ``Channel.stats()``."""
    seg, handle = ch._seg, ch._h
    snap = _snapshot(handle.h, seg.info, seg.anchor_fd)
    me = handle.self_info()
    mine = int(me.index) if me.registered else -1
    for row in snap["peers"]:
        row["self"] = row["index"] == mine
        if row["self"]:
            row["alive"] = True
    own = next((r for r in snap["peers"] if r["self"]), None)
    role = ROLE_NAMES.get(int(me.role), "none") if me.registered else "none"
    out: dict[str, Any] = {
        "name": ch.name, "role": role,
        "sent": int(me.frames) if role == "producer" else 0,
        "received": int(me.frames) if role == "consumer" else 0,
        "waits": own["waits"] if own else 0, "held": int(me.held),
    }
    out.update(snap)
    if snap["mode"] == "broadcast":
        prod = next((r for r in snap["peers"] if r["index"] == lib.SHM_CHAN_BCAST_PRODUCER),
                    None)
        out["max_subscribers"] = seg.maxp - 1
        out["producer"] = ({"pid": prod["pid"], "alive": prod["alive"],
                            "state": prod["state"] if prod["state"] != "active" or prod["alive"]
                            else "dead"} if prod else {"pid": 0, "alive": False,
                                                       "state": "none"})
        out["subscribers"] = [r for r in snap["peers"] if r["role"] == "consumer"]
    return out


def describe(mapping: Any, info: Any) -> str:
    """Detail text for `shmarray ls`: mode, capacity, slot size, fill, participants."""
    fd = os.open(_names.segment_path(mapping.name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        snap = snapshot(mapping, fd)
    except ValueError as exc:
        return str(exc)
    finally:
        os.close(fd)
    parts = []
    for r in snap["peers"]:
        if r["state"] == "ended":
            continue
        who = "sub" if snap["mode"] == "broadcast" and r["role"] == "consumer" else r["role"]
        status = ("alive" if r["alive"] else "dead") if r["state"] in ("active", "joining") \
            else r["state"]
        text = f"{who} {r['pid']} {status}"
        if snap["mode"] == "broadcast" and r["role"] == "consumer":
            text += f" lag {r['lag']}"
            if r["lost"]:
                text += f" lost {r['lost']}"
        parts.append(text)
    if snap["mode"] == "broadcast" and not any(r["role"] == "consumer" for r in snap["peers"]):
        parts.append("no subscribers")
    mode = snap["mode"] if snap["mode"] != "broadcast" else f"broadcast {snap['policy']}"
    frames = f", {snap['committed']} frames" if snap["mode"] == "broadcast" else ""
    ended = ", ended" if snap["ended"] else ""
    evicted = f", {snap['evicted']} evicted" if snap["evicted"] else ""
    return (f"{mode} cap {snap['capacity']} x {snap['slot_bytes']:,} B{frames}, fill "
            f"{snap['fill']}{ended}; " + (", ".join(parts) if parts else "no participants")
            + evicted)


_registry.describers[lib.SHM_SEG_KIND_RING] = describe

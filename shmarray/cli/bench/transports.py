"""The transports ``shmarray bench`` compares: one class each, with the same interface.

In the parent (the runner): ``make_shared`` (objects children must inherit at spawn, such as
a ``multiprocessing.Queue``), ``setup`` / ``teardown`` per measurement (named resources: a
channel, a SharedMemory pool, a socket path), ``close_shared``.

In a spawned child: ``attach`` opens the transport for one role and prepares everything that
is not the thing measured (source arrays, views, buffers); then exactly one of the role loops
runs: ``ping`` / ``echo`` (latency), ``produce`` / ``consume`` (throughput and fan-out).

The role loops are written once, here in the base class, over three primitives each
transport supplies (built once per run, as closures over its bound methods):
``sender(ep, item)`` -> ``send(i, v)``: send frame ``i`` with ``v`` stamped into its first and
last byte; ``receiver(ep, item)`` -> ``take()``: the next frame as ``(array, release)``
(``release`` None when there is nothing to give back), or None at the end of the stream; and
``end(ep)``: end the stream. So every transport pays the same harness cost (one closure call
per send and per receive, about 0.1 us) and a loop is fixed once for all of them.

The methodology is the same for every transport:
- frames are uint8 arrays; the producer writes a sequence stamp (``seq & 255``) into the first
  and the last byte of each frame and the consumer checks both, so every frame is read (its
  first and last cache line) and a reordered or torn frame is counted;
- latency: ping-pong, one round trip timed with ``perf_counter_ns`` in the pinging process;
  the echo answers each frame with a frame of the same size stamped with the value it read
  (a torn frame is answered with another value, which the ping counts);
- throughput: the producer streams frames for ``duration`` seconds (bounded in count too)
  then ends the stream; the consumer timestamps every ``batch``-th receipt.
Every loop is bounded in time or count; a child also exits when its parent dies.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import numpy as np

perf_ns = time.perf_counter_ns

# A receive that waits longer than this is a broken run (the parent's own timeout is shorter
# for any sane duration; this only bounds children whose parent vanished).
RECV_TIMEOUT = 120.0

#: send(i, v): send frame i stamped with v
Send = Callable[[int, int], None]
#: take(): (array, release or None) of the next frame, or None at the end of the stream
Take = Callable[[], "tuple[Any, Callable[[], Any] | None] | None"]
#: the roles that send frames (and hold a pool of source arrays)
SENDERS = ("ping", "echo", "produce")


# ----------------------------------------------------------------------------------------------
# shared helpers


def sources(item: Any, count: int = 1) -> list[np.ndarray]:
    """``count`` distinct source frames of the item's shape (random bytes, fixed seed)."""
    rng = np.random.default_rng(12345)
    base = np.frombuffer(rng.bytes(item.nbytes), dtype=np.uint8).reshape(item.shape)
    return [base.copy() for _ in range(count)]


def corner_index(shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Index tuples of the first and the last element of an array of ``shape``."""
    return (0,) * len(shape), (-1,) * len(shape)


def pool_sender(send_one: Callable[[Any], Any], pool: list[np.ndarray],
                corners: tuple[tuple[int, ...], tuple[int, ...]]) -> Send:
    """send(i, v) that stamps ``pool[i % len(pool)]`` and hands it to ``send_one``: for
    transports that may still hold an array after the send returns (a feeder thread, a
    zero-copy socket), a pool larger than what they can hold."""
    c0, c1 = corners
    npool = len(pool)

    def send(i: int, v: int) -> None:
        src = pool[i % npool]
        src[c0] = v
        src[c1] = v
        send_one(src)
    return send


class _Latency:
    """Round-trip samples of a ping loop: a warm-up bounded in count and time, then samples
    for ``duration`` seconds. ``add`` runs outside the timed interval."""

    __slots__ = ("deadline", "duration", "samples", "warm_until", "warmup")

    def __init__(self, item: Any) -> None:
        self.samples: list[int] = []
        self.warmup = item.warmup
        self.duration = int(item.duration * 1e9)
        self.warm_until = perf_ns() + self.duration // 4
        self.deadline = 0

    def add(self, i: int, t0: int, t1: int) -> bool:
        """Record one round trip (t0..t1, ns); True when the loop should stop."""
        if not self.deadline:
            if i + 1 >= self.warmup or t1 > self.warm_until:
                self.deadline = t1 + self.duration
            return False
        self.samples.append(t1 - t0)
        return t1 > self.deadline


class Transport:
    """Base class. ``name`` is the stable id (table, --only, JSON)."""

    name: ClassVar[str] = ""
    #: modules that must import for the transport to run, with the pip name for the message
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: one line for the table's notes
    note: ClassVar[str] = ""
    #: supports the fan-out workload (one producer, N subscribers each seeing every frame)
    fanout: ClassVar[bool] = False

    @classmethod
    def unavailable(cls) -> str | None:
        """None when the transport can run here, else why not (and how to fix it)."""
        for module, pip_name in cls.requires:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - ImportError, or a broken binary wheel
                return f"{module} not importable ({type(exc).__name__}): pip install {pip_name}"
        return None

    @classmethod
    def version(cls) -> str:
        from importlib.metadata import version

        parts = []
        for _module, pip_name in cls.requires:
            try:
                parts.append(f"{pip_name} {version(pip_name)}")
            except Exception:  # noqa: BLE001, S110 - a version is decoration, never an error
                pass
        return ", ".join(parts)

    # ---- parent side
    def make_shared(self, ctx: Any, items: list[Any], run_id: str) -> Any:
        return None

    def close_shared(self, shared: Any) -> None:
        pass

    def setup(self, item: Any, run_id: str, seq: int) -> tuple[Any, Any]:
        """Per-measurement resources: (info sent to the children, handle kept for teardown)."""
        return None, None

    def teardown(self, handle: Any) -> None:
        pass

    # ---- child side: what each transport supplies
    def attach(self, item: Any, role: str, sub: int, shared: Any, info: Any) -> Any:
        raise NotImplementedError

    def arm(self, ep: Any) -> None:
        """Called in a receiving child (echo, consume) at "go", before any sender starts."""

    def start(self, ep: Any, role: str) -> None:
        """Called at the start of every role loop, outside the timed part."""

    def detach(self, ep: Any) -> None:
        pass

    def sender(self, ep: Any, item: Any) -> Send:
        raise NotImplementedError

    def receiver(self, ep: Any, item: Any) -> Take:
        raise NotImplementedError

    def end(self, ep: Any) -> None:
        raise NotImplementedError

    # ---- child side: the role loops, the same for every transport
    def ping(self, ep: Any, item: Any) -> dict[str, Any]:
        self.start(ep, "ping")
        send, take = self.sender(ep, item), self.receiver(ep, item)
        last = item.nbytes - 1
        bad = 0
        lat = _Latency(item)
        add = lat.add
        for i in range(item.warmup + item.max_count):
            v = i & 255
            t0 = perf_ns()
            send(i, v)
            got = take()
            if got is None:
                raise RuntimeError(f"{self.name}: the echo ended the stream")
            a, release = got
            if a.item(0) != v or a.item(last) != v:
                bad += 1
            if release is not None:
                release()
            if add(i, t0, perf_ns()):
                break
        self.end(ep)
        return {"samples": lat.samples, "bad": bad}

    def echo(self, ep: Any, item: Any) -> dict[str, Any]:
        self.start(ep, "echo")
        send, take = self.sender(ep, item), self.receiver(ep, item)
        last = item.nbytes - 1
        n = 0
        while (got := take()) is not None:
            a, release = got
            v = a.item(0)
            # a frame torn between its first and last byte answers with a stamp the ping
            # counts as bad
            send(n, v if a.item(last) == v else (v + 128) & 255)
            if release is not None:
                release()
            n += 1
        return {"count": n}

    def produce(self, ep: Any, item: Any) -> dict[str, Any]:
        self.start(ep, "produce")
        send = self.sender(ep, item)
        deadline = time.perf_counter() + item.duration
        chk = item.check_mask
        n = 0
        for i in range(item.max_count):
            if not (i & chk) and time.perf_counter() > deadline:
                break
            send(i, i & 255)
            n += 1
        self.end(ep)
        return {"sent": n}

    def consume(self, ep: Any, item: Any) -> dict[str, Any]:
        self.start(ep, "consume")
        take = self.receiver(ep, item)
        last = item.nbytes - 1
        mask = item.batch - 1
        marks: list[int] = []
        count = bad = 0
        while (got := take()) is not None:
            a, release = got
            v = count & 255
            if a.item(0) != v or a.item(last) != v:
                bad += 1
            if release is not None:
                release()
            if not (count & mask):
                marks.append(perf_ns())
            count += 1
        return {"count": count, "bad": bad, "batch": item.batch, "marks": marks}


class _EP:
    """A bag of per-role state (an endpoint)."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)

    if TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any: ...

        def __setattr__(self, name: str, value: Any) -> None: ...


# ----------------------------------------------------------------------------------------------
# shmarray


class ShmarraySend(Transport):
    name = "shmarray-send"
    note = "Channel.send (one copy into a slot); consumer: recv() Frame lease, zero copy"
    fanout = True

    @classmethod
    def version(cls) -> str:
        import shmarray

        return f"shmarray {shmarray.__version__}"

    def setup(self, item: Any, run_id: str, seq: int) -> tuple[Any, Any]:
        from shmarray import Channel

        names, handles = [], []
        try:
            for d in (("ab", "ba") if item.workload == "latency" else ("ab",)):
                name = f"bench-{run_id}-{seq}-{d}"
                if item.workload == "fanout":
                    ch = Channel.create(name, slot_bytes=item.nbytes, capacity=item.capacity,
                                        mode="broadcast", max_subscribers=item.subscribers)
                else:
                    ch = Channel.create(name, slot_bytes=item.nbytes, capacity=item.capacity)
                handles.append(ch)
                names.append(name)
        except BaseException:
            self.teardown(handles)
            raise
        return names, handles

    def teardown(self, handle: Any) -> None:
        from shmarray import NotFoundError

        for ch in handle or ():
            ch.close()
            try:
                ch.unlink()
            except NotFoundError:  # someone ran 'shmarray clean' (or a test's leak check)
                pass

    def attach(self, item: Any, role: str, sub: int, shared: Any, info: Any) -> Any:
        from shmarray import Channel

        chans: list[Any] = [Channel.open(n, timeout=30) for n in info]
        # ping sends on "ab" and receives on "ba"; the echo the other way round
        out, inp = (chans[0], chans[-1]) if role in ("ping", "produce") else (chans[-1],
                                                                             chans[0])
        # a broadcast subscriber joins before the first frame, so it sees every frame
        subscriber = (inp.subscribe() if item.workload == "fanout" and role == "consume"
                      else None)
        return _EP(chans=chans, out=out, inp=subscriber or inp, sub=subscriber,
                   src=sources(item)[0], corners=corner_index(item.shape))

    def detach(self, ep: Any) -> None:
        if ep.sub is not None:
            ep.sub.close()
        for ch in ep.chans:
            ch.close()

    def sender(self, ep: Any, item: Any) -> Send:
        return pool_sender(functools.partial(ep.out.send, timeout=RECV_TIMEOUT), [ep.src],
                           ep.corners)

    def receiver(self, ep: Any, item: Any) -> Take:
        from shmarray import StreamEnded

        recv = ep.inp.recv

        def take() -> tuple[Any, Any] | None:
            try:
                fr = recv(timeout=RECV_TIMEOUT)
            except StreamEnded:
                return None
            return fr.array, fr.release
        return take

    def end(self, ep: Any) -> None:
        ep.out.end()


class ShmarrayLoan(ShmarraySend):
    name = "shmarray-loan"
    note = ("Channel.loan: the producer writes only the sequence stamp into the loaned slot "
            "(the zero-copy case); consumer as shmarray-send")

    def sender(self, ep: Any, item: Any) -> Send:
        loan = ep.out.loan
        c0, c1 = ep.corners
        shape, u8 = item.shape, np.uint8

        def send(i: int, v: int) -> None:
            with loan(shape, u8, timeout=RECV_TIMEOUT) as out:
                out[c0] = v
                out[c1] = v
        return send


# ----------------------------------------------------------------------------------------------
# multiprocessing.Queue and faster-fifo (same API)


class MpQueue(Transport):
    name = "mp.Queue"
    note = ("multiprocessing.Queue(maxsize=capacity): put/get of the array (pickled by the "
            "feeder thread); fan-out: one queue per subscriber")
    fanout = True

    def _queue(self, ctx: Any, item: Any) -> Any:
        return ctx.Queue(maxsize=item.capacity)

    def _pool(self, item: Any) -> list[np.ndarray]:
        # a put() array may still wait in the feeder thread when put() returns: rotate a pool
        # larger than the queue so that no array is stamped again before it was pickled
        return sources(item, item.capacity + 2)

    def make_shared(self, ctx: Any, items: list[Any], run_id: str) -> Any:
        qs = {}
        for it in items:
            n = 2 if it.workload == "latency" else it.subscribers
            qs[it.key] = [self._queue(ctx, it) for _ in range(n)]
        return qs

    def close_shared(self, shared: Any) -> None:
        for qs in (shared or {}).values():
            for q in qs:
                q.close()
                q.join_thread()

    def _getter(self, q: Any) -> Any:
        # a plain get(): a timeout would add a poll() system call to every get
        return q.get

    def attach(self, item: Any, role: str, sub: int, shared: Any, info: Any) -> Any:
        qs = shared[item.key]
        # latency: ping puts on queue 0 and gets from queue 1, the echo the other way round;
        # throughput: the producer puts on every queue, consumer `sub` gets from its own
        outs = {"ping": qs[:1], "echo": qs[1:2], "produce": qs}.get(role, [])
        inp = {"ping": qs[-1], "echo": qs[0]}.get(role, qs[sub])
        return _EP(outs=outs, inp=inp, pool=self._pool(item) if role in SENDERS else [],
                   corners=corner_index(item.shape))

    def sender(self, ep: Any, item: Any) -> Send:
        if len(ep.outs) == 1:
            return pool_sender(ep.outs[0].put, ep.pool, ep.corners)
        puts = [q.put for q in ep.outs]

        def put_all(a: Any) -> None:
            for put in puts:
                put(a)
        return pool_sender(put_all, ep.pool, ep.corners)

    def receiver(self, ep: Any, item: Any) -> Take:
        get = self._getter(ep.inp)

        def take() -> tuple[Any, None] | None:
            a = get()
            return None if a is None else (a, None)
        return take

    def end(self, ep: Any) -> None:
        for q in ep.outs:
            q.put(None)


class FasterFifo(MpQueue):
    name = "faster-fifo"
    requires = (("faster_fifo", "faster-fifo"),)
    note = "faster_fifo.Queue: put/get of the array (pickled), buffer sized to capacity frames"
    fanout = False

    def _queue(self, ctx: Any, item: Any) -> Any:
        faster_fifo = importlib.import_module("faster_fifo")
        # pickled array ~ nbytes + ~200 bytes of header; room for `capacity` frames
        return faster_fifo.Queue(max_size_bytes=item.capacity * (item.nbytes + 4096) + (1 << 16))

    def _pool(self, item: Any) -> list[np.ndarray]:
        return sources(item)  # put() pickles synchronously: one source array is enough

    def close_shared(self, shared: Any) -> None:
        for qs in (shared or {}).values():
            for q in qs:
                q.close()

    def _getter(self, q: Any) -> Any:
        # faster-fifo's get() always waits with a timeout (default 10 s)
        return functools.partial(q.get, True, RECV_TIMEOUT)


# ----------------------------------------------------------------------------------------------
# multiprocessing.Pipe and the hand-rolled multiprocessing.shared_memory + Pipe


class MpPipe(Transport):
    name = "mp.Pipe"
    note = ("multiprocessing.Pipe: send_bytes(array) / recv_bytes_into(preallocated buffer) "
            "(two copies through the kernel, no pickle)")

    def make_shared(self, ctx: Any, items: list[Any], run_id: str) -> Any:
        return ctx.Pipe()

    def close_shared(self, shared: Any) -> None:
        for c in shared or ():
            c.close()

    def attach(self, item: Any, role: str, sub: int, shared: Any, info: Any) -> Any:
        conn = shared[0] if role in ("ping", "produce") else shared[1]
        buf = np.empty(item.nbytes, dtype=np.uint8)
        # flat: Connection.send_bytes slices and measures a buffer by its first dimension
        return _EP(conn=conn, src=sources(item)[0].reshape(-1), corners=((0,), (-1,)), buf=buf)

    def sender(self, ep: Any, item: Any) -> Send:
        return pool_sender(ep.conn.send_bytes, [ep.src], ep.corners)

    def receiver(self, ep: Any, item: Any) -> Take:
        recv_into, buf = ep.conn.recv_bytes_into, ep.buf

        def take() -> tuple[Any, None] | None:
            return (buf, None) if recv_into(buf) else None
        return take

    def end(self, ep: Any) -> None:
        ep.conn.send_bytes(b"")


class ShmPipe(Transport):
    name = "mp.shared_memory+Pipe"
    note = ("hand-rolled: a multiprocessing.shared_memory pool of `capacity` slots, frames "
            "copied in with np.copyto, slot indices (4 bytes) over a Pipe and back")

    def make_shared(self, ctx: Any, items: list[Any], run_id: str) -> Any:
        # SharedMemory registers with the resource tracker in every process that opens it; with
        # one tracker shared by the whole run (started before the spawn) nothing is unlinked
        # behind the parent's back and nothing is reported leaked.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        return ctx.Pipe()

    def close_shared(self, shared: Any) -> None:
        for c in shared or ():
            c.close()

    def setup(self, item: Any, run_id: str, seq: int) -> tuple[Any, Any]:
        from multiprocessing import shared_memory

        nslots = 2 * item.capacity if item.workload == "latency" else item.capacity
        shm = shared_memory.SharedMemory(create=True, size=nslots * item.nbytes)
        return (shm.name, nslots), shm

    def teardown(self, handle: Any) -> None:
        if handle is not None:
            handle.close()
            handle.unlink()

    def attach(self, item: Any, role: str, sub: int, shared: Any, info: Any) -> Any:
        from multiprocessing import shared_memory

        name, nslots = info
        shm = shared_memory.SharedMemory(name=name)
        whole = np.ndarray((nslots * item.nbytes,), dtype=np.uint8, buffer=shm.buf)
        slots = [whole[i * item.nbytes:(i + 1) * item.nbytes].reshape(item.shape)
                 for i in range(nslots)]
        conn = shared[0] if role in ("ping", "produce") else shared[1]
        idx = [i.to_bytes(4, "little") for i in range(nslots)]
        # latency: the ping writes slot 0 and the echo answers in slot `capacity` (one frame
        # in flight each way); throughput: the consumer sends each slot's index back
        fixed = {"ping": 0, "echo": item.capacity}.get(role)
        gives_back = role == "consume"
        backs = [functools.partial(conn.send_bytes, b) for b in idx] if gives_back else None
        return _EP(shm=shm, whole=whole, slots=slots, conn=conn, src=sources(item)[0],
                   corners=corner_index(item.shape), idx=idx, nslots=nslots, fixed=fixed,
                   backs=backs)

    def detach(self, ep: Any) -> None:
        ep.slots = ep.whole = None
        ep.shm.close()

    def sender(self, ep: Any, item: Any) -> Send:
        slots, idx, src = ep.slots, ep.idx, ep.src
        send, recv = ep.conn.send_bytes, ep.conn.recv_bytes
        copyto = np.copyto
        if ep.fixed is not None:
            slot, index = slots[ep.fixed], idx[ep.fixed]

            def send_fixed(a: Any) -> None:
                copyto(slot, a)
                send(index)
            return pool_sender(send_fixed, [src], ep.corners)
        free = ep.free = list(range(ep.nslots))

        def send_free(a: Any) -> None:
            if not free:  # every slot is out: take one back (they return in order)
                free.append(int.from_bytes(recv(), "little"))
            s = free.pop()
            copyto(slots[s], a)
            send(idx[s])
        return pool_sender(send_free, [src], ep.corners)

    def receiver(self, ep: Any, item: Any) -> Take:
        recv, slots, backs = ep.conn.recv_bytes, ep.slots, ep.backs

        def take() -> tuple[Any, Any] | None:
            msg = recv()
            if not msg:
                return None
            s = int.from_bytes(msg, "little")
            return slots[s], backs[s] if backs is not None else None
        return take

    def end(self, ep: Any) -> None:
        conn = ep.conn
        conn.send_bytes(b"")
        free = getattr(ep, "free", None)
        while free is not None and len(free) < ep.nslots and conn.poll(RECV_TIMEOUT):
            free.append(int.from_bytes(conn.recv_bytes(), "little"))  # drain: clean shutdown


# ----------------------------------------------------------------------------------------------
# pyzmq over ipc://


class Zmq(Transport):
    name = "pyzmq-ipc"
    requires = (("zmq", "pyzmq"),)
    note = ("pyzmq over ipc://, send(array, copy=False) / recv(copy=False) + np.frombuffer; "
            "PUSH/PULL (throughput), PAIR (latency); HWM = capacity")

    def setup(self, item: Any, run_id: str, seq: int) -> tuple[Any, Any]:
        d = tempfile.mkdtemp(prefix=f"shmarray-bench-{run_id}-")
        return f"ipc://{d}/s{seq}", d

    def teardown(self, handle: Any) -> None:
        import shutil

        if handle:
            shutil.rmtree(handle, ignore_errors=True)

    def attach(self, item: Any, role: str, sub: int, shared: Any, info: Any) -> Any:
        import zmq

        zctx = zmq.Context()
        kind = {"ping": zmq.PAIR, "echo": zmq.PAIR, "produce": zmq.PUSH,
                "consume": zmq.PULL}[role]
        s = zctx.socket(kind)
        # a sender's close must not drop what is still queued (the end marker included)
        s.setsockopt(zmq.LINGER, 10_000 if role in ("ping", "produce") else 0)
        s.setsockopt(zmq.SNDHWM, item.capacity)
        s.setsockopt(zmq.RCVHWM, item.capacity)
        if role in ("echo", "consume"):
            s.bind(info)
        # copy=False keeps a reference to the array until zmq's I/O thread has written it:
        # rotate a pool larger than what the HWM lets zmq hold
        n = item.capacity + 4 if role in SENDERS else 0
        return _EP(zctx=zctx, s=s, pool=sources(item, n) if n else [],
                   corners=corner_index(item.shape), addr=info)

    def start(self, ep: Any, role: str) -> None:
        # the sending side connects at "go", when every binder is bound: a connect to an ipc
        # path that does not exist yet retries, and a PUSH socket can then lose messages
        if role in ("ping", "produce"):
            ep.s.connect(ep.addr)

    def detach(self, ep: Any) -> None:
        ep.s.close()
        ep.zctx.term()

    def sender(self, ep: Any, item: Any) -> Send:
        return pool_sender(functools.partial(ep.s.send, copy=False), ep.pool, ep.corners)

    def receiver(self, ep: Any, item: Any) -> Take:
        recv = ep.s.recv
        frombuffer, u8 = np.frombuffer, np.uint8

        def take() -> tuple[Any, None] | None:
            m = recv(copy=False)
            return (frombuffer(m, u8), None) if len(m) else None
        return take

    def end(self, ep: Any) -> None:
        ep.s.send(b"")


# ----------------------------------------------------------------------------------------------
# iceoryx2 (publish-subscribe, loan API)


class Iceoryx2Spin(Transport):
    name = "iceoryx2-spin"
    requires = (("iceoryx2", "iceoryx2"),)
    note = ("iceoryx2 publish-subscribe, Slice[c_uint8]: loan_slice_uninit + stamp + send "
            "(zero copy), receiver busy-polls receive(); numpy views cached per chunk address")
    fanout = True
    event = False

    def setup(self, item: Any, run_id: str, seq: int) -> tuple[Any, Any]:
        # The parent creates the services (so that the children only open them: no race on
        # creation) and holds them until teardown.
        iox2 = importlib.import_module("iceoryx2")

        iox2.set_log_level(iox2.LogLevel.Error)
        name = f"shmarray-bench/{run_id}/{seq}"
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        services = []
        for d in (("ab", "ba") if item.workload == "latency" else ("ab",)):
            services.append(
                node.service_builder(iox2.ServiceName.new(f"{name}/{d}"))
                .publish_subscribe(iox2.Slice[ctypes.c_uint8])
                .max_publishers(1).max_subscribers(item.subscribers)
                .subscriber_max_buffer_size(item.capacity)
                .subscriber_max_borrowed_samples(2)
                .history_size(0).enable_safe_overflow(False)
                .create())
            if self.event:
                services.append(node.service_builder(iox2.ServiceName.new(f"{name}/{d}/ev"))
                                .event().create())
        return name, [node, services]

    def teardown(self, handle: Any) -> None:
        if handle:
            handle.clear()  # drops the service factories, then the node

    def attach(self, item: Any, role: str, sub: int, shared: Any, info: Any) -> Any:
        iox2 = importlib.import_module("iceoryx2")

        iox2.set_log_level(iox2.LogLevel.Error)
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)

        def pubsub(d: str) -> Any:
            return (node.service_builder(iox2.ServiceName.new(f"{info}/{d}"))
                    .publish_subscribe(iox2.Slice[ctypes.c_uint8]).open())

        def event(d: str) -> Any:
            return node.service_builder(iox2.ServiceName.new(f"{info}/{d}/ev")).event().open()

        ep = _EP(node=node, pubs=[], subs=[], notifiers=[], listeners=[], services=[],
                 corners=corner_index(item.shape), views={})
        if item.workload == "latency":
            outs, ins = (["ab"], ["ba"]) if role == "ping" else (["ba"], ["ab"])
        else:
            outs, ins = (["ab"], []) if role == "produce" else ([], ["ab"])
        for d in outs:
            svc = pubsub(d)
            ep.services.append(svc)
            ep.pubs.append(svc.publisher_builder().initial_max_slice_len(item.nbytes)
                           .allocation_strategy(iox2.AllocationStrategy.Static)
                           .backpressure_strategy(iox2.BackpressureStrategy.RetryUntilDelivered)
                           .create())
            if self.event:
                ev = event(d)
                ep.services.append(ev)
                ep.notifiers.append(ev.notifier_builder().create())
        for d in ins:
            svc = pubsub(d)
            ep.services.append(svc)
            ep.subs.append(svc.subscriber_builder().create())
            if self.event:
                ev = event(d)
                ep.services.append(ev)
                ep.listeners.append(ev.listener_builder().create())
        ep.wait = iox2.Duration.from_millis(100)
        return ep

    def arm(self, ep: Any) -> None:
        # A subscriber opens its side of the connection to each publisher on receive(); the
        # publishers exist by now (made in attach), and no sender has started. Without this, a
        # publisher that fills the subscriber's buffer before the subscriber ever called
        # receive() drops samples instead of retrying (seen with 0.10.0).
        for s in ep.subs:
            r = s.receive()
            if r is not None:
                raise RuntimeError("iceoryx2: a sample arrived before the sender started")

    def start(self, ep: Any, role: str) -> None:
        for p in ep.pubs:  # connect to the subscribers made since the publisher was
            p.update_connections()
        if role == "ping":
            self.arm(ep)  # the pinger receives the answers: arm before the first ping

    def detach(self, ep: Any) -> None:
        ep.views.clear()
        for group in (ep.pubs, ep.subs, ep.notifiers, ep.listeners):
            for port in group:
                port.delete()
            group.clear()
        ep.services.clear()
        ep.node = None

    @staticmethod
    def _view(views: dict[int, Any], ptr: int, n: int) -> Any:
        v = views.get(ptr)
        if v is None or v.size != n:
            buf: Any = (ctypes.c_uint8 * n).from_address(ptr)
            v = views[ptr] = np.frombuffer(buf, dtype=np.uint8)
        return v

    def _waiter(self, ep: Any, sub: Any, listener: Any) -> Any:
        """A function that waits for the next sample (slow path: the receive came back empty)."""
        receive = sub.receive
        limit = time.monotonic() + RECV_TIMEOUT
        if listener is None:
            def spin() -> Any:
                while True:
                    for _ in range(1000):
                        s = receive()
                        if s is not None:
                            return s
                    if time.monotonic() > limit:
                        raise TimeoutError("iceoryx2: no sample in time")
            return spin
        timed_wait, wait = listener.timed_wait, ep.wait

        def block() -> Any:
            while True:
                s = receive()
                if s is not None:
                    return s
                timed_wait(wait)
                if time.monotonic() > limit:
                    raise TimeoutError("iceoryx2: no sample in time")
        return block

    def _publish(self, ep: Any, size: int) -> Send:
        """send(i, v): loan a sample of ``size`` bytes, stamp v at both ends, send, notify."""
        loan = ep.pubs[0].loan_slice_uninit
        notify = ep.notifiers[0].notify if ep.notifiers else None
        views, view = ep.views, self._view
        last = size - 1

        def publish(i: int, v: int) -> None:
            s = loan(size)
            a = view(views, s.payload_ptr, size)
            a[0] = v
            a[last] = v
            s.assume_init().send()
            if notify is not None:
                notify()
        return publish

    def sender(self, ep: Any, item: Any) -> Send:
        return self._publish(ep, item.nbytes)

    def receiver(self, ep: Any, item: Any) -> Take:
        sub = ep.subs[0]
        receive = sub.receive
        wait = self._waiter(ep, sub, ep.listeners[0] if ep.listeners else None)
        views, view = ep.views, self._view
        n = item.nbytes

        def take() -> tuple[Any, Any] | None:
            r = receive()
            if r is None:
                r = wait()
            if r.header.number_of_elements != n:  # a 1-byte sample ends the stream
                r.delete()
                return None
            return view(views, r.payload_ptr, n), r.delete
        return take

    def end(self, ep: Any) -> None:
        self._publish(ep, 1)(0, 0)  # a 1-byte sample ends the stream


class Iceoryx2Event(Iceoryx2Spin):
    name = "iceoryx2-event"
    note = ("as iceoryx2-spin, but the publisher notifies an event service after each send and "
            "the receiver sleeps on its Listener (timed_wait) when receive() finds nothing")
    event = True


#: every transport, in table order; mp.Queue is the baseline of the ratios
ALL: list[type[Transport]] = [ShmarraySend, ShmarrayLoan, Iceoryx2Spin, Iceoryx2Event, Zmq,
                              FasterFifo, ShmPipe, MpPipe, MpQueue]
BASELINE = MpQueue.name


def get(name: str) -> type[Transport]:
    for t in ALL:
        if t.name == name:
            return t
    raise KeyError(f"unknown transport {name!r}; known: {', '.join(t.name for t in ALL)}")

"""The windowed iteration behind ``map`` / ``imap`` / ``imap_unordered`` of every shmarray
executor (``shmarray.Pool`` and ``shmarray.dask.Executor``): at most a window of calls is
submitted ahead of the consumer, one more for each result taken, so an endless iterable is
read lazily and memory stays bounded.

Both generators cancel what is still pending when the consumer stops early (``break``, an
exception, garbage collection), and drop their references to each result before the next
one is waited for, so a large result lives no longer than the consumer keeps it.
"""

from __future__ import annotations

import concurrent.futures
import queue
import time
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Iterator

__all__ = ["results", "ordered", "unordered", "wait"]


def results(pending: list[Future[Any]], rest: Iterator[Any],
            submit: Callable[[Any], Future[Any]], chunks: bool, in_order: bool,
            end_time: float | None, check_alive: Callable[[], None]) -> Iterator[Any]:
    """The results of ``pending`` (the first window of calls) and of the calls ``submit``
    makes of ``rest``: ``in_order`` (map, imap) or as they complete (imap_unordered), each
    ordered result waited for up to ``end_time`` (see wait)."""
    if in_order:
        return ordered(deque(pending), rest, submit, chunks,
                       lambda fut: wait(fut, end_time, check_alive))
    return unordered(pending, rest, submit, chunks, check_alive)


def ordered(pending: deque[Future[Any]], rest: Iterator[Any],
            submit: Callable[[Any], Future[Any]], chunks: bool,
            wait: Callable[[Future[Any]], Any]) -> Iterator[Any]:
    """Results in submission order: ``wait(fut)`` gives each result (it raises what the call
    raised); ``chunks``: each result is a list of results, yielded one by one."""
    end = object()
    try:
        while pending:
            fut = pending.popleft()
            nxt = next(rest, end)
            if nxt is not end:
                pending.append(submit(nxt))
            del nxt
            value = wait(fut)
            del fut
            yield from value if chunks else (value,)
            del value
    finally:
        for f in pending:
            f.cancel()


def unordered(pending: list[Future[Any]], rest: Iterator[Any],
              submit: Callable[[Any], Future[Any]], chunks: bool,
              check_alive: Callable[[], None]) -> Iterator[Any]:
    """Results as they complete; ``check_alive()`` runs every second without a result (it
    raises when the executor can no longer deliver any)."""
    done: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()
    outstanding = set(pending)
    for f in pending:
        f.add_done_callback(done.put)
    del pending
    end = object()
    try:
        while outstanding:
            try:
                fut = done.get(timeout=1.0)
            except queue.Empty:
                check_alive()
                continue
            outstanding.discard(fut)
            nxt = next(rest, end)
            if nxt is not end:
                f = submit(nxt)
                outstanding.add(f)
                f.add_done_callback(done.put)
            del nxt
            value = fut.result()
            del fut
            yield from value if chunks else (value,)
            del value
    finally:
        for f in outstanding:
            f.cancel()


def wait(fut: Future[Any], end_time: float | None, check_alive: Callable[[], None]) -> Any:
    """``fut``'s result, waited for in 1 s slices (``check_alive()`` between them) up to
    ``end_time`` (time.monotonic(); None: no limit), after which the call is cancelled and
    concurrent.futures.TimeoutError raised, as ``Executor.map(timeout=)`` documents."""
    if fut.done():
        return fut.result()
    while True:
        step = 1.0
        if end_time is not None:
            step = min(step, end_time - time.monotonic())
            if step <= 0:
                fut.cancel()
                raise concurrent.futures.TimeoutError()
        done, _ = concurrent.futures.wait([fut], timeout=step)
        if done:
            return fut.result()
        check_alive()

"""Streaming a single answer: Composer.stream / Composer.astream.

The request runs through the same path as `Composer.run` (route -> aggregator -> runtime stages),
in a worker thread, with an `on_delta` hook that the runtime attaches to the final stage's one
call (the single routed expert, or a pipeline's final aggregator): each Delta the backend produces
is handed to the caller as it arrives. Stages before it (MoA proposers) run as scheduled batches.
A pipeline whose final stage has several calls (e.g. a vote) yields its answer as one Delta when
it is decided. Last comes the finished Answer (usage, route, stages). Closing the generator before
the end cancels the request (the upstream connection is closed, a local generation stops at the
next token).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from composer.types import Answer, Delta, Query

_DONE = object()
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def worker_pool() -> ThreadPoolExecutor:
    """Threads that run requests' (synchronous) pipelines for async callers; sized for many
    concurrent requests, since each mostly waits on the runtime."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=512, thread_name_prefix="composer-request")
        return _pool


def _tail(q: Query, answer: Answer, streamed: bool):
    if not streamed and answer.ok and (answer.text or answer.tool_calls):
        yield Delta(q.id, answer.experts[0] if answer.experts else "", answer.text, tool_calls=answer.tool_calls)
    yield answer


def stream_answer(composer, q: Query, *, expert=None, pipeline=None, decision=None):
    out: queue.SimpleQueue = queue.SimpleQueue()
    fut = worker_pool().submit(composer.run, [q], expert=expert, pipeline=pipeline, on_delta=out.put,
                               decisions=[decision] if decision is not None else None)
    fut.add_done_callback(lambda _f: (out.put(_DONE), composer.forget([q.id])))
    streamed = False
    try:
        while True:
            item = out.get()
            if item is _DONE:
                break
            streamed = True
            yield item
        yield from _tail(q, fut.result()[0], streamed)
    finally:
        if not fut.done():
            composer.cancel([q.id])


async def astream_answer(composer, q: Query, *, expert=None, pipeline=None, decision=None):
    loop = asyncio.get_running_loop()
    aq: asyncio.Queue = asyncio.Queue()

    def put(d: Delta) -> None:
        loop.call_soon_threadsafe(aq.put_nowait, d)

    cfut = worker_pool().submit(composer.run, [q], expert=expert, pipeline=pipeline, on_delta=put,
                                decisions=[decision] if decision is not None else None)
    cfut.add_done_callback(lambda _f: composer.forget([q.id]))  # a cancel mark lives as long as its run
    fut = asyncio.wrap_future(cfut, loop=loop)
    fut.add_done_callback(lambda _f: aq.put_nowait(_DONE))
    streamed = False
    try:
        while True:
            item = await aq.get()
            if item is _DONE:
                break
            streamed = True
            yield item
        for item in _tail(q, fut.result()[0], streamed):
            yield item
    finally:
        if not cfut.done():
            composer.cancel([q.id])


async def arun(composer, queries, *, expert=None, pipeline=None) -> list[Answer]:
    """Composer.run for asyncio callers (one worker thread per request, no polling)."""
    loop = asyncio.get_running_loop()
    return await asyncio.wrap_future(worker_pool().submit(composer.run, queries, expert=expert, pipeline=pipeline),
                                     loop=loop)

"""Server-sent events of a streamed request, from Composer.astream as it generates.

`sse_events(composer, plan, writer, ...)` runs one `Composer.astream` per query (n choices, or
one per prompt for /v1/completions), merges their Delta objects as they arrive, and yields:
a role chunk per choice at once, a chunk per delta (content and tool-call deltas), an SSE
keep-alive comment whenever nothing arrived for `keepalive_s`, a finish chunk per choice, the usage
(and composer's route and cost) when asked, then [DONE]. A failed answer becomes an OpenAI error
event. If the generator is closed early (the client went away), every astream is closed, which
cancels its generation, and `Composer.cancel` is called for the queries still running.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Callable

from composer.serve.bodies import DONE, KEEPALIVE, ChunkWriter, error_body, finish_reason, sse, tool_calls_of
from composer.types import Answer, Delta

_END = object()


async def sse_events(composer, plan, writer: ChunkWriter, *, include_usage: bool, keepalive_s: float = 1.0,
                     failure: Callable | None = None, on_answers: Callable | None = None,
                     prefixes: list[str] | None = None, decisions: list | None = None) -> AsyncIterator[bytes]:
    qs, t = plan.queries, plan.target
    n = len(qs)
    queue: asyncio.Queue = asyncio.Queue()
    agens = [composer.astream(q, expert=t.expert, pipeline=t.pipeline, decision=decisions[i] if decisions else None)
             for i, q in enumerate(qs)]

    async def pump(i: int, agen) -> None:
        try:
            async for item in agen:
                await queue.put((i, item))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the client as an error event
            await queue.put((i, exc))
        finally:
            queue.put_nowait((i, _END))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(agens)]
    answers: list[Answer | None] = [None] * n
    streamed_text = [False] * n
    streamed_tools = [False] * n
    ended = 0
    try:
        for i in range(n):
            yield writer.role(i)
            if prefixes and prefixes[i]:
                yield writer.delta(i, Delta(qs[i].id, "", prefixes[i]))
        while ended < n:
            try:
                i, item = await asyncio.wait_for(queue.get(), timeout=keepalive_s)
            except asyncio.TimeoutError:
                yield KEEPALIVE
                continue
            if item is _END:
                ended += 1
            elif isinstance(item, Exception):
                yield sse(error_body(f"choice {i}: {type(item).__name__}: {item}", type_="server_error",
                                     code="stream_failed"))
                yield DONE
                return
            elif isinstance(item, Answer):
                answers[i] = item
            elif isinstance(item, Delta):
                streamed_text[i] |= bool(item.text)
                streamed_tools[i] |= bool(item.tool_calls)
                piece = writer.delta(i, Delta(item.query_id, item.expert, item.text, item.tool_calls,
                                              None, item.logprobs))
                if piece is not None:
                    yield piece
        done = [a for a in answers if a is not None]
        if on_answers is not None:
            on_answers(done)
        fail = failure(done) if failure is not None else None
        if fail is not None or len(done) < n:
            status, msg, code = fail[:3] if fail is not None else (502, "a choice ended without an answer", "no_answer")
            yield sse(error_body(msg, type_="server_error" if status >= 500 else "invalid_request_error",
                                 code=code))
            yield DONE
            return
        for i, a in enumerate(done):
            # What the deltas did not carry (a post-hoc stream, a pipeline's final answer) goes now.
            late = Delta(a.query_id, "", "" if streamed_text[i] else a.text,
                         None if streamed_tools[i] else tool_calls_of(a, streaming=True))
            piece = writer.delta(i, late)
            if piece is not None:
                yield piece
            yield writer.finish(i, finish_reason(a))
        if include_usage:
            yield writer.usage(done)
        yield DONE
    finally:
        running = [q.id for q, a in zip(qs, answers) if a is None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for g in agens:
            try:
                await g.aclose()  # closes the generation (cancels it where it still runs)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
        if running:
            composer.cancel(running)

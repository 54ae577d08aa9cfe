"""``topologies.diagnostics``: a task dump names the coroutines each task waits in."""

from __future__ import annotations

import asyncio
import io

from topologies.diagnostics import dump_tasks


def test_dump_shows_the_whole_await_chain_of_every_task() -> None:
    async def wait_for_ack(event: asyncio.Event) -> None:
        await event.wait()

    async def publish(event: asyncio.Event) -> None:
        await wait_for_ack(event)

    async def main() -> str:
        event = asyncio.Event()
        task = asyncio.create_task(publish(event), name="publisher")
        await asyncio.sleep(0)
        out = io.StringIO()
        dump_tasks(out)
        event.set()
        await task
        return out.getvalue()

    text = asyncio.run(main())
    chain = text[text.index("task publisher:"):].splitlines()[1:5]
    assert [line.rsplit(" ", 1)[-1] for line in chain[:3]] == ["publish", "wait_for_ack", "wait"]
    assert "--- threads ---" in text and "MainThread" in text


def test_loops_of_service_threads_are_found() -> None:
    """Faust's consumer runs in a ``mode`` service thread with its own loop."""
    import threading
    from types import SimpleNamespace

    from topologies.diagnostics import event_loops

    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), threading.Event()

    class ServiceThread(threading.Thread):
        service = SimpleNamespace(thread_loop=loop)

        def run(self) -> None:
            ready.set()
            stop.wait(10)

    thread = ServiceThread()
    thread.start()
    try:
        ready.wait(10)
        assert loop in event_loops()
    finally:
        stop.set()
        thread.join()
        loop.close()

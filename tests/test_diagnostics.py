"""``topologies.diagnostics``: a task dump names the coroutine each task waits in."""

from __future__ import annotations

import asyncio
import io

from topologies.diagnostics import dump_tasks


def test_dump_names_every_task_and_where_it_waits() -> None:
    async def waits_for_ack(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> str:
        event = asyncio.Event()
        task = asyncio.create_task(waits_for_ack(event), name="publisher")
        await asyncio.sleep(0)
        out = io.StringIO()
        dump_tasks(out)
        event.set()
        await task
        return out.getvalue()

    text = asyncio.run(main())
    assert "2 asyncio tasks" in text
    assert "waits_for_ack" in text and "publisher" in text

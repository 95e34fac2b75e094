"""Reading a server-sent event stream: each message's JSON, and where the stream got to, to resume it."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

LINE_END = re.compile(rb"\r\n|\n|\r")
RESUME_DELAY = 1.0  # seconds before coming back to a cut stream whose server named no `retry` (the SDK's client's)


@dataclass
class Cursor:
    """How far an SSE stream got: its last event id, and how soon its server said to come back if it is cut."""

    last_id: str | None = None
    retry: float = RESUME_DELAY  # seconds


async def sse_messages(chunks: AsyncIterator[bytes], where: Cursor | None = None) -> AsyncIterator[Any]:
    """The JSON payloads of an SSE stream's `message` events (comments, pings and an unfinished last event skipped).

    `where`, if given, is kept up to date with the stream's event ids and `retry` field, to resume it from.
    """
    data: list[str] = []
    event = "message"
    async for line in sse_lines(chunks):
        if not line:
            if data and event == "message":
                with suppress(ValueError, RecursionError):
                    yield json.loads("\n".join(data))
            data, event = [], "message"
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif where is not None and line.startswith("id:") and "\0" not in line:
            where.last_id = line[3:].removeprefix(" ")
        elif where is not None and line.startswith("retry:") and line[6:].strip().isdigit():
            where.retry = int(line[6:].strip()) / 1000


async def sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """Lines as SSE ends them (CRLF, LF or CR), however the chunks split them; each byte is looked at once."""
    pending = bytearray()
    scanned = 0  # `pending[:scanned]` holds no line end
    async for chunk in chunks:
        pending += chunk
        start = 0
        while (end := LINE_END.search(pending, scanned)) is not None:
            if end.group() == b"\r" and end.end() == len(pending):
                scanned = end.start()  # a CR last in the chunk: an LF may follow in the next one
                break
            yield pending[start : end.start()].decode(errors="replace")
            start = scanned = end.end()
        else:
            scanned = len(pending)
        del pending[:start]
        scanned -= start
    if pending[scanned:] == b"\r":  # the stream ended right after a CR: that ended a line too
        yield pending[:scanned].decode(errors="replace")

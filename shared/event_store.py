"""A bounded in-memory event store: what lets a 2025-11-25 client resume an SSE stream that was cut.

With an event store the SDK gives every SSE event an id, opens each stream
with a priming event (an id and no data) and, with a `retry_interval`, tells
the client how soon to come back. A client whose stream broke sends a GET
with `Last-Event-ID` and is sent what it missed (SEP-1699). Events live in
this process only, and only the newest `MAX_EVENTS`: a client away for longer
than that starts its call again, which is what it would do with no store.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp.types import JSONRPCMessage

MAX_EVENTS = 10_000


class MemoryEventStore(EventStore):
    """The newest events of every stream, in the order they were sent."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self.max_events = max_events
        self.events: OrderedDict[int, tuple[StreamId, JSONRPCMessage | None]] = OrderedDict()
        self.ids = itertools.count(1)

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = next(self.ids)
        self.events[event_id] = (stream_id, message)
        while len(self.events) > self.max_events:
            self.events.popitem(last=False)
        return str(event_id)

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        """Send what the stream of `last_event_id` carried after it; None when that event is unknown (or too old)."""
        try:
            after = int(last_event_id)
        except ValueError:
            return None
        if after not in self.events:
            return None
        stream_id = self.events[after][0]
        for event_id, (stream, message) in list(self.events.items()):
            if event_id > after and stream == stream_id and message is not None:  # None: a priming event
                await send_callback(EventMessage(message, str(event_id)))
        return stream_id

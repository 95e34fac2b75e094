"""One request in flight toward a backend: its idle clock, its progress, and the ways it can end.

A link (link.py) sends the request; the `Call` waits for its answer, pushed
on by each progress report, and the exceptions say how it ended when no
answer came.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

Message = dict[str, Any]
Progress = Callable[[float, float | None, str | None], Awaitable[None]]
Relay = Callable[[str, Mapping[str, Any] | None], Awaitable[Message]]
LogRelay = Callable[[Mapping[str, Any]], Awaitable[None]]  # a backend's log message about one call
Cut = Callable[[], Awaitable[None]]  # the backend cut a call's stream, meaning to go on: cut the caller's too
NotificationHandler = Callable[[str, Mapping[str, Any] | None], Awaitable[None]]


class BackendError(Exception):
    """The backend answered with a JSON-RPC error: passed on to the caller as it came."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class LinkDown(Exception):
    """The link broke (the process exited, the connection was lost) before the answer came.

    `sent` says whether the request may have reached the backend: a call that
    was never sent can always be tried again, one that was sent only when it
    is safe to repeat.
    """

    def __init__(self, reason: str, *, sent: bool = True) -> None:
        super().__init__(reason)
        self.sent = sent


class Timeout(Exception):
    """No answer and no progress within the idle timeout, or no answer within the hard cap."""


@dataclass
class Call:
    """One request in flight toward the backend."""

    id: int
    progress: Progress | None = None
    relay: Relay | None = None
    log: LogRelay | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    cut: Cut | None = None
    answered: anyio.Event = field(default_factory=anyio.Event)
    response: Message | None = None
    clock: anyio.CancelScope | None = None  # its deadline is the idle timeout, pushed on by progress
    idle: float = math.inf
    give_up: float = math.inf
    background: bool = False  # a `subscriptions/listen` held open: no call of anybody's

    def settle(self, response: Message) -> None:
        self.response = response
        self.answered.set()

    def touch(self, idle: float | None = None) -> None:
        """The backend is still working on it: start the idle clock again (`math.inf` stops it)."""
        if self.clock is not None:
            self.clock.deadline = min(anyio.current_time() + (self.idle if idle is None else idle), self.give_up)

    async def on_progress(self, params: Mapping[str, Any]) -> None:
        self.touch()
        if self.progress is not None:
            progress = params.get("progress")
            if isinstance(progress, int | float):
                total, message = params.get("total"), params.get("message")
                await self.progress(
                    float(progress),
                    float(total) if isinstance(total, int | float) else None,
                    message if isinstance(message, str) else None,
                )


@dataclass
class Timeouts:
    """`idle`: how long a call may go without an answer or a progress report; `total`: the hard cap."""

    idle: float = 60.0
    total: float = 600.0

"""A 2025-11-25 backend asks a question mid-call; the caller speaks 2026-07-28 and cannot be asked mid-call.

The two eras ask the user differently. A 2025-11-25 server sends
`elicitation/create` while the call is running and waits for the answer. A
2026-07-28 client is asked by the *result* of its call: `input_required`, with
the questions; it answers them and sends the same call again, carrying the
answers and the `requestState` it was given.

The proxy joins the two by parking the call: the backend keeps waiting on its
question, the caller gets `input_required` with a `requestState` naming the
parked call, and when the caller comes back with the answer the proxy hands
it to the backend and waits for what the call does next (another question,
or its result). A parked call the caller never comes back to is given up on
after `ANSWER_PATIENCE`; the backend then gets an error for its question.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from links import BackendError, Message

ANSWER_PATIENCE = 600.0  # seconds a parked call waits for its caller to come back with the answer
STATE_PREFIX = "mcp-proxy.parked."  # a requestState starting so is ours; any other is a backend's, passed on
QUESTION_KEY = "question"

Event = tuple[str, Any]  # ("question", {...}) | ("result", {...}) | ("error", exception)
Ask = Callable[[str, Mapping[str, Any] | None], Awaitable[Message]]


@dataclass
class Parked:
    """One call in flight whose backend is waiting for an answer from the caller."""

    target: tuple[str, str]  # the method and the name (or URI) it was made with: a retry must match
    waiter: Any  # the caller's request waiting on the call now: progress and log lines go to it
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    events: tuple[MemoryObjectSendStream[Event], MemoryObjectReceiveStream[Event]] = field(
        default_factory=lambda: anyio.create_memory_object_stream[Event](1)
    )
    answers: tuple[MemoryObjectSendStream[Message], MemoryObjectReceiveStream[Message]] = field(
        default_factory=lambda: anyio.create_memory_object_stream[Message](1)
    )

    async def ask(self, method: str, params: Mapping[str, Any] | None) -> Message:
        """The backend's question: hand it to whoever waits on the call, then wait for the caller's answer."""
        await self.events[0].send(("question", {"method": method, "params": dict(params or {})}))
        with anyio.move_on_after(ANSWER_PATIENCE):
            return await self.answers[1].receive()
        raise BackendError(-32603, f"{method}: the caller did not come back with an answer")


@dataclass
class ParkingLot:
    calls: dict[str, Parked] = field(default_factory=dict)

    async def call(
        self,
        tg: TaskGroup,
        target: tuple[str, str],
        params: Mapping[str, Any],
        waiter: Any,
        send: Callable[[Parked], Awaitable[Message]],
    ) -> Message:
        """Make the call, or go on with a parked one; returns its result or an `input_required` for the caller."""
        state = params.get("requestState")
        if isinstance(state, str) and state.startswith(STATE_PREFIX):
            parked = self.calls.pop(state, None)
            if parked is None or parked.target != target:
                raise BackendError(-32602, "requestState names no call waiting for an answer; make the call afresh")
            answer = (params.get("inputResponses") or {}).get(QUESTION_KEY)
            if not isinstance(answer, dict):
                raise BackendError(-32602, f"inputResponses.{QUESTION_KEY} is missing: the question is unanswered")
            parked.waiter = waiter
            await parked.answers[0].send(answer)
        else:
            parked = Parked(target, waiter)
            tg.start_soon(self.run, parked, send)
        try:
            kind, value = await parked.events[1].receive()
        except anyio.get_cancelled_exc_class():
            parked.scope.cancel()  # the caller left: so does the call
            raise
        if kind == "question":
            state = STATE_PREFIX + secrets.token_urlsafe(16)
            self.calls[state] = parked
            return {"resultType": "input_required", "inputRequests": {QUESTION_KEY: value}, "requestState": state}
        if kind == "error":
            raise value
        result: Message = value
        return result

    async def run(
        self,
        parked: Parked,
        send: Callable[[Parked], Awaitable[Message]],
    ) -> None:
        """The call itself, in the background: it outlives each of the caller's requests that wait on it."""
        try:
            with parked.scope:
                try:
                    outcome: Event = ("result", await send(parked))
                except Exception as exc:
                    outcome = ("error", exc)
                await parked.events[0].send(outcome)
        finally:
            for state in [state for state, other in self.calls.items() if other is parked]:
                del self.calls[state]  # the caller never came back: forget the call

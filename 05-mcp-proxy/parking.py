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
from calls import BackendError, Message

ANSWER_PATIENCE = 600.0  # seconds a parked call waits for its caller to come back with the answer
STATE_PREFIX = "mcp-proxy.parked."  # a requestState starting so is ours; any other is a backend's, passed on
QUESTION_KEY = "question"


@dataclass
class Parked:
    """One call in flight whose backend is waiting for an answer from the caller.

    Two events pass the turn: `news` when the call has something for the
    caller (a question, or its outcome), `answered` when the caller's answer
    is in. The backend's questions are put one at a time.
    """

    target: tuple[str, str]  # the method and the name (or URI) it was made with: a retry must match
    waiter: Any  # the caller's request waiting on the call now: progress and log lines go to it
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    news: anyio.Event = field(default_factory=anyio.Event)
    question: Message | None = None
    outcome: tuple[Message | None, Exception | None] | None = None
    answered: anyio.Event = field(default_factory=anyio.Event)
    answer: Message | None = None
    expired: bool = False  # a question went unanswered: a late answer must not be taken for the next one
    one_at_a_time: anyio.Lock = field(default_factory=anyio.Lock)

    async def ask(self, method: str, params: Mapping[str, Any] | None) -> Message:
        """The backend's question: hand it to whoever waits on the call, then wait for the caller's answer."""
        async with self.one_at_a_time:
            self.answered, self.answer = anyio.Event(), None
            self.question = {"method": method, "params": dict(params or {})}
            self.news.set()
            with anyio.move_on_after(ANSWER_PATIENCE):
                await self.answered.wait()
                assert self.answer is not None
                return self.answer
            self.expired = True
            raise BackendError(-32603, f"{method}: the caller did not come back with an answer")

    async def next_news(self) -> Message:
        """Wait for the call's next question (as an `input_required` for the caller) or its outcome."""
        await self.news.wait()
        self.news = anyio.Event()  # at once, before anything else runs: the next news sets a fresh one
        if self.outcome is not None:
            result, error = self.outcome
            if error is not None:
                raise error
            assert result is not None
            return result
        assert self.question is not None
        question, self.question = self.question, None
        return question


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
            parked = self.calls.get(state)
            if parked is not None and parked.expired:
                del self.calls[state]  # its question timed out; the call went on without the answer
            if parked is None or parked.target != target or parked.expired:
                raise BackendError(-32602, "requestState names no call waiting for an answer; make the call afresh")
            answer = (params.get("inputResponses") or {}).get(QUESTION_KEY)
            if not isinstance(answer, dict):  # the call stays parked: the caller may try again with the answer
                raise BackendError(-32602, f"inputResponses.{QUESTION_KEY} is missing: the question is unanswered")
            del self.calls[state]
            parked.waiter, parked.answer = waiter, answer
            parked.answered.set()
        else:
            parked = Parked(target, waiter)
            tg.start_soon(self.run, parked, send)
        try:
            news = await parked.next_news()
        except anyio.get_cancelled_exc_class():
            parked.scope.cancel()  # the caller left: so does the call
            raise
        if parked.outcome is not None:
            return news
        state = STATE_PREFIX + secrets.token_urlsafe(16)
        self.calls[state] = parked
        return {"resultType": "input_required", "inputRequests": {QUESTION_KEY: news}, "requestState": state}

    async def run(self, parked: Parked, send: Callable[[Parked], Awaitable[Message]]) -> None:
        """The call itself, in the background: it outlives each of the caller's requests that wait on it."""
        try:
            with parked.scope:
                try:
                    parked.outcome = (await send(parked), None)
                except Exception as exc:
                    parked.outcome = (None, exc)
                parked.news.set()
        finally:
            for state in [state for state, other in self.calls.items() if other is parked]:
                del self.calls[state]  # the caller never came back: forget the call

"""The link to a backend at a streamable-HTTP URL, in either era, through httpcore2's connection pool."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import anyio
import httpcore2
from anyio.abc import TaskGroup
from calls import BackendError, Call, LinkDown, Message, NotificationHandler, Timeout
from link import ENVELOPE, MODERN, PROTOCOL_VERSION, Link, encode, log
from machine_auth import MachineAuthError, MachineToken
from mcp.shared.inbound import NAME_BEARING_METHODS, encode_header_value
from sockets import SocketBackend
from sse import Cursor, sse_messages

# A call's time is bounded by `Timeouts`, not by the socket: no read timeout, so a long call or an idle
# listening stream is not cut off.
HTTP_TIMEOUTS = {"timeout": {"connect": 30.0, "read": None, "write": 30.0, "pool": 30.0}}
TRANSPORT_ERRORS = (httpcore2.NetworkError, httpcore2.ProtocolError, httpcore2.TimeoutException)
CONNECT_ERRORS = (httpcore2.ConnectError, httpcore2.ConnectTimeout)  # the backend cannot be reached at all
NOT_SENT = (*CONNECT_ERRORS, httpcore2.PoolTimeout)  # failures before a byte of the request left
MAX_RESUME_FAILURES = 2  # tries in a row that bring nothing before a cut call is given up, as the SDK's client


class HttpLink(Link):
    """A backend at a streamable-HTTP URL: one POST per message, answers as JSON or an SSE stream.

    In the 2025-11-25 era a backend that restarts forgets our session and
    answers 404; the link then starts a new session and tells the caller
    whether its request was sent. In 2026-07-28 there is no session to lose.

    The link speaks HTTP through httpcore2, the connection pool under httpx2:
    a relay needs none of the client's conveniences (cookies, redirects, auth
    flows, URL and header models), and skipping them is time saved on every call.
    """

    def __init__(
        self,
        name: str,
        url: str,
        http: httpcore2.AsyncConnectionPool,
        headers: Mapping[str, str],
        on_notification: NotificationHandler,
        machine: MachineToken | None = None,
    ) -> None:
        super().__init__(name, on_notification)
        self.url = url
        self.http = http
        self.configured = dict(headers)  # the backend's `headers` from the configuration, on every request
        self.machine = machine  # the proxy's own token for this backend, if it wants one
        self.session_id: str | None = None
        self.session_lock = anyio.Lock()
        self.generation = 0  # which session: a 404 renews it once, not once per call that saw it
        self.tg: TaskGroup | None = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        name: str,
        url: str,
        headers: Mapping[str, str],
        on_notification: NotificationHandler,
        protocol: str = "auto",
        machine: MachineToken | None = None,
    ) -> AsyncIterator[HttpLink]:
        pool = httpcore2.AsyncConnectionPool(
            max_connections=64, max_keepalive_connections=64, network_backend=SocketBackend()
        )
        async with pool as http, anyio.create_task_group() as tg:
            link = cls(name, url, http, headers, on_notification, machine)
            link.tg = tg
            try:
                if protocol == PROTOCOL_VERSION or not await link.discover(required=protocol == MODERN):
                    await link.start_session()
                else:
                    tg.start_soon(link.subscribe)
                yield link
            finally:
                link.close(link.reason or "stopped")
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True), suppress(Exception), anyio.move_on_after(2):
                    if link.session_id:
                        await http.request("DELETE", url, headers=link.wire_headers({}, link.session_id))

    async def start_session(self) -> None:
        self.session_id = None
        self.generation += 1
        await self.initialize()
        if self.tg is not None and self.session_id is not None:
            self.tg.start_soon(self.listen, self.generation)
        if self.following and self.tg is not None:  # a new session follows nothing yet: ask again
            following, self.following = self.following, frozenset()
            self.tg.start_soon(self.follow, following)

    @property
    def cancels_by_closing(self) -> bool:
        return self.modern

    def headers(self, message: Message, session_id: str | None) -> dict[str, str]:
        headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
        if self.modern:  # the routing headers a 2026-07-28 server checks against the body
            method = message.get("method")
            headers["mcp-protocol-version"] = MODERN
            if isinstance(method, str):
                headers["mcp-method"] = method
                name = (message.get("params") or {}).get(NAME_BEARING_METHODS.get(method, ""))
                if isinstance(name, str):
                    headers["mcp-name"] = encode_header_value(name)
        elif session_id:
            headers["mcp-session-id"] = session_id
            headers["mcp-protocol-version"] = PROTOCOL_VERSION
        return headers

    async def authorize(self) -> None:
        """Put the proxy's own token on what follows, a new one when the last is about to expire."""
        if self.machine is not None:
            try:
                self.configured["authorization"] = await self.machine.bearer()
            except MachineAuthError as exc:  # nothing was sent: a call may try again; a start fails with this reason
                raise LinkDown(str(exc), sent=False) from None

    def check_token(self, response: Any) -> None:
        """If the backend refused the proxy's own token, the next request gets a new one, and this one is not sent."""
        if response.status == 401 and self.machine is not None:
            self.machine.refused(self.configured.get("authorization", ""))
            raise LinkDown("the backend refused the proxy's token", sent=False)  # not processed: may go again

    def wire_headers(
        self, message: Message, session_id: str | None, extra: Mapping[str, str] | None = None
    ) -> list[tuple[bytes, bytes]]:
        headers: dict[str, str] = {}
        for layer in (self.configured, extra or {}, self.headers(message, session_id)):  # later layers win
            headers.update((key.lower(), value) for key, value in layer.items())
        return [(key.encode(), value.encode()) for key, value in headers.items()]

    def stream(self, message: Message, headers: list[tuple[bytes, bytes]]) -> AbstractAsyncContextManager[Any]:
        return self.http.stream("POST", self.url, headers=headers, content=encode(message), extensions=HTTP_TIMEOUTS)

    async def deliver(self, message: Message, call: Call) -> None:
        generation, session_id = self.generation, self.session_id
        await self.authorize()
        where = Cursor()
        try:
            async with self.stream(message, self.wire_headers(message, session_id, call.headers)) as response:
                status, kind = response.status, header(response, "content-type")
                self.check_token(response)
                lost = status == 404 and session_id is not None
                if message.get("method") == "initialize" and (session := header(response, "mcp-session-id")):
                    self.session_id = session
                if (
                    not lost
                    and status >= 400
                    and not (self.modern and kind.startswith(("application/json", "text/event")))
                ):
                    said = (await response.aread()).decode(errors="replace")[:200]
                    raise BackendError(-32603, f"HTTP {status} from the backend: {said}")
                # (2026-07-28 gives a JSON-RPC error an HTTP status too; its body is the answer to pass on.)
                if not lost:
                    await self.read_response(response, call, where)
        except NOT_SENT as exc:  # nothing reached the backend: if it cannot be reached at all, the link is down
            if isinstance(exc, CONNECT_ERRORS):
                self.close(f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__)
            raise LinkDown(f"{type(exc).__name__}: {exc}"[:300], sent=False) from None
        except TRANSPORT_ERRORS as exc:  # this exchange broke; the next one finds out whether the backend did
            raise LinkDown(f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__) from None
        if lost:  # renewed only now, with this response's connection back in the pool
            await self.renew(generation)
            raise LinkDown("the backend lost our session (it restarted?)", sent=False)
        if not call.answered.is_set() and where.last_id is not None:
            await self.resume(call, where)
        if not call.answered.is_set():
            call.settle({"error": {"code": -32603, "message": "the backend's answer stream ended without an answer"}})

    async def resume(self, call: Call, where: Cursor) -> None:
        """The backend ended the call's stream before its answer, after an event with an id: it means to go on
        (SEP-1699). Our caller's stream is cut too (it comes back to us the same way), and the link comes back
        as any client would: a GET with `Last-Event-ID` after the `retry` the backend asked for, again each
        time that stream ends too, until the answer is in or tries in a row bring nothing."""
        if call.cut is not None:
            await call.cut()
        failures = 0
        while not call.answered.is_set() and failures < MAX_RESUME_FAILURES:
            await anyio.sleep(where.retry)
            before = where.last_id
            with suppress(*TRANSPORT_ERRORS, LinkDown):  # LinkDown: no token for now; the next try may have one
                await self.authorize()
                extra = {**call.headers, "last-event-id": str(before)}
                headers = self.wire_headers({}, self.session_id, extra)
                async with self.http.stream("GET", self.url, headers=headers, extensions=HTTP_TIMEOUTS) as response:
                    if response.status < 400 and header(response, "content-type").startswith("text/event-stream"):
                        async for message in sse_messages(response.aiter_stream(), where):
                            await self.dispatch(message, call)
                            if call.answered.is_set():
                                break  # this stream stays open after the answer: it is not the call's own
            failures = 0 if where.last_id != before else failures + 1

    async def renew(self, generation: int) -> None:
        """Start a new session, once per lost session however many calls noticed it."""
        async with self.session_lock:
            if generation == self.generation:
                log.info("backend lost our session; starting a new one", backend=self.name)
                await self.start_session()

    async def read_response(self, response: Any, call: Call | None, where: Cursor | None = None) -> None:
        if header(response, "content-type").startswith("text/event-stream"):
            async for message in sse_messages(response.aiter_stream(), where):
                await self.dispatch(message, call)
        elif response.status != 202:
            content = await response.aread()
            try:
                message = json.loads(content) if content else None
            except (ValueError, RecursionError):
                not_json = {"code": -32603, "message": "the backend answered with something that is not JSON"}
                message = {"id": call.id, "error": not_json} if call else None
            await self.dispatch(message, call)

    async def dispatch(self, message: Any, call: Call | None) -> None:
        if not isinstance(message, dict):
            return
        answer = await self.handle(message, call)
        if answer is not None:
            await self.post(answer)

    async def post(self, message: Message) -> None:
        with suppress(LinkDown):  # no new token now: the last one may still do (this runs inside a stream reader)
            await self.authorize()
        headers = self.wire_headers(message, self.session_id)
        try:
            response = await self.http.request(
                "POST", self.url, headers=headers, content=encode(message), extensions=HTTP_TIMEOUTS
            )
        except TRANSPORT_ERRORS as exc:
            raise LinkDown(f"{type(exc).__name__}: {exc}") from None
        if response.status == 404 and message.get("method") is not None:
            await self.renew(self.generation)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        await self.post({"jsonrpc": "2.0", "method": method, **({"params": dict(params)} if params else {})})

    async def listen(self, generation: int) -> None:
        """The session's GET stream: where the backend sends `list_changed` and other news unasked."""
        delay, streamed = 0.5, False
        while not self.closed.is_set() and generation == self.generation:
            try:
                await self.authorize()
                headers = self.wire_headers({}, self.session_id)
                async with self.http.stream("GET", self.url, headers=headers, extensions=HTTP_TIMEOUTS) as response:
                    self.check_token(response)
                    if response.status == 404 and streamed:  # it was there a moment ago: the backend restarted
                        with suppress(BackendError, LinkDown, Timeout):  # (down for good: the next call says so)
                            await self.renew(generation)  # a new session, with its own stream and subscriptions
                        return
                    if response.status in (404, 405):
                        return  # no stream offered (or the session is gone, which the next call notices)
                    if response.status < 400 and header(response, "content-type").startswith("text/event-stream"):
                        delay, streamed = 0.5, True  # a stream: read it for as long as it lasts
                        await self.read_response(response, None)
            except (*TRANSPORT_ERRORS, LinkDown):  # LinkDown: no token for now; try again after a while
                pass
            await anyio.sleep(delay)
            delay = min(delay * 2, 10)

    async def subscribe(self) -> None:
        """2026-07-28: a `subscriptions/listen` stream carries `list_changed` and the `resources/updated` we follow;
        held open, reopened when it drops, and at once when `follow` changes the filter."""
        delay, dropped = 0.5, False
        while not self.closed.is_set():
            message = {
                "jsonrpc": "2.0",
                "id": next(self.ids),
                "method": "subscriptions/listen",
                "params": {"notifications": self.listen_filter(), "_meta": ENVELOPE},
            }
            self.listening = scope = anyio.CancelScope()
            try:
                with scope:
                    await self.authorize()
                    async with self.stream(message, self.wire_headers(message, None)) as response:
                        self.check_token(response)
                        if response.status >= 400 or not header(response, "content-type").startswith(
                            "text/event-stream"
                        ):
                            self.listen_settled.set()
                            return  # no subscriptions offered: lists are as of the last listing
                        if dropped:  # news may have been missed while the stream was down: look again
                            await self.on_notification("notifications/tools/list_changed", None)
                        dropped, delay = False, 0.5
                        await self.read_response(response, None)
            except CONNECT_ERRORS as exc:
                self.close(f"{type(exc).__name__}: {exc}"[:300])  # the backend is down: say so, and reconnect
                return
            except (*TRANSPORT_ERRORS, LinkDown):  # LinkDown: no token for now; try again after a while
                pass
            if scope.cancel_called:
                continue  # closed by `follow`, not dropped: reopen at once, with the new filter
            dropped = True
            await anyio.sleep(delay)
            delay = min(delay * 2, 10)


def header(response: Any, name: str) -> str:
    """One response header's value ("" when absent); httpcore2 keeps headers as the server sent them."""
    wanted = name.encode()
    for key, value in response.headers:
        if key.lower() == wanted:
            return str(value.decode(errors="replace"))
    return ""

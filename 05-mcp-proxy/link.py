"""What every link from the proxy to one backend shares, stdio or HTTP: ids, calls in flight, the two eras.

Why not the SDK's `Client`? It is the right tool for an application, but a
proxy only relays: parsing every message into full models on the way in and
dumping it again on the way out cost more than the backend's own work (the
figures are in bench/README.md). A link keeps messages as plain dicts,
checks only what it needs to route them, and leaves validating to the two
ends that own the data.

Toward backends a link speaks either era. Over stdio, and to any server that
does not offer 2026-07-28, it is the 2025-11-25 handshake: every MCP server
understands it, and its session gives the backend a channel to push progress,
`list_changed` and questions for the user (elicitation, sampling) back to us.
To an HTTP server that offers 2026-07-28 (found by asking `server/discover`)
each request stands alone: no session to lose when the backend restarts,
answers as plain JSON when there is nothing to stream, questions for the user
as `input_required` results, and `list_changed` on a `subscriptions/listen`
stream.

The two kinds of link are in stdio_link.py and http_link.py; each request in
flight is a `Call` (calls.py).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from contextlib import suppress
from typing import Any

import anyio
import structlog
from calls import (
    BackendError,
    Call,
    Cut,
    LinkDown,
    LogRelay,
    Message,
    NotificationHandler,
    Progress,
    Relay,
    Timeout,
    Timeouts,
)
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY

log = structlog.get_logger("mcp-proxy.links")

PROTOCOL_VERSION = "2025-11-25"  # the handshake era
MODERN = "2026-07-28"  # the era of self-contained requests
MAX_INPUT_ROUNDS = 10  # a backend that keeps asking for input is given up on after this many answers
CLIENT_INFO = {"name": "mcp-workshop-proxy", "version": "1.0.0"}
# What the proxy can do for a backend: pass its questions on to the client that made the call.
CLIENT_CAPABILITIES = {"elicitation": {"form": {}}, "sampling": {}, "roots": {"listChanged": False}}
# What every 2026-07-28 request carries in `_meta`, in place of a handshake.
ENVELOPE = {
    PROTOCOL_VERSION_META_KEY: MODERN,
    CLIENT_CAPABILITIES_META_KEY: CLIENT_CAPABILITIES,
    CLIENT_INFO_META_KEY: CLIENT_INFO,
}
# The news a 2026-07-28 `subscriptions/listen` asks for: every list that can change.
LIST_CHANGES = {"toolsListChanged": True, "promptsListChanged": True, "resourcesListChanged": True}
FOLLOW_WAIT = 5.0  # seconds a change of followed resources waits for a 2026-07-28 backend to acknowledge it


class Link:
    """What both kinds of link share: request ids, calls in flight, and what the backend sends unasked."""

    def __init__(self, name: str, on_notification: NotificationHandler) -> None:
        self.name = name
        self.on_notification = on_notification
        self.ids = itertools.count(1)
        self.calls: dict[int, Call] = {}
        self.closed = anyio.Event()
        self.reason = ""
        self.server_info: Message = {}
        self.capabilities: Message = {}
        self.pid: int | None = None
        self.protocol_version = PROTOCOL_VERSION
        self.following: frozenset[str] = frozenset()  # resource URIs clients want `resources/updated` about
        self.listening: anyio.CancelScope | None = None  # the 2026-07-28 listen stream, to reopen with a new filter
        # Set when the backend acknowledged our listen stream's filter, or when there is no stream to wait for.
        self.listen_settled = anyio.Event()

    @property
    def modern(self) -> bool:
        return self.protocol_version == MODERN

    def close(self, reason: str) -> None:
        """Mark the link broken and fail every call still waiting on it."""
        if self.closed.is_set():
            return
        self.reason = reason
        self.closed.set()
        self.listen_settled.set()
        for call in list(self.calls.values()):
            call.answered.set()  # `response` stays None: the caller raises LinkDown

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        progress: Progress | None = None,
        relay: Relay | None = None,
        on_log: LogRelay | None = None,
        on_cut: Cut | None = None,
        timeouts: Timeouts | None = None,
        headers: Mapping[str, str] | None = None,
        pass_input_required: bool = False,
        capabilities: Mapping[str, Any] | None = None,
    ) -> Message:
        """Send one request and wait for its result; the backend's error is raised as `BackendError`.

        `headers` go with this request only, and only over HTTP. `capabilities`
        are what the caller declared: a 2026-07-28 backend is told those, no
        more, so it asks only what the caller can answer. A 2026-07-28
        backend that needs input first answers `input_required`: the link asks
        `relay` and sends the request again with the answers, unless
        `pass_input_required` says the caller (a 2026-07-28 client) answers
        such results itself.
        """
        body: Message = dict(params or {})
        wait = 0.05  # after a round that brought only state, as the SDK's client does: doubling, up to 0.25 s
        for _ in range(MAX_INPUT_ROUNDS):
            result = await self.exchange(
                method,
                body,
                progress=progress,
                relay=relay,
                on_log=on_log,
                on_cut=on_cut,
                timeouts=timeouts,
                headers=headers,
                capabilities=capabilities,
            )
            if result.get("resultType") != "input_required" or relay is None or pass_input_required:
                return result
            body = {key: value for key, value in body.items() if key not in ("inputResponses", "requestState")}
            retry = await self.fulfil(result, relay)
            if "inputResponses" in retry:
                wait = 0.05
            else:  # only state came back: the backend is still working on it
                await anyio.sleep(wait)
                wait = min(wait * 2, 0.25)
            body.update(retry)
        raise BackendError(-32603, f"the backend asked for input more than {MAX_INPUT_ROUNDS} times")

    async def fulfil(self, result: Message, relay: Relay) -> Message:
        """Answer the questions of an `input_required` result; what goes into the next try of the request."""
        asked = result.get("inputRequests") if isinstance(result.get("inputRequests"), dict) else {}
        answers: Message = {}
        for key, question in (asked or {}).items():
            question = question if isinstance(question, dict) else {}
            if question.get("method") == "roots/list":
                answers[key] = {"roots": []}
            else:
                answers[key] = await relay(str(question.get("method")), question.get("params"))
        retry: Message = {"inputResponses": answers} if answers else {}
        if "requestState" in result:
            retry["requestState"] = result["requestState"]  # opaque: passed back exactly as it came
        return retry

    async def exchange(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        progress: Progress | None = None,
        relay: Relay | None = None,
        on_log: LogRelay | None = None,
        on_cut: Cut | None = None,
        timeouts: Timeouts | None = None,
        headers: Mapping[str, str] | None = None,
        capabilities: Mapping[str, Any] | None = None,
    ) -> Message:
        """One request, one answer."""
        if self.closed.is_set():
            raise LinkDown(self.reason, sent=False)
        call = Call(next(self.ids), progress, relay, on_log, headers=headers or {}, cut=on_cut)
        call.background = method == "subscriptions/listen"
        body: Message = dict(params or {})
        meta = dict(body.get("_meta") or {})
        # The client's token means nothing to the backend: ours is asked for always, since progress also
        # restarts the idle clock, and `Call.progress` passes it on with the client's token if it asked.
        meta["progressToken"] = call.id
        if self.modern:
            meta.update(ENVELOPE)
            if capabilities is not None:
                meta[CLIENT_CAPABILITIES_META_KEY] = capabilities
        if meta:
            body["_meta"] = meta
        else:
            body.pop("_meta", None)
        self.calls[call.id] = call
        timeouts = timeouts or Timeouts()
        call.idle, call.give_up = timeouts.idle, anyio.current_time() + timeouts.total
        try:
            with anyio.CancelScope() as call.clock:
                call.touch()
                await self.deliver({"jsonrpc": "2.0", "id": call.id, "method": method, "params": body}, call)
                await call.answered.wait()
            if call.clock.cancelled_caught and not call.answered.is_set():
                limit = "total" if anyio.current_time() >= call.give_up else "idle"
                raise Timeout(f"no answer within the {limit} timeout of {getattr(timeouts, limit):g} s")
        except (Timeout, anyio.get_cancelled_exc_class()):
            if not call.answered.is_set() and not self.closed.is_set() and not self.cancels_by_closing:
                # Cancelled by our caller or timed out: tell the backend to stop working on it. (Over HTTP in
                # 2026-07-28 closing the request's stream says it, and that happened as the cancellation unwound.)
                with anyio.CancelScope(shield=True), suppress(Exception), anyio.move_on_after(2):
                    await self.notify("notifications/cancelled", {"requestId": call.id, "reason": "cancelled"})
            raise
        finally:
            self.calls.pop(call.id, None)
        response = call.response
        if response is None:
            raise LinkDown(self.reason or "the backend went away")
        if "error" in response:
            error = response["error"] if isinstance(response["error"], dict) else {}
            raise BackendError(int(error.get("code", -32603)), str(error.get("message", "error")), error.get("data"))
        result = response.get("result")
        return result if isinstance(result, dict) else {}

    async def deliver(self, message: Message, call: Call) -> None:
        raise NotImplementedError

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        raise NotImplementedError

    async def handle(self, message: Message, call: Call | None = None) -> Message | None:
        """Route one message the backend sent; returns the answer when it asked us something."""
        method = message.get("method")
        if not isinstance(method, str):  # a response to one of our requests
            owner = self.calls.get(message.get("id"))  # type: ignore[arg-type]
            if owner is not None:
                owner.settle(message)
            return None
        params = message.get("params") if isinstance(message.get("params"), dict) else None
        if "id" not in message:
            if method == "notifications/progress" and params is not None:
                owner = self.calls.get(params.get("progressToken"))
                if owner is not None:
                    await owner.on_progress(params)
            elif method == "notifications/subscriptions/acknowledged":
                self.listen_settled.set()  # the backend follows what our listen stream asked for, from now on
            elif method == "notifications/message" and params is not None and (owner := self.owner(call)):
                if owner.log is not None:
                    await owner.log(params)  # about this call: to the client that made it
            else:
                await self.on_notification(method, params)
            return None
        return {"jsonrpc": "2.0", "id": message["id"], **await self.answer(method, params, call)}

    async def answer(self, method: str, params: Mapping[str, Any] | None, call: Call | None) -> Message:
        """The backend asks something: the proxy answers what it can, and relays questions for the user."""
        if method == "ping":
            return {"result": {}}
        if method == "roots/list":
            return {"result": {"roots": []}}
        call = self.owner(call)
        if call is None:
            return {"error": {"code": -32601, "message": f"{method}: no client to ask (several calls in flight)"}}
        if call.relay is None:
            why = "the caller connected with 2026-07-28, which carries no questions mid-call; use 2025-11-25"
            return {"error": {"code": -32601, "message": f"{method}: {why}"}}
        call.touch(idle=math.inf)  # a human may take a while to answer: that is not idleness
        try:
            return {"result": await call.relay(method, params)}
        except BackendError as exc:
            return {"error": {"code": exc.code, "message": exc.message}}
        finally:
            call.touch()

    def owner(self, call: Call | None) -> Call | None:
        """The call a message from the backend is about: over HTTP, the one whose answer stream carried it."""
        return call

    async def discover(self, *, required: bool) -> bool:
        """Ask whether the backend speaks 2026-07-28; if it does, use it (no session, plain JSON answers)."""
        self.protocol_version = MODERN
        try:
            result = await self.request("server/discover", timeouts=Timeouts(idle=30, total=30))
        except BackendError:
            if required:
                raise
            result = {}
        if MODERN not in (result.get("supportedVersions") or []):
            if required:
                raise BackendError(-32022, f"the backend does not offer {MODERN}")
            self.protocol_version = PROTOCOL_VERSION  # a 2025-era server: the handshake it is
            return False
        self.server_info = result.get("serverInfo") or {}
        self.capabilities = result.get("capabilities") or {}
        return True

    async def subscribe(self) -> None:
        """2026-07-28: `list_changed` comes on a `subscriptions/listen` request that stays open while we listen."""
        while not self.closed.is_set():
            self.listening = scope = anyio.CancelScope()
            with scope, suppress(BackendError, LinkDown, Timeout):
                forever = Timeouts(math.inf, math.inf)
                await self.request("subscriptions/listen", {"notifications": self.listen_filter()}, timeouts=forever)
            if not scope.cancel_called:
                self.listen_settled.set()
                return  # the backend ended it: as of the last listing
            # `follow` closed it on purpose (the cancellation tells the backend): reopen with the new filter

    def listen_filter(self) -> Message:
        """What our 2026-07-28 listen stream asks for: every list change, and the resources clients follow."""
        if not self.following:
            return LIST_CHANGES
        return {**LIST_CHANGES, "resourceSubscriptions": sorted(self.following)}

    async def follow(self, uris: frozenset[str]) -> None:
        """Ask the backend for `notifications/resources/updated` about exactly these resources, no more.

        In 2026-07-28 the URIs are part of the listen stream's filter, so the
        stream is reopened with the new one. In 2025-11-25 each is a
        `resources/subscribe` (or `unsubscribe`) on our session, if the backend
        says it supports them.
        """
        before, self.following = self.following, uris
        if uris == before:
            return
        if self.modern:
            self.listen_settled = settled = anyio.Event()
            if self.listening is not None:
                self.listening.cancel()
            with anyio.move_on_after(FOLLOW_WAIT):  # so that a client's own acknowledgement promises no more
                await settled.wait()  # than the backend does (an update in between would be lost)
            return
        if not (self.capabilities.get("resources") or {}).get("subscribe"):
            return
        for method, changed in (("resources/unsubscribe", before - uris), ("resources/subscribe", uris - before)):
            for uri in sorted(changed):
                try:
                    await self.request(method, {"uri": uri}, timeouts=Timeouts(idle=30, total=30))
                except LinkDown:
                    self.following = before  # not all of it reached the backend: the next `watch` tries again
                    return
                except (BackendError, Timeout) as exc:
                    log.warning(
                        "backend refused a resource subscription",
                        backend=self.name,
                        uri=uri,
                        method=method,
                        error=str(exc),
                    )

    @property
    def cancels_by_closing(self) -> bool:
        """Whether ending our side of a request tells the backend it is cancelled (2026-07-28 over HTTP)."""
        return False

    async def initialize(self) -> None:
        """The 2025-11-25 handshake: our capabilities out, the backend's info and capabilities back."""
        params = {"protocolVersion": PROTOCOL_VERSION, "capabilities": CLIENT_CAPABILITIES, "clientInfo": CLIENT_INFO}
        result = await self.request("initialize", params, timeouts=Timeouts(idle=30, total=30))
        self.server_info = result.get("serverInfo") or {}
        self.capabilities = result.get("capabilities") or {}
        await self.notify("notifications/initialized")


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()

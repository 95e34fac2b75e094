"""The express lane: the one request a proxy serves most, forwarded without the SDK's per-request machinery.

An optimisation, and only that: a reader may skip this file. Without it every
call takes the SDK's path (handlers.py), with the same answers, only more
slowly. Its parity with that path is what tests/test_05_express.py proves,
request by request: `test_the_express_lane_answers_as_the_sdks_path_does`,
`test_a_malformed_envelope_gets_the_sdks_answer`,
`test_what_the_lane_must_not_take_gets_the_sdks_refusal`, and the tests
beside them for a long call, a caller hanging up, and the call's count, log
line and span.

Most of what reaches a proxy is `tools/call`, and most calls need nothing
but their answer: no progress, no log lines, no question for the user. For
such a call in 2026-07-28 the SDK still builds models of the request, a
session object, a task and a stream to wait for notifications that never
come, then checks the backend's result against the spec's schema, which the
backend's own SDK already did: a large share of the proxy's time per call
(bench/README.md).

This ASGI middleware takes exactly those calls and nothing else: a clean
2026-07-28 `tools/call` (the SDK's own checks pass: Host and Origin,
Accept, the routing headers against the body, the envelope in `_meta`), for
a tool of a backend spoken to in 2026-07-28, with no progress token, no log
level, no `Mcp-Param-*` headers and no answers to earlier questions. Anything
else, including every request that is wrong in some way, goes on to the SDK,
which answers it, errors included, as it always does. The call itself goes
through the same `call_backend_tool` (forward.py) as the SDK's handler, and makes the
same span and histogram point as the SDK's middleware would.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from typing import Any

import anyio
from catalogue import Item
from mcp import MCPError
from mcp.server.streamable_http import check_accept_headers
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp.types import INTERNAL_ERROR, LOG_LEVEL_META_KEY
from mcp_types.methods import validate_client_request
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import (
    ERROR_TYPE,
    GEN_AI_OPERATION_NAME,
    GEN_AI_TOOL_NAME,
    INSTRUMENTATION_NAME,
    MCP_METHOD_NAME,
    MCP_PROTOCOL_VERSION,
    NETWORK_TRANSPORT,
    non_finite,
    transport_attributes,
)

MODERN = "2026-07-28"
MAX_BODY = 1024 * 1024  # a larger call goes the SDK's way, with its own limit
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
PING_INTERVAL = 15.0  # seconds: as the SDK, a call silent this long turns its response into a pinged stream
WATCH_AFTER = 0.1  # seconds a call runs before anyone listens for its caller hanging up
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
PLAIN_PARAMS = frozenset({"name", "arguments", "_meta"})  # anything more (answers to questions...) is the SDK's

Route = Callable[[str, Scope], Item | None]  # the tool by its public name, if the express lane may take it
Call = Callable[[Item, Mapping[str, Any], Mapping[str, Any], Request], Awaitable[dict[str, Any]]]

tracer = trace.get_tracer(INSTRUMENTATION_NAME)

# Set in the task that serves a request, once the lane has answered it: each request runs in a task of
# its own, with its own copy of the context, so the mark never outlives its request.
answered_here: ContextVar[bool] = ContextVar("answered_here", default=False)


def skip_answered_here(_record: logging.LogRecord) -> bool:
    """No uvicorn access line for a call the lane answered: its `forwarded` line already says more.

    That line names the backend, the tool, the outcome and the time; the
    access line would add `POST /mcp 200` at the same cost again (a JSON log
    line costs about as much as the call's span and metrics together).
    Requests the lane passes on keep their access line.
    """
    return not answered_here.get()


class ExpressLane:
    """ASGI middleware in front of the SDK's app: serve the plain calls it can, pass on everything else."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        path: str,
        security: TransportSecuritySettings,
        route: Route,
        call: Call,
        server_info: Mapping[str, Any],
        duration: metrics.Histogram,
    ) -> None:
        self.app, self.path = app, path
        self.security = TransportSecurityMiddleware(security)  # the SDK's Host and Origin check, made once
        self.route, self.call, self.duration = route, call, duration
        # Taken once (the SDK hands out a deep copy per access): the lane never changes it, it only serialises it.
        self.stamp = {SERVER_INFO_KEY: server_info}
        logging.getLogger("uvicorn.access").addFilter(skip_answered_here)  # added once, however often built

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if (
            headers.get("mcp-method") != "tools/call"
            or headers.get("mcp-protocol-version") != MODERN
            or not headers.get("content-length", "x").isdigit()
            or int(headers["content-length"]) > MAX_BODY
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        body = await request.body()
        taken = await self.take(request, body)
        if taken is None:
            await self.app(scope, replay(body, receive), send)
            return
        await self.serve(request, *taken, receive, send)

    async def take(
        self, request: Request, body: bytes
    ) -> tuple[int | str, str, dict[str, Any], dict[str, Any], Item] | None:
        """The call, if it is one for the express lane; None sends the request on to the SDK."""
        if await self.security.validate_request(request, is_post=True) is not None:
            return None  # DNS-rebinding protection: the SDK refuses it, in its words
        if check_accept_headers(request) != (True, True):
            return None
        try:
            message = json.loads(body)
        except (ValueError, RecursionError):
            return None
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or message.get("method") != "tools/call":
            return None
        request_id, params = message.get("id"), message.get("params")
        if isinstance(request_id, bool) or not isinstance(request_id, int | str) or not isinstance(params, dict):
            return None
        name, arguments, meta = params.get("name"), params.get("arguments", {}), params.get("_meta")
        if not isinstance(name, str) or not isinstance(arguments, dict) or not isinstance(meta, dict):
            return None
        if non_finite(params) is not None:
            return None  # NaN or Infinity: the SDK path refuses it (shared/finite.py)
        if not params.keys() <= PLAIN_PARAMS or "progressToken" in meta or LOG_LEVEL_META_KEY in meta:
            return None  # progress and log lines need a stream; answers to questions need the parking lot
        if any(key.startswith("mcp-param-") for key in request.headers) or find_duplicated_routing_header(
            request.headers.items()
        ):
            return None
        if not isinstance(classify_inbound_request(message, headers=dict(request.headers)), InboundModernRoute):
            return None  # the envelope or a routing header is wrong: the SDK says which
        try:
            validate_client_request("tools/call", MODERN, params)  # the shapes, as the SDK checks them
        except ValueError:
            return None
        item = self.route(name, request.scope)
        if item is None:
            return None
        return request_id, name, arguments, meta, item

    async def serve(
        self,
        request: Request,
        request_id: int | str,
        name: str,
        arguments: dict[str, Any],
        meta: dict[str, Any],
        item: Item,
        receive: Receive,
        send: Send,
    ) -> None:
        """Forward the call, with the span and the histogram point the SDK's path would have made."""
        network = transport_attributes(request)
        attributes = {
            MCP_METHOD_NAME: "tools/call",
            MCP_PROTOCOL_VERSION: MODERN,
            "jsonrpc.request.id": str(request_id),
            GEN_AI_OPERATION_NAME: "execute_tool",
            GEN_AI_TOOL_NAME: name,
            **network,
        }
        metric = {
            MCP_METHOD_NAME: "tools/call",
            MCP_PROTOCOL_VERSION: MODERN,
            NETWORK_TRANSPORT: network[NETWORK_TRANSPORT],
            GEN_AI_OPERATION_NAME: "execute_tool",
            GEN_AI_TOOL_NAME: name,
        }
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
        status, streaming = 200, False
        started = time.perf_counter()
        # The caller's traceparent: our span joins its trace. (Most calls carry none: nothing to parse then.)
        context = propagate.extract(meta) if propagate.get_global_textmap().fields & meta.keys() else None
        with tracer.start_as_current_span(
            f"tools/call {name}", kind=SpanKind.SERVER, context=context, attributes=attributes
        ) as span:
            try:
                answered = await answer(self.call(item, arguments, meta, request), receive, send)
                if answered is None:
                    return  # the caller went away; the call to the backend was cancelled with it
                result, streaming = answered
                if result.get("isError"):
                    metric[ERROR_TYPE] = "tool_error"
                    span.set_attribute(ERROR_TYPE, "tool_error")
                    span.set_status(StatusCode.ERROR)
                reply["result"] = {**result, "_meta": {**(result.get("_meta") or {}), **self.stamp}}
            except Failed as failed:
                streaming, status = failed.streaming, self.failed(failed.error, reply, metric, span)
            except Exception as exc:  # a result we cannot stamp (its `_meta` is not an object): the backend's fault
                status = self.failed(exc, reply, metric, span)
            finally:
                self.duration.record(time.perf_counter() - started, metric)
        payload = json.dumps(reply, separators=(",", ":")).encode()
        answered_here.set(True)
        if streaming:  # the answer ends the event stream the pings began
            await send({"type": "http.response.body", "body": b"event: message\r\ndata: " + payload + b"\r\n\r\n"})
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    def failed(exc: Exception, reply: dict[str, Any], metric: dict[str, Any], span: trace.Span) -> int:
        """The error reply the SDK would give, recorded on the span and the metric; returns the HTTP status."""
        if isinstance(exc, MCPError):
            code = str(exc.error.code)
            metric[ERROR_TYPE] = code
            span.set_attributes({ERROR_TYPE: code, "rpc.response.status_code": code})
            span.set_status(StatusCode.ERROR, exc.error.message)
            reply["error"] = exc.error.model_dump(by_alias=True, mode="json", exclude_none=True)
            return ERROR_CODE_HTTP_STATUS.get(exc.error.code, 200)
        # As the SDK answers what nobody expected: the details go to the span, not on the wire.
        metric[ERROR_TYPE] = type(exc).__qualname__
        span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, str(exc))
        reply["error"] = {"code": INTERNAL_ERROR, "message": "Internal server error"}
        return ERROR_CODE_HTTP_STATUS.get(INTERNAL_ERROR, 200)


class Failed(Exception):
    """The call failed; `streaming` says whether the answer goes out as the last event of a stream."""

    def __init__(self, error: Exception, streaming: bool) -> None:
        super().__init__(str(error))
        self.error, self.streaming = error, streaming


async def answer(call: Awaitable[dict[str, Any]], receive: Receive, send: Send) -> tuple[dict[str, Any], bool] | None:
    """The call's result, and whether the response became an event stream; None if the caller hung up first.

    Hanging up is how a 2026-07-28 caller cancels, so it cancels the call. A call
    still running after `PING_INTERVAL` commits the response to an event stream
    and sends a keep-alive comment every interval, as the SDK does, so that an
    intermediary with an idle timeout does not cut a long call off.

    Most calls are over in milliseconds, so the watcher that listens for the
    hang-up starts only once a call has run for `WATCH_AFTER`: a caller who
    hangs up sooner is noticed then, a moment late, as a cancellation may be.
    The watcher is a bare asyncio task, not a task group: a group's cancel
    formats the task's repr for its reason and then waits for the watcher to
    unwind, which cost a tenth of the proxy's work per call (bench/README.md).
    """
    loop = asyncio.get_running_loop()
    ping_at = loop.time() + PING_INTERVAL  # counted from the call's start, however late the watcher starts
    streaming = False
    call_scope = anyio.CancelScope()
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal streaming, ping_at
        while True:
            try:
                async with asyncio.timeout_at(ping_at):
                    message = await receive()
            except TimeoutError:
                if not streaming:
                    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                    streaming = True
                await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})
                ping_at += PING_INTERVAL
                continue
            if message["type"] == "http.disconnect":
                call_scope.cancel()
                return

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER, start_watching)
    try:
        with call_scope:
            return (await call, streaming)
    except Exception as exc:
        raise Failed(exc, streaming) from None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
            if streaming:  # a ping may be on its way out: the answer must follow it, not cut into it
                await asyncio.wait([watcher])
    return None  # reached only when the caller hung up: the scope swallowed the cancellation


def replay(body: bytes, receive: Receive) -> Receive:
    """`receive` for the app behind us: the body we read first, then whatever comes after it."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def again() -> Message:
        return pending.pop() if pending else await receive()

    return again

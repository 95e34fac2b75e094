"""How one request reaches its backend and its answer comes back: the path every forwarded call takes.

A request goes as a plain dict with what belongs to this call only: the
caller's `_meta` (less the caller's own envelope), its trace context, what it
said it can do, its log level, and the headers a backend checks. Back come
the answer, the progress reports and log lines the caller asked for, and the
backend's questions for the user, put to the caller in its own era.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import structlog
from calls import BackendError, Message, Relay, Timeouts
from catalogue import Item, publish_links
from mcp import MCPError
from mcp.server import ServerRequestContext
from mcp.shared.inbound import mcp_param_headers
from mcp.shared.message import ServerMessageMetadata
from mcp.types import (
    CLIENT_CAPABILITIES_META_KEY,
    LOG_LEVEL_META_KEY,
    CreateMessageRequest,
    CreateMessageResult,
    ElicitRequest,
    ElicitResult,
    LoggingLevel,
)
from opentelemetry import metrics, propagate
from proxy import LOG_LEVELS, Proxy
from starlette.requests import Request
from supervisor import Connection, Unavailable

from shared import INSTRUMENTATION_NAME

SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
RESERVED_META = "io.modelcontextprotocol/"  # `_meta` keys of the protocol itself

log = structlog.get_logger("mcp-proxy")
calls = metrics.get_meter(INSTRUMENTATION_NAME).create_counter(
    "mcp.proxy.calls", description="Calls forwarded to a backend, by server, tool, outcome"
)


class Sender(Protocol):
    """How a call reaches its backend: `forward` for a request the SDK handled, the express lane's own otherwise."""

    async def __call__(
        self,
        connection: Connection,
        method: str,
        params: Message,
        *,
        safe: bool,
        timeouts: Timeouts,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Message: ...


async def call_backend_tool(item: Item, arguments: Mapping[str, Any], send: Sender) -> Message:
    """One tool call to its backend, with what every call gets: its timeouts, a count, and a log line."""
    backend, tool = item.owner.backend, str(item.original["name"])
    annotations = item.original.get("annotations") or {}
    # Sending a call twice is harmless only if the tool says it reads, or that repeating it changes nothing.
    safe = bool(annotations.get("readOnlyHint") or annotations.get("idempotentHint"))
    started, outcome = time.perf_counter(), "ok"
    try:
        result = await send(
            item.owner,
            "tools/call",
            {"name": tool, "arguments": dict(arguments)},
            safe=safe,
            timeouts=Timeouts(backend.idle_timeout(tool), backend.max_duration),
            # A 2026-07-28 backend checks the arguments its schema marks `x-mcp-header` against these headers.
            extra_headers=mcp_param_headers(item.header_params, arguments),
        )
        outcome = "tool_error" if result.get("isError") else "ok"
        publish_links(item.owner, result.get("content"))
        return result
    except Unavailable as exc:
        outcome = "unavailable"
        # A tool error, not a protocol error: the model reads it and can decide to try again.
        return {"content": [{"type": "text", "text": str(exc)}], "isError": True, "resultType": "complete"}
    except MCPError as exc:
        outcome = str(exc.error.code)
        raise
    finally:
        calls.add(1, {"server": backend.name, "tool": tool, "outcome": outcome})
        # Arguments and results stay out of the log: they can hold personal data.
        log.info(
            "forwarded",
            server=backend.name,
            tool=tool,
            outcome=outcome,
            ms=round((time.perf_counter() - started) * 1000, 2),
            arguments=sorted(arguments),
        )


def outgoing_meta(caller_meta: Mapping[str, Any], modern_caller: bool, level: str | None = None) -> Message:
    """The `_meta` a backend gets: the caller's, less what belongs to the caller's own exchange with us."""
    # The caller's envelope is not the backend's (the link writes its own), but its log level is its wish.
    meta = {k: v for k, v in caller_meta.items() if k == LOG_LEVEL_META_KEY or not k.startswith(RESERVED_META)}
    meta.pop("progressToken", None)  # the link asks for progress with a token of its own
    propagate.inject(meta)  # traceparent: the backend's span joins the caller's trace
    if not modern_caller:  # a 2025-11-25 session takes every level its own setting lets through
        meta.setdefault(LOG_LEVEL_META_KEY, level or "debug")
    return meta


def backend_headers(connection: Connection, request: Request | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    headers = dict(extra or {})
    if connection.backend.forward_authorization and request is not None and "authorization" in request.headers:
        # TOKEN PASSTHROUGH, on for this backend in the config. The MCP spec forbids it unless the backend
        # is the token's audience: the README says when that holds. Off by default, for every backend.
        headers["authorization"] = request.headers["authorization"]
    return headers


def cleaned(result: Message) -> Message:
    """The backend's answer, made ours: the SDK (or the express lane) stamps our own server info on it."""
    result.setdefault("resultType", "complete")  # 2026-07-28 requires it; a 2025-11-25 backend leaves it out
    meta_out = result.get("_meta")
    if isinstance(meta_out, dict) and SERVER_INFO_KEY in meta_out:
        result["_meta"] = {k: v for k, v in meta_out.items() if k != SERVER_INFO_KEY} or None
    return result


async def express_call(
    item: Item, arguments: Mapping[str, Any], caller_meta: Mapping[str, Any], request: Request
) -> Message:
    """A call the express lane took (express.py): no progress, no log lines, no questions to relay."""

    async def send(
        connection: Connection,
        method: str,
        params: Message,
        *,
        safe: bool,
        timeouts: Timeouts,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Message:
        meta = outgoing_meta(caller_meta, modern_caller=True)
        try:
            result = await connection.request(
                method,
                {**params, "_meta": meta} if meta else params,
                safe=safe,
                timeouts=timeouts,
                headers=backend_headers(connection, request, extra_headers),
                pass_input_required=True,
                capabilities=caller_meta.get(CLIENT_CAPABILITIES_META_KEY) or {},
            )
        except BackendError as exc:
            raise MCPError(code=exc.code, message=exc.message, data=exc.data) from None
        return cleaned(result)

    return await call_backend_tool(item, arguments, send)


async def forward_or_fail(ctx: ServerRequestContext[Proxy], item: Item, method: str, params: Message) -> Message:
    """Reads are safe to send again; a backend that cannot answer is a clear protocol error."""
    backend = item.owner.backend
    timeouts = Timeouts(backend.timeout, backend.max_duration)
    try:
        return await forward(ctx, item.owner, method, params, safe=True, timeouts=timeouts)
    except Unavailable as exc:
        raise MCPError(code=-32603, message=str(exc)) from None


async def forward(
    ctx: ServerRequestContext[Proxy],
    connection: Connection,
    method: str,
    params: Message,
    *,
    safe: bool,
    timeouts: Timeouts,
    extra_headers: Mapping[str, str] | None = None,
) -> Message:
    """Send one request to its backend as a plain dict, with what belongs to this call, and clean up the answer."""
    asked = ctx.params or {}
    caller_meta = asked.get("_meta") or {}
    modern_caller = ctx.session.protocol_version >= "2026"
    least = None if modern_caller else ctx.lifespan_context.log_level(ctx)
    meta = outgoing_meta(caller_meta, modern_caller, least)
    wants_progress = "progressToken" in caller_meta
    # A 2026-07-28 caller answers a backend's `input_required` itself and sends the request again with the
    # answers: they go through untouched. A 2025-11-25 caller is asked by the proxy (`relay`) instead.
    # (A requestState of the proxy's own names a parked call; see below. It is never sent to a backend.)
    params = {**params, **{key: asked[key] for key in ("inputResponses", "requestState") if key in asked}}

    async def send(relay: Relay | None, caller: Callable[[], ServerRequestContext[Proxy]]) -> Message:
        async def progress(value: float, total: float | None, message: str | None) -> None:
            await caller().session.report_progress(value, total, message)  # sent with the caller's own token

        async def log_message(message: Mapping[str, Any]) -> None:
            level, now = message.get("level"), caller()
            if level in LOG_LEVELS and (least is None or LOG_LEVELS.index(level) >= LOG_LEVELS.index(least)):
                data, logger = message.get("data"), message.get("logger")
                await now.session.send_log_message(cast(LoggingLevel, level), data, logger, now.request_id)

        async def cut() -> None:  # the backend cut its stream and means to go on: so do we (SEP-1699)
            close = caller().close_sse_stream
            if close is not None:  # (the caller's era resumes streams, and we keep their events to resume from)
                await close()

        return await connection.request(
            method,
            {**params, "_meta": meta} if meta else params,
            safe=safe,
            timeouts=timeouts,
            progress=progress if wants_progress else None,
            relay=relay,
            on_log=log_message,
            on_cut=cut,
            headers=headers,
            pass_input_required=modern_caller,
            capabilities=declared(ctx, caller_meta),
            legacy=not modern_caller,  # the backend's 2025-11-25 session, if it has one: it carries questions
        )

    headers = backend_headers(connection, ctx.request if isinstance(ctx.request, Request) else None, extra_headers)
    try:
        if modern_caller and not connection.modern:
            # A 2025-11-25 backend may ask a question mid-call; this caller can only be asked by an
            # `input_required` result. The call is parked while the caller answers (parking.py). (A 2026-07-28
            # backend asks by an `input_required` result of its own, which goes to the caller as it is.)
            proxy, target = ctx.lifespan_context, (method, str(params.get("name") or params.get("uri")))
            assert proxy.tg is not None
            result = await proxy.parking.call(
                proxy.tg, target, params, ctx, lambda parked: send(parked.ask, lambda: parked.waiter)
            )
        else:
            result = await send(lambda asked, asked_params: ask_client(ctx, asked, asked_params), lambda: ctx)
    except BackendError as exc:
        raise MCPError(code=exc.code, message=exc.message, data=exc.data) from None
    return cleaned(result)


def declared(ctx: ServerRequestContext[Proxy], caller_meta: Mapping[str, Any]) -> Message:
    """What the caller said it can do (what a 2026-07-28 backend may ask of it): per request in 2026-07-28,
    at `initialize` in 2025-11-25."""
    said = caller_meta.get(CLIENT_CAPABILITIES_META_KEY)
    if isinstance(said, dict):
        return said
    capabilities = ctx.session.client_capabilities
    return capabilities.model_dump(by_alias=True, mode="json", exclude_none=True) if capabilities is not None else {}


async def ask_client(ctx: ServerRequestContext[Proxy], method: str, params: Mapping[str, Any] | None) -> Message:
    """A backend asks the user something (elicitation) or wants a completion (sampling): ask the caller."""
    kinds: dict[str, tuple[type[Any], type[Any]]] = {
        "elicitation/create": (ElicitRequest, ElicitResult),
        "sampling/createMessage": (CreateMessageRequest, CreateMessageResult),
    }
    if method not in kinds:
        raise BackendError(-32601, f"Method not found: {method}")
    if not ctx.session.can_send_request:
        raise BackendError(
            -32601,
            f"{method}: the client connected without a channel for questions "
            "(2026-07-28 without input_required support); connect with 2025-11-25",
        )
    request_type, result_type = kinds[method]
    request = request_type.model_validate({"method": method, "params": dict(params or {})})
    try:
        answer = await ctx.session.send_request(
            request, result_type, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
        )
    except MCPError as exc:
        raise BackendError(exc.error.code, exc.error.message) from None
    dumped: Message = answer.model_dump(by_alias=True, mode="json", exclude_none=True)
    return dumped

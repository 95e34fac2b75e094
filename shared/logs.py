"""Logging for every module: structlog and the standard library, one handler, stderr only.

Why stderr: over stdio, stdout *is* the JSON-RPC wire, and a single stray log
line there breaks the client. Why one handler: the SDK, uvicorn and httpx2 log
through the standard library, our code through structlog; routing both
through the same formatter gives one consistent stream an attendee can read
(console) or a machine can parse (JSON).

Call `configure_logging()` once, in `main()`, before serving. Constructing an
`MCPServer` calls `logging.basicConfig()`, so this replaces the root handlers
rather than adding to them.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import structlog
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from opentelemetry import trace
from pydantic import ValidationError
from structlog.typing import EventDict, Processor

from shared.config import LogFormat

# Keys whose values are credentials whatever they hold.
SENSITIVE_KEYS = frozenset({"authorization", "token", "access_token", "refresh_token", "api_key", "password", "secret"})
# Credentials that slipped into free text: a header quoted in an exception, a library's debug line
# printing a token response ("'access_token': 'eyJ…'"), a bare JWT.
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}")
_FIELD = re.compile(
    r"(?i)(['\"]?(?:access_token|refresh_token|client_secret|code_verifier|password)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,&}]+"
)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
# A word each of the three patterns needs, in lower case. Almost no logged text holds one, and
# looking for them is far cheaper than three substitutions. Plain substring tests, not a regex: a
# case-insensitive alternation over every line's text cost more (bench/README.md).
_CLUES = ("bearer", "basic", "token", "secret", "verifier", "password", "eyj")
REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """Mask what looks like a credential; leave everything else as it is."""
    if isinstance(value, str):
        if not _has_clue(value):
            return value
        value = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
        value = _FIELD.sub(lambda m: f"{m.group(1)}{REDACTED}", value)
        return _JWT.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {k: REDACTED if str(k).lower() in SENSITIVE_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: no log line carries a raw token, whoever logged it."""
    if not _may_hold_a_secret(event_dict):
        return event_dict
    for key, value in list(event_dict.items()):
        if key.lower() in SENSITIVE_KEYS and value is not None:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact(value)
    return event_dict


def _may_hold_a_secret(event_dict: EventDict) -> bool:
    """Whether the line needs the full pass: a sensitive key, a nested value, or a clue in any of its text.

    Nearly every line has none of them, and one look over all of its text is
    cheaper than one per value.
    """
    texts = []
    for key, value in event_dict.items():
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, Mapping | list | tuple):
            return True
        if key.lower() in SENSITIVE_KEYS:
            return True
    return _has_clue("\n".join(texts))


def _has_clue(text: str) -> bool:
    lowered = text.lower()
    return any(clue in lowered for clue in _CLUES)


def _drop_color_message(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    # uvicorn attaches an ANSI-coloured duplicate of each message; keep the plain one.
    event_dict.pop("color_message", None)
    return event_dict


def add_trace_context(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Stamp the current OpenTelemetry trace and span ids on the line, so a log line leads to its trace."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def record_exception_on_span(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """A logged exception also becomes an `exception` event on the current span.

    The SDK turns a crashing tool into an error result before any middleware
    sees the exception, but it does log it, inside the request's span: this
    is how the trace gets the exception and its stack.
    """
    record = event_dict.get("_record")
    exc_info = record.exc_info if isinstance(record, logging.LogRecord) else event_dict.get("exc_info")
    if exc_info is True:
        exc_info = sys.exc_info()
    exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info if isinstance(exc_info, BaseException) else None
    span = trace.get_current_span()
    if exc is not None and span.is_recording():
        span.record_exception(exc)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_context,
        record_exception_on_span,
        _drop_color_message,
        redact_secrets,
    ]


def _renderer(log_format: LogFormat, stream: TextIO) -> list[Processor]:
    if log_format == "json":
        # Tracebacks as structured data, without local variables: locals can hold tokens.
        tracebacks = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        return [structlog.processors.ExceptionRenderer(tracebacks), structlog.processors.JSONRenderer()]
    colors = stream.isatty()
    return [structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=structlog.dev.plain_traceback)]


def configure_logging(level: str = "info", log_format: LogFormat | None = None, stream: TextIO | None = None) -> None:
    """Send every log record of the process to `stream` (stderr) in one format.

    `log_format=None` picks console on a terminal and JSON otherwise, so a
    person gets readable lines and a log collector gets parseable ones.
    """
    stream = stream or sys.stderr
    log_format = log_format or ("console" if stream.isatty() else "json")
    numeric_level = logging.getLevelNamesMapping()[level.upper()]
    shared = _shared_processors()

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *_renderer(log_format, stream)],
    )
    # Fields of a LogRecord no line here prints, which the standard library would look up for every
    # record (the logging HOWTO's "Optimization"): the thread, the process, and the caller's frame.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # noqa: SLF001 (the HOWTO names this very attribute; a test fails if it moves)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    # uvicorn and the SDK install handlers of their own on some loggers; let them all reach ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "mcp"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # httpx2 logs every request at INFO: noise in a lesson, still there at DEBUG.
    logging.getLogger("httpx2").setLevel(max(numeric_level, logging.WARNING))

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


async def log_requests(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    """MCP middleware: one log line per request, with its outcome and duration.

    It binds the JSON-RPC id and method to the logging context first, so any
    line a tool logs while handling the request carries them too. Arguments
    and results are not logged: they can hold personal data.
    """
    if ctx.request_id is None:  # a notification: no outcome to report
        return await call_next(ctx)
    about: dict[str, Any] = {"rpc_id": str(ctx.request_id), "method": ctx.method}
    if ctx.method in ("tools/call", "prompts/get"):
        about["name"] = (ctx.params or {}).get("name")
    log = structlog.get_logger("mcp.requests")
    started = time.perf_counter()
    with structlog.contextvars.bound_contextvars(**about):
        try:
            result = await call_next(ctx)
        except Exception as exc:
            # A protocol error (unknown method, invalid params): the SDK turns it into a JSON-RPC error.
            log.warning("request", outcome=error_type(exc), ms=_elapsed_ms(started))
            raise
        is_error = isinstance(result, dict) and bool(result.get("isError"))
        (log.warning if is_error else log.info)(
            "request", outcome="tool_error" if is_error else "ok", ms=_elapsed_ms(started)
        )
        return result


def error_type(exc: BaseException) -> str:
    """How an error is named in logs and telemetry: the JSON-RPC error code, else the exception's class."""
    if isinstance(exc, MCPError):
        return str(exc.error.code)
    if isinstance(exc, ValidationError):
        return "-32602"  # the SDK answers invalid request params with this code
    return type(exc).__qualname__


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)

"""Refuse NaN and Infinity in a request: JSON has no such numbers.

Python's `json` and pydantic's parser both accept the literals `NaN`,
`Infinity` and `-Infinity`, and read a literal too large for a float
(`1e999`) as infinity. The SDK parses each era's request with one of them, so
such a number reached the tools, and a tool that answers a `number` then
gave `structuredContent: null` (its output could not be JSON). The check
runs as SDK middleware: after authentication and the SDK's parse, before
params validation, in both eras and on both transports, with the JSON path
of the offending value in the error.
"""

from __future__ import annotations

import math
from typing import Any

from mcp import MCPError
from mcp.server import MCPServer, Server
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.types import INVALID_PARAMS

LITERALS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # as the request wrote it, or as it was read


def non_finite(value: Any, path: str = "params") -> str | None:
    """The JSON path of the first NaN or infinite number in `value`, with what it is; None if there is none."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {LITERALS[str(value)]}"
    if isinstance(value, dict):
        for key, item in value.items():
            if (found := non_finite(item, f"{path}.{key}")) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := non_finite(item, f"{path}[{index}]")) is not None:
                return found
    return None


def refusal(found: str) -> MCPError:
    return MCPError(
        code=INVALID_PARAMS,
        message=f"Invalid params: {found}; JSON has no NaN or Infinity (a number literal too large for a double, "
        "such as 1e999, reads as Infinity)",
    )


class FiniteNumbers:
    """SDK middleware: a request whose params hold NaN or Infinity is invalid params; a notification, dropped."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        found = non_finite(ctx.params)
        if found is None:
            return await call_next(ctx)
        if ctx.request_id is None:
            return None
        raise refusal(found)


def refuse_non_finite(mcp: MCPServer[Any] | Server[Any]) -> None:
    """Put the check on a server, once: the runner calls this for every start, HTTP or stdio."""
    if not any(isinstance(middleware, FiniteNumbers) for middleware in mcp.middleware):
        mcp.middleware.append(FiniteNumbers())

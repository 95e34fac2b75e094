"""What every module's server gets from `shared/`: one version, and the spec's answer to an unknown tool.

Both are the same in all five modules on purpose: a reader who diffs two
modules should see the lesson, not two answers to the same question.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import version
from typing import Any

from mcp.server import MCPServer
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS

DISTRIBUTION = "mcp-workshop"


@cache
def project_version() -> str:
    """The installed project's version (pyproject.toml), what every module reports as `serverInfo.version`."""
    return version(DISTRIBUTION)


def unknown_tool(name: object) -> MCPError:
    """The MCP specification's error for a tools/call naming no tool: -32602, a protocol error, not a tool result."""
    return MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {name}")


class RefuseUnknownTools:
    """MCP middleware: a tools/call naming no tool is answered with `unknown_tool`.

    The SDK's MCPServer answers one with an `isError` tool result instead,
    which tells the model the tool ran and failed. The known names are looked
    up again on a miss only, since tools may be added while the server runs.
    """

    def __init__(self, mcp: MCPServer[Any]) -> None:
        self._mcp = mcp
        self._known: set[str] = set()

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/call":
            name = (ctx.params or {}).get("name")
            if name not in self._known:
                self._known = {tool.name for tool in await self._mcp.list_tools()}
            if name not in self._known:
                raise unknown_tool(name)
        return await call_next(ctx)


def refuse_unknown_tools(mcp: MCPServer[Any]) -> None:
    """Install `RefuseUnknownTools` innermost, so logging and telemetry around it see the refusal."""
    mcp.middleware.append(RefuseUnknownTools(mcp))

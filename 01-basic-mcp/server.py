"""01-basic-mcp: a minimal MCP server with all three primitives.

.venv/bin/python 01-basic-mcp/server.py              # stdio, as desktop clients launch it
.venv/bin/python 01-basic-mcp/server.py -t http      # streamable HTTP on http://127.0.0.1:8081/mcp
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import anyio
import structlog
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import Field

from shared import (
    add_numbers,
    configure_logging,
    echo_message,
    log_requests,
    parse_config,
    project_version,
    refuse_unknown_tools,
    serve,
)

DEFAULT_PORT = 8081

log = structlog.get_logger("basic-mcp")

mcp = MCPServer(
    "basic-mcp",
    version=project_version(),
    instructions="A workshop server: echo a message, add two numbers, or run a countdown.",
    middleware=[log_requests],  # one log line per request, on stderr
)
refuse_unknown_tools(mcp)  # an unknown tool is a protocol error (-32602), as the spec says

# Tools are what the model can *do*. These two are plain typed functions from
# shared/tools.py, shared by every module: the type hints become the input
# schema, the docstring becomes the description the model reads.
mcp.add_tool(echo_message)
mcp.add_tool(add_numbers)


# lab 01-tool: begin
@mcp.tool()
async def countdown(seconds: Annotated[int, Field(ge=1, le=30)], ctx: Context) -> str:
    """Count down from a number of seconds (1 to 30), reporting progress each second."""
    # A long call is what graceful shutdown is about: stop the server mid-countdown
    # and it still finishes, if it fits in the grace period.
    log.info("countdown started", seconds=seconds)
    for elapsed in range(seconds):
        await ctx.report_progress(elapsed, seconds, f"{seconds - elapsed} s left")
        await anyio.sleep(1)
    log.info("countdown finished", seconds=seconds)
    return f"Countdown from {seconds} finished"
    # lab 01-tool: end


# Resources are what the model can *read*, addressed by URI.
@mcp.resource("workshop://about", name="about", mime_type="text/markdown")
def about() -> str:
    """What this server is and how to use it."""
    return (
        "# basic-mcp\n\n"
        "The first server of the MCP workshop.\n\n"
        "- `echo_message(message)`: echoes the message back\n"
        "- `add_numbers(num1, num2)`: adds two numbers\n"
        "- `countdown(seconds)`: counts down, reporting progress\n"
    )


# Prompts are templates the *user* picks, e.g. from a slash menu in their client.
@mcp.prompt()
def explain_tool(tool_name: str) -> str:
    """Ask the model to explain one of this server's tools and show an example call."""
    return (
        f"Explain what the `{tool_name}` tool of the basic-mcp server does, then show one example call and its result."
    )


def main(argv: Sequence[str] | None = None) -> None:
    config, _ = parse_config(argv, default_port=DEFAULT_PORT, description=__doc__)
    configure_logging(config.log_level, config.log_format)  # stderr only: on stdio, stdout is the wire
    serve(mcp, config)


if __name__ == "__main__":
    main()

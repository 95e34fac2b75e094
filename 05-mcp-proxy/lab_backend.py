"""A backend of your own behind the proxy: a small MCP server, and the entry that puts it there.

    .venv/bin/python 05-mcp-proxy/lab_backend.py        # over stdio, as the proxy starts it

The 05-backend lab (labs/README.md) is written here. The proxy starts this file over stdio, as it
starts 01; `PROXY_ENTRY` is what its entry in the proxy's configuration says beside `command` and
`args`: the names its tools are served under, and which of its tools clients may see at all.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

from mcp.server import MCPServer

from shared import configure_logging, parse_config, serve


class ToolFilter(TypedDict):
    mode: Literal["allow", "block"]
    list: list[str]


class ProxyEntry(TypedDict, total=False):
    """The keys of a server's entry in the proxy's configuration that this lab is about."""

    prefix: str
    toolFilter: ToolFilter


mcp = MCPServer("lab-backend", instructions="A backend written in the 05-backend lab.")


@mcp.tool()
def reset_everything() -> str:
    """Forget everything this backend knows: a tool for its operator, never for a model."""
    return "everything forgotten"


# lab 05-backend: begin, starter: PROXY_ENTRY: Final[ProxyEntry] = {}
@mcp.tool()
def shout(text: str) -> str:
    """Say `text` again, louder."""
    return text.upper() + "!"


PROXY_ENTRY: Final[ProxyEntry] = {"prefix": "lab_", "toolFilter": {"mode": "block", "list": ["reset_everything"]}}
# lab 05-backend: end


def main() -> None:
    config, _args = parse_config(None, default_port=0)
    configure_logging(config.log_level, config.log_format)
    serve(mcp, config)


if __name__ == "__main__":
    main()

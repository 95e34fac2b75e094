"""What every module answers the same way, because it comes from `shared/`: its version, an unknown tool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from tests.harness import load_server, load_sibling

pytestmark = pytest.mark.anyio

# Each of these has a module-level `mcp` (03's token checks are added only when it is served over HTTP).
SIMPLE = ["01-basic-mcp", "02-token-passthrough", "03-oauth-mcp", "04-observability"]


def the_server(folder: str, tmp_path: Path, proxy: dict[str, Any] | None = None) -> Any:
    module = load_server(folder)
    if folder == "05-mcp-proxy":
        config = load_sibling(folder, "proxy_config").parse_config({"mcpServers": {}, "mcpProxy": proxy or {}})
        return module.make_server(config, load_sibling(folder, "pins").Pins(tmp_path / "pins.json"))
    return module.mcp


@asynccontextmanager
async def connected(server: Any) -> AsyncIterator[Client]:
    async with Client(server) as client:
        yield client


@pytest.mark.parametrize("folder", [*SIMPLE, "05-mcp-proxy"])
async def test_server_info_carries_the_project_version(folder: str, tmp_path: Path) -> None:
    async with connected(the_server(folder, tmp_path)) as client:
        info = client.server_info
    assert info is not None and info.version == version("mcp-workshop") != ""


async def test_the_proxy_reports_the_name_and_version_its_config_gives(tmp_path: Path) -> None:
    server = the_server("05-mcp-proxy", tmp_path, {"name": "my-proxy", "version": "7.1"})
    async with connected(server) as client:
        info = client.server_info
    assert info is not None and (info.name, info.version) == ("my-proxy", "7.1")


@pytest.mark.parametrize("folder", [*SIMPLE, "05-mcp-proxy"])
async def test_an_unknown_tool_is_the_specs_protocol_error(folder: str, tmp_path: Path) -> None:
    async with connected(the_server(folder, tmp_path)) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("no_such_tool", {})
        assert (await client.list_tools()).tools is not None  # the session is still up
    assert (raised.value.error.code, raised.value.error.message) == (-32602, "Unknown tool: no_such_tool")

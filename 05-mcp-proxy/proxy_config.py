"""The proxy's configuration: which MCP servers to put behind one endpoint, and how.

It reads the Go workshop's `config.json` (TBXark mcp-proxy: an `mcpProxy` block
and `mcpServers`) and the `mcpServers` / `servers` files of Claude Desktop and
VS Code, unchanged. `${VAR}` anywhere in a string is replaced by that
environment variable; a missing one is an error that names it. Every error
names the JSON path of the value it is about.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SEPARATOR = "__"


class ConfigError(ValueError):
    """A configuration the proxy cannot use; the message starts with the JSON path."""


@dataclass(frozen=True)
class Backend:
    """One MCP server behind the proxy: a stdio command, or a streamable-HTTP URL."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    prefix: str = ""  # what public names start with: `<name>__` unless configured
    allow: frozenset[str] | None = None  # tool names to offer; None offers all
    block: frozenset[str] = frozenset()

    def public_name(self, tool: str) -> str:
        return f"{self.prefix}{tool}"

    def offers(self, tool: str) -> bool:
        return tool not in self.block and (self.allow is None or tool in self.allow)


@dataclass(frozen=True)
class ProxyConfig:
    backends: tuple[Backend, ...]
    auth_tokens: tuple[str, ...] = ()  # bearer tokens a client must present at /mcp; none means open


def expand(value: Any, path: str) -> Any:
    """`${VAR}` in every string of a JSON value, from the environment."""
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            if match[1] not in os.environ:
                raise ConfigError(f"{path}: environment variable {match[1]} is not set")
            return os.environ[match[1]]

        return VARIABLE.sub(lookup, value)
    if isinstance(value, dict):
        return {k: expand(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def strings(value: Any, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{path}: expected an object of strings")
    return dict(value)


def parse_backend(name: str, entry: Any, path: str) -> Backend | None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: expected an object")
    if not NAME.match(name):
        raise ConfigError(f"{path}: server names use letters, digits, '.', '_' and '-' (at most 64)")
    options = entry.get("options") or {}  # TBXark keeps per-server options here
    if entry.get("disabled") or options.get("disabled"):
        return None
    command, url = entry.get("command"), entry.get("url") or entry.get("httpUrl")
    if bool(command) == bool(url):
        raise ConfigError(f"{path}: give either command (stdio) or url (streamable HTTP)")
    args = entry.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ConfigError(f"{path}.args: expected a list of strings")
    tool_filter = options.get("toolFilter") or entry.get("toolFilter") or {}
    listed = tool_filter.get("list") or []
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        raise ConfigError(f"{path}.options.toolFilter.list: expected a list of tool names")
    mode = tool_filter.get("mode", "allow")
    if mode not in ("allow", "block"):
        raise ConfigError(f"{path}.options.toolFilter.mode: expected allow or block")
    prefix = entry.get("prefix", f"{name}{SEPARATOR}")
    if not isinstance(prefix, str):
        raise ConfigError(f"{path}.prefix: expected a string")
    return Backend(
        name=name,
        command=command,
        args=tuple(args),
        env=strings(entry.get("env"), f"{path}.env"),
        url=url,
        headers=strings(entry.get("headers"), f"{path}.headers"),
        prefix=prefix,
        allow=frozenset(listed) if tool_filter and mode == "allow" else None,
        block=frozenset(listed) if mode == "block" else frozenset(),
    )


def parse_config(data: Any) -> ProxyConfig:
    if not isinstance(data, dict):
        raise ConfigError("$: expected a JSON object")
    key = "mcpServers" if "mcpServers" in data else "servers" if "servers" in data else None
    if key is None:
        raise ConfigError("$: expected mcpServers (Claude Desktop, TBXark) or servers (VS Code)")
    entries = data[key]
    if not isinstance(entries, dict):
        raise ConfigError(f"$.{key}: expected an object of servers")
    proxy_options = expand((data.get("mcpProxy") or {}).get("options") or {}, "$.mcpProxy.options")
    tokens = proxy_options.get("authTokens") or []
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        raise ConfigError("$.mcpProxy.options.authTokens: expected a list of non-empty strings")
    backends = []
    for name, entry in entries.items():
        path = f"$.{key}.{name}"
        backend = parse_backend(name, expand(entry, path), path)
        if backend is not None:
            backends.append(backend)
    return ProxyConfig(tuple(backends), tuple(tokens))


def load_config(path: Path) -> ProxyConfig:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return parse_config(data)

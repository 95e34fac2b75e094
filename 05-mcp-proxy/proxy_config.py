"""The proxy's configuration: which MCP servers to put behind one endpoint, and how.

It reads the Go workshop's `config.json` (TBXark mcp-proxy: an `mcpProxy` block
and `mcpServers`) and the `mcpServers` / `servers` files of Claude Desktop and
VS Code, unchanged. `${VAR}` anywhere in a string is replaced by that
environment variable; a missing one is an error that names it. Every error
names the JSON path of the value it is about.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
SEPARATOR = "__"
MAX_NAME = 128  # the spec's limit for tool and prompt names
URI_SEPARATOR = "+"  # between a backend's namespace and its own URI: `basic+workshop://about`
PROTOCOLS = ("auto", "2025-11-25", "2026-07-28")  # auto: 2026-07-28 when an HTTP backend offers it


class ConfigError(ValueError):
    """A configuration the proxy cannot use; the message starts with the JSON path."""


@dataclass(frozen=True)
class Restart:
    """How a backend that dies is brought back: waiting `delay` s, doubling each time up to `max_delay`.

    A stdio backend is given up on after `max` tries in a row (a crash loop);
    an HTTP one is a server elsewhere, tried again for as long as it is away.
    """

    enabled: bool = True
    max: int = 5
    delay: float = 0.5
    max_delay: float = 30.0


@dataclass(frozen=True)
class ClientCredentials:
    """The proxy's own OAuth client at a protected backend's authorization server (client credentials grant)."""

    client_id: str
    client_secret: str = field(repr=False)
    issuer: str  # the one authorization server the secret may be sent to
    scope: str | None = None


@dataclass(frozen=True)
class Backend:
    """One MCP server behind the proxy: a stdio command, or a streamable-HTTP URL."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    prefix: str = ""  # what public names start with: `<name>__` unless configured
    allow: frozenset[str] | None = None  # tool names to offer; None offers all
    block: frozenset[str] = frozenset()
    timeout: float = 60.0  # idle timeout of a call: no answer and no progress for this long
    max_duration: float = 600.0  # hard cap of a call, progress or not
    tool_timeouts: tuple[tuple[str, float], ...] = ()  # per-tool idle timeouts
    restart: Restart = Restart()
    required: bool = False  # /readyz is 503 while a required backend is down
    pinning: str = "block"  # what a changed tool definition does: block, warn or off
    new_tools: str = "approve"  # a tool a pinned backend adds or renames: approve (wait, like a changed one) or trust
    forward_authorization: bool = False  # pass the caller's Authorization header on (HTTP backends only)
    protocol: str = "auto"  # the era spoken to it: auto, 2025-11-25 (the handshake) or 2026-07-28
    oauth: ClientCredentials | None = None  # the proxy gets its own token for this backend (HTTP only)

    def public_name(self, tool: str) -> str:
        """`prefix` + name, kept within the spec's 128 characters by a stable hash suffix."""
        name = f"{self.prefix}{tool}"
        if len(name) <= MAX_NAME:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        return f"{name[: MAX_NAME - 9]}_{digest}"

    def public_uri(self, uri: str) -> str:
        """The backend's resource URI (or URI template) as clients see it: its namespace, then the URI unchanged.

        The namespace goes in front of the scheme (`workshop://about` becomes
        `basic+workshop://about`): still a valid URI whatever the original,
        and a template stays a template that expands to exactly the public
        form of what the backend's own would expand to.
        """
        return uri_namespace(self.prefix) + uri

    def backend_uri(self, public: str) -> str:
        """The exact inverse of `public_uri`, for a URI this backend's item was found by."""
        return public[len(uri_namespace(self.prefix)) :]

    def idle_timeout(self, tool: str) -> float:
        return dict(self.tool_timeouts).get(tool, self.timeout)

    def offers(self, tool: str) -> bool:
        return tool not in self.block and (self.allow is None or tool in self.allow)


@dataclass(frozen=True)
class ProxyConfig:
    backends: tuple[Backend, ...]
    # Bearer tokens a client must present at /mcp (none means open), each with the backends it opens (None: all).
    auth_tokens: tuple[tuple[str, frozenset[str] | None], ...] = ()
    pins_file: str | None = None
    # serverInfo from `mcpProxy.name`/`version`; no version there means the project's own.
    name: str = "mcp-proxy"
    version: str | None = None


def uri_namespace(prefix: str) -> str:
    """What a backend's resource URIs start with, from its name prefix: `basic__` gives `basic+`, `""` nothing.

    A URI scheme is letters, digits, `+`, `-` and `.`, starts with a letter and
    is compared without case (RFC 3986, 3.1): the prefix loses its trailing
    separator, `_` becomes `-`, and it is lowercased. The namespace never holds
    a `+` of its own, so it ends at the first one.
    """
    if not prefix:
        return ""
    name = prefix.rstrip("_.-").replace("_", "-").lower()
    if not name[:1].isalpha():
        name = "x-" + name if name else "x"
    return name + URI_SEPARATOR


def same_server(one: Backend, other: Backend) -> bool:
    """Whether two entries start the same server (or reach the same URL): they offer the same names."""
    launch = ("command", "args", "env", "cwd", "url", "headers")
    return all(getattr(one, key) == getattr(other, key) for key in launch)


def check_namespaces(backends: Sequence[Backend], key: str) -> None:
    """Refuse what is known to clash before any backend runs: a resource namespace two prefixes would share,
    and one server entered twice under one prefix."""
    for i, later in enumerate(backends):
        for earlier in backends[:i]:
            space = uri_namespace(later.prefix)
            if later.prefix != earlier.prefix and space and space == uri_namespace(earlier.prefix):
                raise ConfigError(
                    f"$.{key}.{later.name}.prefix: {later.prefix!r} gives resource URIs the namespace {space!r}, "
                    f"as {earlier.prefix!r} of {earlier.name!r} does; give one of them another prefix"
                )
            if later.prefix == earlier.prefix and same_server(later, earlier):
                twice = ["every name (one server, entered twice under one prefix)"]
                raise ConfigError(f"$.{key}.{later.name}: {clash_line(earlier.name, later.name, twice)}")


def clash_line(first: str, second: str, what: Sequence[str]) -> str:
    """The one line that says two backends offer the same names, at start, at `--check` and at reload."""
    shown = ", ".join(what[:5]) + (f" and {len(what) - 5} more" if len(what) > 5 else "")
    return (
        f"servers {first!r} and {second!r} both offer {shown}; "
        f'give one of them a prefix of its own ("prefix" in its entry; "" means none)'
    )


def expand(value: Any, path: str) -> Any:
    """`${VAR}` in every string of a JSON value, from the environment."""
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name, default = match[1], match[2]
            if name not in os.environ and default is None:
                raise ConfigError(f"{path}: environment variable {name} is not set")
            return os.environ.get(name, default or "")

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


def duration(value: Any, path: str) -> float:
    """`"30s"`, `"500ms"`, `"2m"`, or a bare number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:  # JSON has 1e400
        return float(value)
    match = DURATION.match(value) if isinstance(value, str) else None
    if match is None or float(match[1]) <= 0:
        raise ConfigError(f'{path}: expected a duration such as 30, "30s", "500ms" or "2m"')
    return float(match[1]) * UNITS[match[2]]


def parse_restart(value: Any, path: str) -> Restart:
    if value is None:
        return Restart()
    if isinstance(value, bool):
        return Restart(enabled=value)
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected true, false or an object")
    tries = value.get("max", Restart.max)
    if not isinstance(tries, int) or tries < 0:
        raise ConfigError(f"{path}.max: expected a whole number")
    delay = duration(value["delay"], f"{path}.delay") if "delay" in value else Restart.delay
    cap = duration(value["maxDelay"], f"{path}.maxDelay") if "maxDelay" in value else Restart.max_delay
    return Restart(enabled=bool(value.get("enabled", True)), max=tries, delay=delay, max_delay=cap)


def option(entry: dict[str, Any], options: dict[str, Any], key: str, default: Any = None) -> Any:
    """A per-server setting, at the top of the entry (Claude style) or under `options` (TBXark style)."""
    return entry.get(key, options.get(key, default))


def parse_backend(name: str, entry: Any, path: str) -> Backend | None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: expected an object")
    if not NAME.match(name):
        raise ConfigError(f"{path}: server names use letters, digits, '.', '_' and '-' (at most 64)")
    options = entry.get("options") or {}  # TBXark keeps per-server options here
    if entry.get("disabled") or options.get("disabled") or entry.get("enabled") is False:
        return None
    kind = entry.get("type") or entry.get("transportType") or entry.get("transport")
    if kind in ("sse",):
        raise ConfigError(f'{path}.type: SSE backends are not supported; use streamable HTTP (type "http")')
    if kind not in (None, "stdio", "http", "streamable-http", "streamableHttp", "streamable_http"):
        raise ConfigError(f"{path}.type: expected stdio or http")
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
    if not isinstance(prefix, str) or not re.fullmatch(r"[A-Za-z0-9._-]*", prefix):
        raise ConfigError(f"{path}.prefix: expected letters, digits, '.', '_' or '-' (or \"\" for none)")
    tool_timeouts = option(entry, options, "toolTimeouts") or {}
    if not isinstance(tool_timeouts, dict):
        raise ConfigError(f"{path}.toolTimeouts: expected an object of tool name to duration")
    pinning = option(entry, options, "pinning", "block")
    if pinning not in ("block", "warn", "off"):
        raise ConfigError(f"{path}.pinning: expected block, warn or off")
    new_tools = option(entry, options, "newTools", "approve")
    if new_tools not in ("approve", "trust"):
        raise ConfigError(f"{path}.newTools: expected approve or trust")
    protocol = option(entry, options, "protocolVersion", "auto")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{path}.protocolVersion: expected auto, 2025-11-25 or 2026-07-28")
    cwd = entry.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise ConfigError(f"{path}.cwd: expected a string")
    oauth = parse_oauth(entry.get("oauth"), f"{path}.oauth") if "oauth" in entry else None
    if oauth is not None and url is None:
        raise ConfigError(f"{path}.oauth: only an HTTP backend (url) takes OAuth credentials")
    forward_authorization = bool(option(entry, options, "forwardAuthorization", False)) and url is not None
    if oauth is not None and forward_authorization:
        raise ConfigError(f"{path}: oauth (the proxy's own token) excludes forwardAuthorization (the caller's)")
    return Backend(
        name=name,
        command=command,
        args=tuple(args),
        env=strings(entry.get("env"), f"{path}.env"),
        url=url,
        headers=strings(entry.get("headers"), f"{path}.headers"),
        cwd=cwd,
        prefix=prefix,
        allow=frozenset(listed) if tool_filter and mode == "allow" else None,
        block=frozenset(listed) if mode == "block" else frozenset(),
        timeout=duration(option(entry, options, "timeout", 60), f"{path}.timeout"),
        max_duration=duration(option(entry, options, "maxDuration", 600), f"{path}.maxDuration"),
        tool_timeouts=tuple(
            (tool, duration(value, f"{path}.toolTimeouts.{tool}")) for tool, value in sorted(tool_timeouts.items())
        ),
        restart=parse_restart(option(entry, options, "restart"), f"{path}.restart"),
        required=bool(option(entry, options, "required", False)),
        pinning=pinning,
        new_tools=new_tools,
        forward_authorization=forward_authorization,
        protocol=protocol,
        oauth=oauth,
    )


def parse_oauth(value: Any, path: str) -> ClientCredentials:
    """`{"clientId": "...", "clientSecret": "${SECRET}", "issuer": "https://...", "scope": "mcp:read"}`."""
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected an object with clientId, clientSecret and issuer")
    client_id, secret, scope = value.get("clientId"), value.get("clientSecret"), value.get("scope")
    issuer = value.get("issuer")
    if not isinstance(issuer, str) or not issuer.startswith(("https://", "http://")):
        raise ConfigError(f"{path}.issuer: expected the authorization server's URL (the only place the secret goes)")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigError(f"{path}.clientId: expected a string")
    if not isinstance(secret, str):  # empty is allowed here (`${VAR:-}`): the backend then says it has none
        raise ConfigError(f"{path}.clientSecret: expected a string (usually ${{VAR}}, from the environment)")
    if scope is not None and not isinstance(scope, str):
        raise ConfigError(f"{path}.scope: expected a space-separated string")
    return ClientCredentials(client_id, secret, issuer, scope)


def parse_tokens(value: Any, path: str, servers: set[str]) -> tuple[tuple[str, frozenset[str] | None], ...]:
    """`"token"` opens every backend; `{"token": "...", "servers": ["a"]}` opens only those listed."""
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of tokens")
    tokens: list[tuple[str, frozenset[str] | None]] = []
    for i, item in enumerate(value):
        if isinstance(item, str) and item:
            tokens.append((item, None))
            continue
        token = item.get("token") if isinstance(item, dict) else None
        scope = item.get("servers") if isinstance(item, dict) else None
        if not isinstance(token, str) or not token or not isinstance(scope, list):
            raise ConfigError(f"{path}[{i}]: expected a token, or an object with token and servers")
        unknown = sorted(set(scope) - servers)
        if unknown:
            raise ConfigError(f"{path}[{i}].servers: no server named {unknown[0]!r}")
        tokens.append((token, frozenset(scope)))
    return tuple(tokens)


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
    backends = []
    for name, entry in entries.items():
        path = f"$.{key}.{name}"
        backend = parse_backend(name, expand(entry, path), path)
        if backend is not None:
            backends.append(backend)
    check_namespaces(backends, key)
    tokens = parse_tokens(proxy_options.get("authTokens") or [], "$.mcpProxy.options.authTokens", set(entries))
    pins_file = proxy_options.get("pinsFile")
    if pins_file is not None and not isinstance(pins_file, str):
        raise ConfigError("$.mcpProxy.options.pinsFile: expected a path")
    about = data.get("mcpProxy") or {}
    for attribute in ("name", "version"):
        if attribute in about and not (isinstance(about[attribute], str) and about[attribute]):
            raise ConfigError(f"$.mcpProxy.{attribute}: expected a non-empty string")
    return ProxyConfig(tuple(backends), tokens, pins_file, about.get("name", "mcp-proxy"), about.get("version"))


def load_config(path: Path) -> ProxyConfig:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    return parse_config(data)

"""The command line every workshop module speaks.

Each module's `server.py` calls `parse_config()` with its own default port, so
`-t http --addr :8081` means the same thing in all five lessons. Every flag has
an environment variable twin (flags win), which is how MCP clients that launch
a server over stdio usually configure it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NoReturn

Transport = Literal["stdio", "http"]
LogFormat = Literal["console", "json"]

TRANSPORTS: tuple[Transport, ...] = ("stdio", "http")
LOG_FORMATS: tuple[LogFormat, ...] = ("console", "json")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRACE_SECONDS = 10

# Environment twins of the common flags.
ENV_TRANSPORT = "MCP_TRANSPORT"
ENV_ADDR = "MCP_ADDR"
ENV_LOG_LEVEL = "MCP_LOG_LEVEL"
ENV_LOG_FORMAT = "MCP_LOG_FORMAT"
ENV_GRACE = "MCP_SHUTDOWN_GRACE"
ENV_ALLOWED_HOSTS = "MCP_ALLOWED_HOSTS"
ENV_TRUSTED_PROXIES = "MCP_TRUSTED_PROXIES"
ENV_MAX_SESSIONS = "MCP_MAX_SESSIONS"
DEFAULT_MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class Address:
    """A host and port to listen on; port 0 asks the OS for a free one."""

    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @property
    def host_literal(self) -> str:
        """The host as written in a URL or Host header: IPv6 in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def __str__(self) -> str:
        return f"{self.host_literal}:{self.port}"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the shared runner needs to start a module's server."""

    transport: Transport = "stdio"
    addr: Address = Address(DEFAULT_HOST, 8000)
    log_level: str = "info"
    log_format: LogFormat | None = None  # None: console on a terminal, JSON otherwise
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    allowed_hosts: tuple[str, ...] = field(default=())
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed; none by default.
    trusted_proxies: tuple[str, ...] = field(default=())
    max_sessions: int = DEFAULT_MAX_SESSIONS  # open 2025-11-25 sessions; one address may hold a tenth


class ConfigError(ValueError):
    """A flag or environment variable has a value the server cannot use."""


def parse_addr(value: str, default_port: int) -> Address:
    """Parse `HOST:PORT`, `:PORT`, `PORT`, `HOST` or `[IPv6]:PORT`.

    An empty host means loopback, never "all interfaces": exposing a server is
    a decision the user spells out (`--addr 0.0.0.0:8081`). A bare number is a
    port, since no one names a host `8085`.
    """
    text = value.strip()
    if text.isdigit():
        text = f":{text}"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"invalid address {value!r}: expected [IPv6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"invalid address {value!r}: {host!r} is not an IPv6 address") from None
        port_text = rest[1:]
    elif text.count(":") > 1:
        raise ConfigError(f"invalid address {value!r}: write IPv6 hosts in brackets, e.g. [::1]:{default_port}")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    host = host or DEFAULT_HOST
    if not port_text:
        return Address(host, default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"invalid address {value!r}: port must be a number from 0 to 65535")
    return Address(host, int(port_text))


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors fit on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (try --help)\n")


def build_parser(
    description: str | None, default_port: int, prog: str | None = None, *, http_only: bool = False
) -> argparse.ArgumentParser:
    """The common flags; a module may add its own before calling `parse_config`.

    `http_only` is for a server that is not an MCP server (03's authorization
    server): it has no stdio to offer, so `--help` does not list `-t`, and
    `-t stdio` is refused rather than ignored (`-t http` still works, so one
    command line starts every server of the workshop).
    """
    parser = _Parser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every flag can also be set by the environment variable named in its help; a flag beats its variable.",
    )
    env = os.environ.get
    parser.add_argument(
        "-t",
        "--transport",
        choices=("http",) if http_only else None,
        default="http" if http_only else env(ENV_TRANSPORT, "stdio"),
        help=argparse.SUPPRESS if http_only else f"stdio or http (default: stdio; env {ENV_TRANSPORT})",
    )
    parser.add_argument(
        "--addr",
        default=env(ENV_ADDR, f":{default_port}"),
        help=f"HOST:PORT to listen on over http; ':PORT' or 'PORT' means 127.0.0.1 "
        f"(default: 127.0.0.1:{default_port}; env {ENV_ADDR})",
    )
    parser.add_argument(
        "--log-level",
        default=env(ENV_LOG_LEVEL, "info"),
        help=f"{', '.join(LOG_LEVELS)} (default: info; env {ENV_LOG_LEVEL})",
    )
    parser.add_argument(
        "--log-format",
        default=env(ENV_LOG_FORMAT),
        help=f"console or json (default: console on a terminal, json otherwise; env {ENV_LOG_FORMAT})",
    )
    parser.add_argument(
        "--shutdown-grace",
        default=env(ENV_GRACE, str(DEFAULT_GRACE_SECONDS)),
        metavar="SECONDS",
        help=f"how long in-flight requests may finish after Ctrl-C or SIGTERM (default: 10; env {ENV_GRACE})",
    )
    parser.add_argument(
        "--allowed-hosts",
        default=env(ENV_ALLOWED_HOSTS, ""),
        metavar="HOST[,HOST...]",
        help=f"extra Host header values to accept over http, e.g. mcp.example.com:* (env {ENV_ALLOWED_HOSTS})",
    )
    parser.add_argument(
        "--trusted-proxies",
        default=env(ENV_TRUSTED_PROXIES, ""),
        metavar="ADDR[,ADDR...]",
        help="addresses or networks of reverse proxies whose X-Forwarded-For is believed "
        f"(default: none, the peer's own address counts; env {ENV_TRUSTED_PROXIES})",
    )
    parser.add_argument(
        "--max-sessions",
        default=env(ENV_MAX_SESSIONS, str(DEFAULT_MAX_SESSIONS)),
        metavar="N",
        help=f"open 2025-11-25 sessions at most, a tenth of them per client address "
        f"(default: {DEFAULT_MAX_SESSIONS}; env {ENV_MAX_SESSIONS})",
    )
    return parser


def config_from_args(args: argparse.Namespace, default_port: int) -> ServerConfig:
    """Validate the common flags, whichever came from argv and which from the environment."""
    transport = str(args.transport).lower()
    if transport not in TRANSPORTS:
        raise ConfigError(f"invalid transport {args.transport!r}: expected stdio or http")
    level = str(args.log_level).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"invalid log level {args.log_level!r}: expected one of {', '.join(LOG_LEVELS)}")
    log_format = str(args.log_format).lower() if args.log_format else None
    if log_format is not None and log_format not in LOG_FORMATS:
        raise ConfigError(f"invalid log format {args.log_format!r}: expected console or json")
    grace_text = str(args.shutdown_grace).strip()
    if not grace_text.isdigit():
        raise ConfigError(f"invalid shutdown grace {args.shutdown_grace!r}: expected a whole number of seconds")
    grace = int(grace_text)
    sessions_text = str(args.max_sessions).strip()
    if not sessions_text.isdigit() or int(sessions_text) < 1:
        raise ConfigError(f"invalid max sessions {args.max_sessions!r}: expected a whole number from 1")
    hosts = tuple(h.strip() for h in str(args.allowed_hosts).split(",") if h.strip())
    proxies = tuple(p.strip() for p in str(args.trusted_proxies).split(",") if p.strip())
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ConfigError(f"invalid trusted proxy {proxy!r}: expected an IP address or network") from None
    return ServerConfig(
        transport=transport,
        addr=parse_addr(str(args.addr), default_port),
        log_level=level,
        log_format=log_format,
        grace_seconds=grace,
        allowed_hosts=hosts,
        trusted_proxies=proxies,
        max_sessions=int(sessions_text),
    )


def parse_config(
    argv: Sequence[str] | None = None,
    *,
    default_port: int,
    description: str | None = None,
    parser: argparse.ArgumentParser | None = None,
) -> tuple[ServerConfig, argparse.Namespace]:
    """Parse the command line into the common `ServerConfig` plus the raw namespace.

    The namespace carries any module-specific flags added to `parser`. A bad
    value exits with status 2 and one line on stderr, as argparse does for a
    bad flag.
    """
    parser = parser or build_parser(description, default_port)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return config_from_args(args, default_port), args
    except ConfigError as exc:
        parser.error(str(exc))

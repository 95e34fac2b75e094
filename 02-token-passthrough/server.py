"""02-token-passthrough: carry the caller's token to the tools that need it, and see why passing it on is dangerous.

.venv/bin/python 02-token-passthrough/server.py -t http                     # safe mode, http://127.0.0.1:8082/mcp
API_KEY=<token> .venv/bin/python 02-token-passthrough/server.py             # stdio: the token comes from the env
.venv/bin/python 02-token-passthrough/server.py -t http --mode passthrough  # the anti-pattern, on purpose
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import structlog
from demo_tokens import MCP_AUDIENCE, UPSTREAM_AUDIENCE, InvalidToken, mint, using_demo_key, verify
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from shared import (
    EMBEDDED_ANYTHING,
    Caller,
    Rejected,
    Secret,
    UpstreamReply,
    add_numbers,
    build_parser,
    build_upstream_app,
    caller_token,
    configure_logging,
    echo_message,
    log_requests,
    parse_config,
    project_version,
    refuse_unknown_tools,
    send_message,
    serve,
)

DEFAULT_PORT = 8082
SERVER_IDENTITY = "token-passthrough-server"  # who this server is, to the upstream, in safe mode
HOW_TO_AUTHENTICATE = (
    "No token: send the header 'Authorization: Bearer <token>' over HTTP, or set API_KEY when starting the "
    "server over stdio. Make one with: .venv/bin/python 02-token-passthrough/demo_tokens.py alice"
)

log = structlog.get_logger("token-passthrough")

Mode = Literal["safe", "passthrough"]


@dataclass
class Settings:
    mode: Mode = "safe"
    upstream_url: str = EMBEDDED_ANYTHING
    # Safe mode's own credential for the upstream; never the caller's.
    upstream_token: Secret | None = None


settings = Settings()


async def verify_upstream_token(token: str) -> Caller:
    """How the embedded upstream checks tokens: only those issued for it."""
    try:
        claims = verify(token, UPSTREAM_AUDIENCE)
    except InvalidToken as exc:
        raise Rejected(str(exc)) from None
    return Caller(claims.subject, claims.client_id)


upstream_app = build_upstream_app(verify_upstream_token)

mcp = MCPServer(
    "token-passthrough",
    version=project_version(),
    instructions="Shows the caller's token as a masked hint, and calls an upstream API on the caller's behalf.",
    middleware=[log_requests],
)
refuse_unknown_tools(mcp)
mcp.add_tool(echo_message)
mcp.add_tool(add_numbers)


def callers_token() -> Secret:
    """The token of *this* request: set per HTTP request by the transport, or from API_KEY on stdio."""
    token = caller_token.get()
    if token is None:
        raise ToolError(HOW_TO_AUTHENTICATE)
    return token


def check_token_is_for_us(token: Secret) -> str:
    """Safe mode accepts only tokens issued for this MCP server; returns who the token speaks for."""
    try:
        claims = verify(token.reveal(), MCP_AUDIENCE)
    except InvalidToken as exc:
        raise ToolError(f"Token refused: {exc}. This server accepts only tokens issued for {MCP_AUDIENCE!r}.") from None
    return f"{claims.subject} (client {claims.client_id})"


@mcp.tool()
def show_auth_token() -> str:
    """Show a masked hint of the caller's token (its length and fingerprint), never the token itself."""
    # lab 02-fingerprint: begin, starter: return "not written yet"
    # A sync tool runs on a worker thread; the contextvar still holds this request's token.
    token = callers_token()
    hint = f"Bearer token of {len(token)} characters, fingerprint {token.fingerprint()}"
    if settings.mode == "passthrough":
        return f"{hint}. Not checked: passthrough mode accepts any token."
    return f"{hint}. Valid for this server: {check_token_is_for_us(token)}."
    # lab 02-fingerprint: end


@mcp.tool()
async def make_authenticated_request(message: str) -> UpstreamReply:
    """Send a message to the upstream API on the caller's behalf and report what the upstream saw."""
    token = callers_token()
    if settings.mode == "passthrough":
        # ANTI-PATTERN, kept on purpose for the lesson. The MCP spec forbids it: the
        # caller's token goes to a service it was not issued for, that service cannot
        # tell this server from the caller, and a token stolen for the upstream can be
        # replayed through this tool. Run with --mode safe (the default) to see the fix.
        credential = token
    else:
        # lab 02-replay: begin, starter: credential = token
        check_token_is_for_us(token)
        credential = own_upstream_credential()
        # lab 02-replay: end
    return await send_message(settings.upstream_url, upstream_app, credential, message, settings.mode)


def own_upstream_credential() -> Secret:
    """This server's own credential for the upstream: configured, or minted for the embedded upstream."""
    if settings.upstream_token is not None:
        return settings.upstream_token
    # The embedded upstream trusts the demo issuer, so the server mints itself a short-lived token.
    return Secret(mint(SERVER_IDENTITY, UPSTREAM_AUDIENCE, client_id=SERVER_IDENTITY, ttl_seconds=300))


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(__doc__, DEFAULT_PORT)
    parser.add_argument(
        "--mode",
        choices=["safe", "passthrough"],
        default=os.environ.get("TOKEN_MODE", "safe"),
        help="safe: accept only tokens issued for this server, call the upstream with the server's own "
        "credential; passthrough: forward the caller's token (the anti-pattern) (default: safe; env TOKEN_MODE)",
    )
    parser.add_argument(
        "--upstream-url",
        default=os.environ.get("UPSTREAM_URL"),
        help="the upstream API to call, e.g. https://httpbin.org/anything "
        "(default: the embedded one; env UPSTREAM_URL)",
    )
    config, args = parse_config(argv, default_port=DEFAULT_PORT, parser=parser)
    configure_logging(config.log_level, config.log_format)
    if config.transport == "http" and not config.addr.is_loopback and using_demo_key():
        parser.error("the demo signing key is public: set TOKEN_SIGNING_KEY before listening beyond loopback")
    settings.mode = args.mode
    settings.upstream_url = args.upstream_url or EMBEDDED_ANYTHING
    if upstream_token := os.environ.get("UPSTREAM_TOKEN"):
        settings.upstream_token = Secret(upstream_token)
    elif settings.mode == "safe" and settings.upstream_url != EMBEDDED_ANYTHING:
        parser.error("safe mode calls a real upstream with this server's own credential: set UPSTREAM_TOKEN")
    if settings.mode == "passthrough":
        log.warning(
            "PASSTHROUGH MODE: this server forwards each caller's token to the upstream API. The MCP specification "
            "forbids this; it is on here only to demonstrate why. Do not expose this server."
        )
    if config.transport == "stdio" and (api_key := os.environ.get("API_KEY")):
        # stdio has no headers: the one caller of this process brings its token in the environment.
        caller_token.set(Secret(api_key))
    serve(mcp, config)


if __name__ == "__main__":
    main()

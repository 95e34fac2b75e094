"""03-oauth-mcp: the stand-in for the identity provider a real deployment already has. Read it last.

    .venv/bin/python 03-oauth-mcp/authorization_server.py      # http://127.0.0.1:9000, prints the demo login

A real MCP server does not issue tokens: your organisation's identity
provider does (Keycloak, Entra ID, Okta, Auth0, ...), and the MCP server only
checks them (server.py, resource_auth.py). This OAuth 2.1 authorization
server runs on your laptop with no account anywhere, so that the whole flow
can be watched and tested: a person signs in and consents in the browser
(authorization code with PKCE), or a machine authenticates as itself (client
credentials). Access tokens are JWTs signed with a key published at /jwks,
for exactly one resource.

This file is its command line; the server itself is in identity_provider/:
endpoints.py (what clients call), sign_in.py (the page a person sees),
oauth_core.py (authlib, tightened for MCP), oauth_store.py (memory or
Redis), client_metadata.py (clients known by URL), checks.py (what every
request is checked for first) and machine_secret.py.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Sequence

import redis
from identity_provider.endpoints import AuthorizationServerApp
from identity_provider.machine_secret import secret_left_for_clients
from identity_provider.oauth_core import TOKEN_EXCHANGE
from identity_provider.oauth_store import Client, open_store

from shared import (
    EMBEDDED_URL,
    bound_address,
    build_parser,
    config_from_args,
    configure_logging,
    cors,
    listen,
    run_uvicorn,
    transport_security,
)

DEFAULT_PORT = 9000
DEFAULT_RESOURCE = "http://127.0.0.1:8083/mcp"
DEMO_USER = "demo"
MACHINE_CLIENT_ID = "workshop-machine"
MCP_SERVER_CLIENT_ID = "workshop-mcp-server"  # the MCP server itself, when it exchanges tokens
SECRET_BASIC = "client_secret_basic"  # noqa: S105 - a method name: the two clients below send secrets by Basic


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser(__doc__, DEFAULT_PORT, http_only=True)
    parser.add_argument(
        "--allow-loopback-client-metadata",
        action="store_true",
        help="development only: accept client metadata documents served over plain HTTP on this machine",
    )
    parser.add_argument(
        "--registrations-per-minute",
        type=int,
        default=20,
        help="dynamic client registrations allowed from one address per minute (default: 20)",
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("OAUTH_STORE", "memory:"),
        help="where to keep clients, codes, refresh tokens and keys: memory: or redis://HOST:PORT/DB "
        "(default: memory:; env OAUTH_STORE)",
    )
    parser.add_argument(
        "--rotate-keys-every",
        type=float,
        default=float(os.environ.get("KEY_ROTATION_SECONDS", 24 * 3600)),
        metavar="SECONDS",
        help="how often to start signing with a new key (default: a day; env KEY_ROTATION_SECONDS)",
    )
    parser.add_argument(
        "--upstream-resource",
        default=EMBEDDED_URL,
        help=f"the API behind the MCP server, which it may get tokens for by exchange (default: {EMBEDDED_URL})",
    )
    parser.add_argument(
        "--resource",
        action="append",
        default=None,
        help=f"the MCP server URL tokens may be issued for; repeat for several (default: {DEFAULT_RESOURCE})",
    )
    args = parser.parse_args(argv)
    config = config_from_args(args, DEFAULT_PORT)
    configure_logging(config.log_level, config.log_format)
    sock = listen(config.addr)
    issuer = f"http://{bound_address(sock, config)}"  # no trailing slash: clients compare it byte for byte
    os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain HTTP is only acceptable on loopback
    password = os.environ.get("DEMO_PASSWORD") or secrets.token_urlsafe(9)
    mcp_servers = args.resource or [DEFAULT_RESOURCE]
    resources = [*mcp_servers, args.upstream_resource, f"{issuer}/admin"]
    try:
        store = open_store(args.store)
    except (ValueError, OSError, redis.RedisError) as exc:
        parser.error(f"cannot use the store {args.store!r}: {exc}")
    server = AuthorizationServerApp(
        issuer,
        resources,
        {DEMO_USER: password},
        store,
        args.allow_loopback_client_metadata,
        args.registrations_per_minute,
    )
    machine_secret = os.environ.get("MACHINE_CLIENT_SECRET") or secrets.token_urlsafe(24)
    machine = Client(
        client_id=MACHINE_CLIENT_ID,
        client_name="workshop machine client",
        redirect_uris=[],
        grant_types=["client_credentials"],
        token_endpoint_auth_method=SECRET_BASIC,
        scope="mcp:read",
        client_secret=machine_secret,
    )
    server.store.save_client(machine)
    # The MCP server's own client: it may exchange the tokens issued for it (and only those) for upstream tokens.
    if mcp_server_secret := os.environ.get("MCP_SERVER_CLIENT_SECRET"):
        mcp_server = Client(
            client_id=MCP_SERVER_CLIENT_ID,
            client_name="the workshop MCP server",
            redirect_uris=[],
            grant_types=[TOKEN_EXCHANGE],
            token_endpoint_auth_method=SECRET_BASIC,
            scope="mcp:read",
            client_secret=mcp_server_secret,
            audiences=list(mcp_servers),
        )
        server.store.save_client(mcp_server)
    # Browser clients (MCP Inspector's web UI) call the metadata, registration and token endpoints themselves.
    browser_access = cors(transport_security(config))
    with secret_left_for_clients(issuer, machine_secret) as secret_path:
        # Printed, not logged: these are the demo's credentials, for you to type, and logs mask secrets.
        print(
            f"authorization server {issuer}\n  demo login: {DEMO_USER} / {password}\n"
            f"  machine client: {MACHINE_CLIENT_ID} / {machine_secret}\n"
            f"    while this server runs, the secret is also in {secret_path} (mode 0600),"
            " where client.py --client-credentials finds it",
            file=sys.stderr,
            flush=True,
        )
        run_uvicorn(server.app(args.rotate_keys_every, [browser_access]), sock, config, issuer)


if __name__ == "__main__":
    main()

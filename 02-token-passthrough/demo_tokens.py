"""Demo tokens for module 02: signed JWTs that say whom they are for.

The workshop has no authorization server until module 03, so this file plays
a tiny one. A token is a JWT signed with an HMAC key; its `aud` (audience)
claim names the one service that may accept it: the MCP server, or the
upstream API. That one claim is what the lesson turns on.

Make a token from the command line:

    .venv/bin/python 02-token-passthrough/demo_tokens.py alice                       # for the MCP server
    .venv/bin/python 02-token-passthrough/demo_tokens.py alice --audience upstream   # for the upstream API
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey

ISSUER = "mcp-workshop-demo-issuer"
MCP_AUDIENCE = "mcp-workshop-02"
UPSTREAM_AUDIENCE = "workshop-upstream"
AUDIENCES = {"mcp": MCP_AUDIENCE, "upstream": UPSTREAM_AUDIENCE}
# Public on purpose, so the demo works with no setup. The server refuses to listen
# beyond loopback with it; set TOKEN_SIGNING_KEY to a secret of your own for that.
DEMO_SIGNING_KEY = "mcp-workshop-demo-signing-key-public-do-not-use-for-real"
ENV_SIGNING_KEY = "TOKEN_SIGNING_KEY"
ALGORITHMS = ["HS256"]  # pinned: never let a token choose its own algorithm


@dataclass(frozen=True)
class Claims:
    subject: str
    client_id: str
    audience: str


class InvalidToken(Exception):
    """Why a token was refused. The message never contains the token itself."""


def signing_key() -> OctKey:
    return OctKey.import_key(os.environ.get(ENV_SIGNING_KEY, DEMO_SIGNING_KEY).encode())


def using_demo_key() -> bool:
    return os.environ.get(ENV_SIGNING_KEY, DEMO_SIGNING_KEY) == DEMO_SIGNING_KEY


def mint(subject: str, audience: str, client_id: str = "demo-client", ttl_seconds: int = 3600) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "aud": audience,
        "client_id": client_id,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    return jwt.encode({"alg": "HS256", "typ": "JWT"}, claims, signing_key())


def verify(token: str, audience: str) -> Claims:
    """Check signature, issuer, expiry and audience; return who the token speaks for."""
    try:
        claims = jwt.decode(token, signing_key(), algorithms=ALGORITHMS).claims
    except (JoseError, ValueError):
        raise InvalidToken("not a token signed by the workshop's demo issuer") from None
    if claims.get("iss") != ISSUER:
        raise InvalidToken("issued by someone else")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        raise InvalidToken("expired")
    if claims.get("aud") != audience:
        raise InvalidToken(f"issued for {claims.get('aud')!r}, not for {audience!r}")
    return Claims(subject=str(claims.get("sub")), client_id=str(claims.get("client_id")), audience=audience)


def main() -> None:
    parser = argparse.ArgumentParser(description="Print a demo token for module 02.")
    parser.add_argument("subject", help="who the token speaks for, e.g. alice")
    parser.add_argument("--audience", choices=sorted(AUDIENCES), default="mcp", help="which service may accept it")
    parser.add_argument("--client-id", default="demo-client", help="the app the user signed in with")
    parser.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    args = parser.parse_args()
    print(mint(args.subject, AUDIENCES[args.audience], args.client_id, args.ttl))


if __name__ == "__main__":
    main()

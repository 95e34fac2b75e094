"""02-token-passthrough driven by the official MCP Inspector CLI: a header over HTTP, an env var over stdio."""

from __future__ import annotations

import sys

from shared import Secret
from tests.harness import REPO, ServerProcess, inspector_cli, load_sibling, remember_secret

FOLDER = "02-token-passthrough"
demo_tokens = load_sibling(FOLDER, "demo_tokens")


def hint(token: str, subject: str) -> str:
    return (
        f"Bearer token of {len(token)} characters, fingerprint {Secret(token).fingerprint()}. "
        f"Valid for this server: {subject} (client demo-client)."
    )


def test_inspector_sends_the_token_as_a_header_over_http() -> None:
    alice = remember_secret(demo_tokens.mint("alice", demo_tokens.MCP_AUDIENCE))
    with ServerProcess(FOLDER) as proc:
        result = inspector_cli(
            proc.url,
            "--header",
            f"Authorization: Bearer {alice}",
            "--method",
            "tools/call",
            "--tool-name",
            "show_auth_token",
        )
    assert result["content"][0]["text"] == hint(alice, "alice")


def test_inspector_passes_api_key_to_a_stdio_server() -> None:
    bob = remember_secret(demo_tokens.mint("bob", demo_tokens.MCP_AUDIENCE))
    result = inspector_cli(
        "-e",
        f"API_KEY={bob}",
        sys.executable,
        str(REPO / FOLDER / "server.py"),
        "--method",
        "tools/call",
        "--tool-name",
        "show_auth_token",
    )
    assert result["content"][0]["text"] == hint(bob, "bob")

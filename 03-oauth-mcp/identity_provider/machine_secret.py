"""Where the authorization server leaves the machine client's secret for the clients on this machine.

The secret is new at every start (unless `MACHINE_CLIENT_SECRET` is set), and
a client-credentials example would otherwise need it pasted from a banner far
up the terminal. The file holds the secret and nothing else, mode 0600 from its
first byte in a 0700 folder the user owns, beside the tokens `client.py` keeps.
It is named after the issuer's host and port, so a client offers it only to the
authorization server that wrote it, and it is removed when that server stops.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

TOKEN_DIR = Path(os.environ.get("MCP_WORKSHOP_TOKEN_DIR", Path.home() / ".mcp-workshop" / "oauth"))


def secret_file(issuer: str) -> Path:
    """`machine-secret-127.0.0.1:9000` for the issuer `http://127.0.0.1:9000`."""
    return TOKEN_DIR / f"machine-secret-{urlsplit(issuer).netloc}"


@contextlib.contextmanager
def secret_left_for_clients(issuer: str, secret: str) -> Iterator[Path]:
    """Write the secret to its file for as long as the block runs (the server serves); yields the path."""
    path = secret_file(issuer)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # mkstemp creates the file 0600; the rename then replaces whatever a crashed run left, whatever its mode.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".machine-secret-")
    with os.fdopen(fd, "w") as file:
        file.write(secret + "\n")
    os.replace(temporary, path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def read_secret(issuer: str) -> str | None:
    """The secret the authorization server at `issuer` left, if it is running and did."""
    try:
        return secret_file(issuer).read_text().strip() or None
    except OSError:
        return None

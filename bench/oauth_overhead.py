"""What does OAuth cost per call? 03's MCP server with a valid token against 01 without auth.

    .venv/bin/python -m bench.oauth_overhead [--rounds 5] [--seconds 3] [--concurrency 8]

The MCP server checks each JWT itself with the authorization server's cached
keys, so after warm-up an MCP request should cost the authorization server
nothing: the benchmark counts the requests it receives while the rounds run.
Goal: at least 85 % of 01's throughput, and zero such requests.
"""

from __future__ import annotations

import tempfile

import httpx2

from bench.common import Contender, arguments, free_port, race, report, start, stop

GOAL = 0.85
MACHINE_SECRET = "bench-machine-secret"  # noqa: S105 - a throwaway demo credential


def requests_seen(log_path: str) -> int:
    """How many HTTP requests the authorization server has logged so far (uvicorn's access lines)."""
    with open(log_path) as log:
        return sum('"GET /' in line or '"POST /' in line for line in log)


def main() -> None:
    args = arguments(__doc__ or "")

    env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", "MACHINE_CLIENT_SECRET": MACHINE_SECRET}
    mcp_port = free_port()
    resource = f"http://127.0.0.1:{mcp_port}/mcp"
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as as_log:
        issuer, as_process = start(
            "03-oauth-mcp",
            env,
            "--resource",
            resource,
            "--log-format",
            "json",
            script="authorization_server.py",
            stderr=as_log.fileno(),
        )
        _, rs_process = start("03-oauth-mcp", env, "--issuer", issuer, port=mcp_port)
        base_01, process_01 = start("01-basic-mcp", env)
        form = {"grant_type": "client_credentials", "resource": resource}
        token = httpx2.post(f"{issuer}/token", data=form, auth=("workshop-machine", MACHINE_SECRET)).json()
        plain = Contender("01 no auth", base_01 + "/mcp", process_01)
        guarded = Contender("03 OAuth", resource, rs_process, {"Authorization": f"Bearer {token['access_token']}"})
        try:
            race([plain, guarded], 1, 1.0, 2)  # warm-up: the MCP server fetches the keys once
            before = requests_seen(as_log.name)
            race([plain, guarded], args.rounds, args.seconds, args.concurrency)
            to_authorization_server = requests_seen(as_log.name) - before
        finally:
            stop(as_process, rs_process, process_01)
    plain.rates, plain.cpu_ms = plain.rates[1:], plain.cpu_ms[1:]  # leave the warm-up round out
    guarded.rates, guarded.cpu_ms = guarded.rates[1:], guarded.cpu_ms[1:]
    report(plain, guarded, GOAL)
    print(f"requests to the authorization server during the rounds: {to_authorization_server} (goal: 0)")


if __name__ == "__main__":
    main()

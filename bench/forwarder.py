"""A bare byte-forwarding proxy: the floor under what any Python proxy on this stack costs per call.

    .venv/bin/python -m bench.forwarder --backend http://127.0.0.1:8081 --addr 127.0.0.1:9099

uvicorn in front (httptools and uvloop, as every module is served), httpcore2
toward the backend (the connection pool under httpx2, which 05 uses too), and
nothing between: no JSON parsed, no log line, no span. Each request goes on
with its method, path, headers and body as they came, and the response comes
back as the backend streams it. It is the baseline of issue 18's goal: 05's
CPU per call at most 1.5 times this app's (bench/proxy_overhead.py).
"""

from __future__ import annotations

import argparse
import socket
from urllib.parse import urlsplit

import httpcore2
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Headers about one connection, not the message (RFC 9110, 7.6.1): each hop sets its own. httpcore2 writes
# the backend's Host itself when the request has none.
HOP_BY_HOP = frozenset(
    {b"host", b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
POOL_SIZE = 64  # connections kept open to the backend: more than the clients any bench run starts


def forwarder(backend: str) -> ASGIApp:
    """The ASGI app that sends every HTTP request on to `backend` (`http://host:port`), byte for byte."""
    pool = httpcore2.AsyncConnectionPool(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan to run: the pool's sockets end with the process
        body = bytearray()
        while True:
            message: Message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = b"?" + scope["query_string"] if scope["query_string"] else b""
        headers = [(name, value) for name, value in scope["headers"] if name not in HOP_BY_HOP]
        url = backend.encode() + scope["raw_path"] + query
        async with pool.stream(scope["method"], url, headers=headers, content=bytes(body)) as response:
            kept = [(name, value) for name, value in response.headers if name.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status, "headers": kept})
            async for chunk in response.aiter_stream():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", required=True, help="the server's base URL, e.g. http://127.0.0.1:8081")
    parser.add_argument("--addr", default="127.0.0.1:0", help="HOST:PORT to listen on (default: a free port)")
    args = parser.parse_args()
    host, _, port = args.addr.rpartition(":")
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as shared/serve.py does for every module
    sock.bind((host, int(port)))
    backend = urlsplit(args.backend)
    config = uvicorn.Config(
        forwarder(f"{backend.scheme}://{backend.netloc}"),
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()

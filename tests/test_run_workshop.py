"""`make run`: the whole stack starts, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading

import httpx2
import pytest

from scripts.run_workshop import STACK
from tests.harness import REPO, http_client, server_env
from tests.test_05_supervision import eventually

pytestmark = pytest.mark.anyio


def free_offset() -> int:
    """An offset that moves every default port onto a free one, so the test runs beside a real `make run`."""
    for offset in range(20000, 30000, 97):
        try:
            for module in STACK:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", module.port + offset))
        except OSError:
            continue
        return offset
    raise RuntimeError("no free ports")


async def test_make_run_serves_every_module_and_stops_on_ctrl_c() -> None:
    offset = free_offset()
    launcher = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "run_workshop.py"), "--port-offset", str(offset)],
        cwd=REPO,
        env=server_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order a terminal shows it
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    try:
        assert launcher.stdout
        stream = launcher.stdout

        def read() -> None:
            for line in stream:
                lines.put(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        banner: list[str] = []
        while not banner or "Press Ctrl-C" not in banner[-1]:
            banner.append(lines.get(timeout=60))
        text = "".join(banner[next(i for i, line in enumerate(banner) if "The MCP workshop is running" in line) :])
        # The banner comes last: the servers have said what they had to say at start-up.
        with pytest.raises(queue.Empty):
            while not lines.get(timeout=1.5).strip():  # the banner's own last blank line
                pass
        for module in STACK:
            url = module.moved(offset).url
            assert url in text
            assert httpx2.get(f"http://{module.moved(offset).address}/healthz").json() == {"status": "ok"}
        # It names the next step and what really runs, and the credentials it shows work.
        assert "Next: open 01-basic-mcp/README.md" in text
        assert "its own stdio copies of 01, 02 and 04, and the 03 above over HTTP" in text
        [secret] = [line.split("=", 1)[1].strip() for line in banner if "export MACHINE_CLIENT_SECRET=" in line]
        assert f"workshop-machine / {secret}" in text and "demo / " in text
        issuer = next(m for m in STACK if m.script == "authorization_server.py").moved(offset).url
        token = httpx2.post(
            f"{issuer}/token", data={"grant_type": "client_credentials"}, auth=("workshop-machine", secret)
        )
        assert token.status_code == 200
        async with http_client(STACK[0].moved(offset).url) as client:
            result = await client.call_tool("echo_message", {"message": "from make run"})
        assert result.content[0].text == "Echo: from make run"  # type: ignore[union-attr]
        # 03 behind the proxy, with a token the proxy got for itself from 03's authorization server.
        async with http_client(STACK[-1].moved(offset).url) as proxy:

            async def oauth_listed() -> bool:
                return "oauth__who_am_i" in [tool.name for tool in (await proxy.list_tools()).tools]

            await eventually(oauth_listed, within=20)
            who = (await proxy.call_tool("oauth__who_am_i", {})).structured_content
        assert who is not None and who["client_id"] == "workshop-machine"
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=30) == 0
    finally:
        if launcher.poll() is None:  # a failed assertion: stop the servers through the launcher, as Ctrl-C does
            launcher.send_signal(signal.SIGINT)
            try:
                launcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
        reader.join(timeout=10)  # every server has exited: the pipe is at its end
        if launcher.stdout and not reader.is_alive():
            launcher.stdout.close()

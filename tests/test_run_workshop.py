"""`make run`: the whole stack starts, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

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
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert launcher.stdout
        banner = []
        for line in launcher.stdout:
            banner.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(banner)
        for module in STACK:
            url = module.moved(offset).url
            assert url in text
            assert httpx2.get(f"http://{module.moved(offset).address}/healthz").json() == {"status": "ok"}
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
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        if launcher.stdout:
            launcher.stdout.close()

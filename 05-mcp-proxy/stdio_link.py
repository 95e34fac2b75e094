"""The link to a backend run as a subprocess: newline-delimited JSON-RPC on its stdin and stdout."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream
from calls import Call, LinkDown, Message, NotificationHandler
from link import MODERN, Link, encode, log

MAX_LINE = 16 * 1024 * 1024  # one JSON-RPC message over stdio
STDERR_TAIL = 2000  # characters of a dead backend's last words kept for /readyz


class StdioLink(Link):
    """A backend run as a subprocess: newline-delimited JSON-RPC on its stdin and stdout."""

    def __init__(self, name: str, process: Process, on_notification: NotificationHandler) -> None:
        super().__init__(name, on_notification)
        self.process = process
        self.pid = process.pid
        self.write_lock = anyio.Lock()
        self.stderr_tail = ""

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        name: str,
        command: str,
        args: tuple[str, ...],
        env: Mapping[str, str],
        cwd: str | None,
        on_notification: NotificationHandler,
        protocol: str = "auto",
    ) -> AsyncIterator[StdioLink]:
        # The backend gets a small base environment plus its own `env`: never the proxy's secrets.
        base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "TMPDIR") if key in os.environ}
        process = await anyio.open_process([command, *args], env={**base, **env}, cwd=cwd and Path(cwd))
        link = cls(name, process, on_notification)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(link.read_messages, tg)
                tg.start_soon(link.read_stderr)
                # Over stdio `auto` is the handshake: its session carries a backend's questions mid-call.
                if protocol == MODERN:
                    await link.discover(required=True)
                    tg.start_soon(link.subscribe)
                else:
                    await link.initialize()
                yield link
                tg.cancel_scope.cancel()
        finally:
            link.close(link.reason or "stopped")
            await link.stop()

    async def stop(self) -> None:
        """Close stdin, then ask, then insist: a backend gets 3 s to exit on its own, 2 more after SIGTERM."""
        with anyio.CancelScope(shield=True):
            with suppress(Exception):
                assert self.process.stdin is not None
                await self.process.stdin.aclose()
            for signal_next, patience in ((self.process.terminate, 3.0), (self.process.kill, 2.0)):
                with anyio.move_on_after(patience):
                    await self.process.wait()
                if self.process.returncode is not None:
                    break
                with suppress(ProcessLookupError):
                    signal_next()
            with suppress(Exception):
                await self.process.aclose()  # waits, and closes the pipes: no file descriptor is left behind

    def owner(self, call: Call | None) -> Call | None:
        """Over stdio nothing marks which call a message is about; with one call in flight, it is that one."""
        in_flight = [c for c in self.calls.values() if not c.background] if call is None else []
        return in_flight[0] if len(in_flight) == 1 else call

    async def deliver(self, message: Message, call: Call) -> None:
        await self.send(message, sent=False)

    async def notify(self, method: str, params: Mapping[str, Any] | None = None) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, **({"params": dict(params)} if params else {})})

    async def send(self, message: Message, *, sent: bool = True) -> None:
        data = encode(message) + b"\n"
        try:
            async with self.write_lock:
                assert self.process.stdin is not None
                await self.process.stdin.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self.close(self.exit_reason(exc))
            raise LinkDown(self.reason, sent=sent) from None

    async def read_messages(self, tg: TaskGroup) -> None:
        assert self.process.stdout is not None
        stream = BufferedByteReceiveStream(self.process.stdout)
        try:
            while True:
                line = await stream.receive_until(b"\n", MAX_LINE)
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("backend wrote a line that is not JSON-RPC", backend=self.name, bytes=len(line))
                    continue
                if isinstance(message, dict):
                    if "method" in message and "id" in message:
                        tg.start_soon(self.answer_request, message)  # may wait on a human: never block the reader
                    else:
                        await self.handle(message)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass
        except anyio.DelimiterNotFound:
            log.warning("backend wrote a line over the size limit", backend=self.name, limit=MAX_LINE)
        with anyio.move_on_after(1):
            await self.process.wait()
        self.close(self.exit_reason())

    async def answer_request(self, message: Message) -> None:
        answer = await self.handle(message)
        if answer is not None:
            with suppress(LinkDown):
                await self.send(answer)

    async def read_stderr(self) -> None:
        """Keep the tail of what the backend writes to stderr, for /readyz and the log."""
        stderr: ByteReceiveStream | None = self.process.stderr
        if stderr is None:
            return
        with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            async for chunk in stderr:
                self.stderr_tail = (self.stderr_tail + chunk.decode(errors="replace"))[-STDERR_TAIL:]

    def exit_reason(self, exc: BaseException | None = None) -> str:
        code = self.process.returncode
        if code is None:
            return f"the backend's pipe broke ({type(exc).__name__})" if exc else "the backend closed its stdout"
        if code < 0:
            return f"the backend process killed by signal {-code}"
        said = self.stderr_tail.strip().splitlines()[-1:]  # its last words: often the error that ended it
        return f"the backend process exited with status {code}" + (f": {said[0][:200]}" if said else "")

"""The labs: which module each one is cut from, which files it marks, how long it takes, and how it is checked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from labs import checks

Check = Callable[[Path], Awaitable[str]]
Attack = Callable[[Path, bool], Awaitable[list[str]]]


@dataclass(frozen=True)
class Lab:
    name: str
    module: str  # the module folder the starter is cut from, and whose code is the solution
    files: tuple[str, ...]  # the files of that folder holding the lab's marked regions
    minutes: int  # for a person who has just seen the module; AGENDA.md plans with these
    goal: str
    check: Check
    attack: Attack | None = None  # the attack labs: `labs attack NAME` runs it with the defence on or off


LABS = (
    Lab(
        "01-tool",
        "01-basic-mcp",
        ("server.py",),
        10,
        "a tool of your own, with a typed, bounded argument, that reports progress",
        checks.check_01_tool,
    ),
    Lab(
        "02-fingerprint",
        "02-token-passthrough",
        ("server.py",),
        5,
        "a tool that reads the caller's token from context and shows only its fingerprint",
        checks.check_02_fingerprint,
    ),
    Lab(
        "02-replay",
        "02-token-passthrough",
        ("server.py",),
        10,
        "a token stolen for the upstream is replayed through 02; safe mode stops it",
        checks.check_02_replay,
        checks.attack_02_replay,
    ),
    Lab(
        "03-audience",
        "03-oauth-mcp",
        ("resource_auth.py",),
        10,
        "a token for another resource gets 401; a tool needing more scope gets a 403 step-up naming it",
        checks.check_03_audience,
    ),
    Lab(
        "03-mix-up",
        "03-oauth-mcp",
        ("client.py",),
        15,
        "an evil authorization server redeems the code the real one issued; the client's `iss` check stops it",
        checks.check_03_mix_up,
        checks.attack_03_mix_up,
    ),
    Lab(
        "04-telemetry",
        "04-observability",
        ("server.py",),
        10,
        "a span attribute and a metric of your own, seen in recent-spans and on /metrics",
        checks.check_04_telemetry,
    ),
    Lab(
        "05-rug-pull",
        "05-mcp-proxy",
        ("pins.py",),
        15,
        "a backend changes a tool and renames one behind the proxy; pinning stops both",
        checks.check_05_rug_pull,
        checks.attack_05_rug_pull,
    ),
    Lab(
        "05-backend",
        "05-mcp-proxy",
        ("lab_backend.py",),
        10,
        "a backend of your own behind the proxy, its tools under a prefix, one of them filtered out",
        checks.check_05_backend,
    ),
)


def find(name: str) -> Lab:
    for lab in LABS:
        if lab.name == name:
            return lab
    raise KeyError(f"no lab called {name!r}: the labs are {', '.join(lab.name for lab in LABS)}")

"""Tool-definition pinning: trust a backend's tools as first seen, and notice when it changes them later.

A tool's description and schemas are instructions to the model. A backend
that was harmless when you added it can change them under you (a "rug
pull"): the same tool name, new words telling the model to send your files
somewhere; or a harmless tool renamed to `delete_everything`; or a new tool
that appears one day. The proxy keeps a SHA-256 of each tool's definition in
a pins file. Trust on first use is per backend, not per name: the first
listing of a backend pins all its tools, and from then on a changed
definition and a tool it did not offer then (new, or renamed) are both
quarantined until someone approves exactly what the backend now offers:

    .venv/bin/python 05-mcp-proxy/server.py --approve basic/echo_message

(that pins the definition waiting in the file, and the running proxy offers it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PINNED = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
NEW = "new tool"  # what `check` says of a tool its pinned backend did not offer when it was pinned


def definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    return {key: tool[key] for key in PINNED if key in tool}


def fingerprint(tool: Mapping[str, Any]) -> str:
    canonical = json.dumps(definition(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Pins:
    """The pins file: `"<server>/<tool>"` -> the definition approved (`sha256`, `definition`) and, while
    the backend offers something else under that name, the definition waiting for approval (`pending`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pins: dict[str, dict[str, Any]] = {}
        self.loaded_mtime: float | None = None
        self.reloaded = False  # the file changed on disk and was read again before `changed_on_disk` asked
        self.load()

    def load(self) -> None:
        try:
            self.loaded_mtime = self.path.stat().st_mtime
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.pins = {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return None

    def changed_on_disk(self) -> bool:
        """True once after someone else (`--approve`) wrote the file."""
        if self.mtime() != self.loaded_mtime:
            self.load()
            self.reloaded = True
        reloaded, self.reloaded = self.reloaded, False
        return reloaded

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.pins, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, self.path)  # atomic: a reader never sees half a file
        self.loaded_mtime = self.path.stat().st_mtime

    def put(self, key: str, entry: dict[str, Any]) -> None:
        """Write one entry, over what is on disk now: an approval written meanwhile is kept, not overwritten."""
        if self.mtime() != self.loaded_mtime:
            self.load()
            self.reloaded = True
        self.pins[key] = entry
        self.save()

    def known(self, server: str) -> bool:
        """Whether this backend's tools were pinned already: from then on, a tool it adds waits for approval."""
        prefix = f"{server}/"
        return prefix in self.pins or any(key.startswith(prefix) and "sha256" in pin for key, pin in self.pins.items())

    def listed(self, server: str) -> None:
        """The backend's first listing is pinned, even an empty one: a tool it offers later is not first use."""
        if not self.known(server):
            self.put(f"{server}/", {"listed": True})

    def check(self, server: str, tool: Mapping[str, Any], *, known: bool, trust_new: bool = False) -> list[str]:
        """[] when the tool is as pinned, else what is wrong: the fields that changed, or `NEW`.

        A tool without a pin is pinned now if its backend has no pins yet
        (`known` is False: the backend is being added) or `trust_new` says
        so; otherwise it is new to a pinned backend, and is recorded as
        waiting for approval like a changed one.
        """
        key = f"{server}/{tool.get('name')}"
        digest = fingerprint(tool)
        pin = self.pins.get(key) or {}
        # lab 05-rug-pull: begin, starter: return []
        if pin.get("sha256") == digest:
            if "pending" in pin:  # the backend went back to what was approved
                self.put(key, {k: v for k, v in pin.items() if k != "pending"})
            return []
        if "sha256" not in pin and (not known or trust_new):
            self.put(key, {"sha256": digest, "definition": definition(tool)})
            return []
        # lab 05-rug-pull: end
        if (pin.get("pending") or {}).get("sha256") != digest:
            self.put(key, {**pin, "pending": {"sha256": digest, "definition": definition(tool)}})
        if "sha256" not in pin:
            return [NEW]
        before, after = pin.get("definition") or {}, definition(tool)
        return sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key)) or ["definition"]

    def same_as(self, server: str, tool: Mapping[str, Any]) -> list[str]:
        """Pinned tools of this backend whose definition is this one's but for the name: what it may be renamed from."""
        body = {k: v for k, v in definition(tool).items() if k != "name"}
        names = []
        for key, pin in self.pins.items():
            pinned = pin.get("definition")
            if not key.startswith(f"{server}/") or "sha256" not in pin or not isinstance(pinned, dict):
                continue
            if pinned.get("name") != tool.get("name") and {k: v for k, v in pinned.items() if k != "name"} == body:
                names.append(str(pinned.get("name")))
        return sorted(names)

    def approve(self, key: str) -> bool:
        """Pin the definition of `<server>/<tool>` waiting for approval: exactly what the backend was seen offering."""
        pending = (self.pins.get(key) or {}).get("pending")
        if not isinstance(pending, dict) or "sha256" not in pending:
            return False
        self.pins[key] = {"sha256": pending["sha256"], "definition": pending.get("definition") or {}}
        self.save()
        return True

"""Tool-definition pinning: trust a tool as first seen, and notice when its backend changes it later.

A tool's description and schemas are instructions to the model. A backend
that was harmless when you added it can change them under you (a "rug
pull"): the same tool name, new words telling the model to send your files
somewhere. The proxy keeps a SHA-256 of each tool's definition in a pins file;
a definition that no longer matches is quarantined until someone approves it:

    .venv/bin/python 05-mcp-proxy/server.py --approve basic/echo_message

(that removes the pin, and the running proxy pins the new definition again).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PINNED = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    return {key: tool[key] for key in PINNED if key in tool}


def fingerprint(tool: Mapping[str, Any]) -> str:
    canonical = json.dumps(definition(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Pins:
    """The pins file: `"<server>/<tool>"` -> the definition first seen and its hash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pins: dict[str, dict[str, Any]] = {}
        self.loaded_mtime: float | None = None
        self.load()

    def load(self) -> None:
        try:
            self.loaded_mtime = self.path.stat().st_mtime
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.pins = {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def changed_on_disk(self) -> bool:
        """True once after someone else (`--approve`) wrote the file."""
        try:
            mtime: float | None = self.path.stat().st_mtime
        except OSError:
            mtime = None
        if mtime == self.loaded_mtime:
            return False
        self.load()
        return True

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(self.pins, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, self.path)  # atomic: a reader never sees half a file
        self.loaded_mtime = self.path.stat().st_mtime

    def check(self, server: str, tool: Mapping[str, Any]) -> list[str]:
        """[] when the tool is as pinned (pinning it now if new), else the fields that changed."""
        key = f"{server}/{tool.get('name')}"
        digest = fingerprint(tool)
        pin = self.pins.get(key)
        if pin is None:
            self.pins[key] = {"sha256": digest, "definition": definition(tool)}
            self.save()
            return []
        if pin.get("sha256") == digest:
            return []
        before, after = pin.get("definition") or {}, definition(tool)
        return sorted(key for key in set(before) | set(after) if before.get(key) != after.get(key)) or ["definition"]

    def approve(self, key: str) -> bool:
        """Forget the pin of `<server>/<tool>`: the next listing pins what the backend offers now."""
        found = self.pins.pop(key, None) is not None
        if found:
            self.save()
        return found

"""The attendee's copies: my-labs/<lab>/<module>/, a whole module folder with the lab's regions blanked.

A copy of the whole folder, not just the file the lab changes, so the copy's server.py runs as the
module's does: its sibling imports (demo_tokens, pins, ...) come from beside it. my-labs/ is git-ignored.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

from labs import regions
from labs.catalogue import Lab
from tests.harness import REPO

WORKSPACE = REPO / "my-labs"
COPIED = ("*.py", "*.json", "*.md")  # a module's own files; not caches, not pins files a proxy run left behind


def folder(lab: Lab, root: Path = WORKSPACE) -> Path:
    return root / lab.name / lab.module


def start(lab: Lab, root: Path = WORKSPACE) -> Path:
    """Write the starter copy; returns its folder. An existing copy is the attendee's work: never overwritten."""
    target = folder(lab, root)
    if target.exists():
        raise FileExistsError(f"{target} exists (your work): remove it first to start {lab.name} again")
    source = REPO / lab.module
    target.mkdir(parents=True)
    for pattern in COPIED:
        for path in sorted(source.glob(pattern)):
            if not path.name.endswith(".pins.json"):
                shutil.copy2(path, target / path.name)
    for package in sorted(source.glob("*/__init__.py")):  # 03's identity_provider, which its client.py imports
        shutil.copytree(package.parent, target / package.parent.name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in lab.files:
        text = (source / name).read_text()
        if regions.count(text, lab.name) == 0:
            raise regions.RegionError(f"{lab.module}/{name} marks no region for {lab.name}")
        (target / name).write_text(regions.starter(text, lab.name))
    return target


def shown(path: Path) -> str:
    """A path as the attendee types it: relative to the checkout when it is inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def diff(lab: Lab, root: Path = WORKSPACE) -> str:
    """The unified diff from the attendee's copy to the solution, the module itself (without the lab's markers)."""
    mine = folder(lab, root)
    if not mine.exists():
        raise FileNotFoundError(f"no copy of {lab.name} yet: `make lab-start LAB={lab.name}` makes one")
    out: list[str] = []
    for name in lab.files:
        ours = (mine / name).read_text().splitlines(keepends=True)
        theirs = regions.solution((REPO / lab.module / name).read_text(), lab.name).splitlines(keepends=True)
        out.extend(difflib.unified_diff(ours, theirs, shown(mine / name), f"{lab.module}/{name}"))
    return "".join(out)

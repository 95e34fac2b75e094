"""Cut a lab's starter out of the real module, so the starter and its solution can never drift apart.

A lab marks the lines it is about in the module's own file with a pair of comments:

    # lab 02-replay: begin, starter: credential = token
    check_token_is_for_us(token)
    credential = own_upstream_credential()
    # lab 02-replay: end

The starter copy keeps everything else and replaces the region with one comment pointing at the lab, plus
the line named after `starter:` if there is one (what the code did before the lesson's fix, so that the
starter still runs). The solution is the module with that lab's two marker lines left out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

MARKER = re.compile(r"^(?P<indent> *)# lab (?P<lab>[\w-]+): (?P<edge>begin|end)(?:, starter: (?P<starter>.+))?$")
PLACEHOLDER = "# lab {lab}: your code goes here (see labs/README.md)"


class RegionError(ValueError):
    """A marker without its partner: the module file is not a valid source for the lab."""


def _walk(text: str, lab: str) -> Iterator[tuple[str, str]]:
    """Each line of `text` as ("begin" | "inside" | "end" | "outside", line), for this lab's regions only."""
    inside = False
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        found = MARKER.match(line.rstrip("\n"))
        if found is None or found["lab"] != lab:
            yield ("inside" if inside else "outside"), line
        elif found["edge"] == "begin":
            if inside:
                raise RegionError(f"line {number}: a second `begin` for {lab} before its `end`")
            inside = True
            yield "begin", line
        else:
            if not inside:
                raise RegionError(f"line {number}: an `end` for {lab} without its `begin`")
            inside = False
            yield "end", line
    if inside:
        raise RegionError(f"the last `begin` for {lab} has no `end`")


def count(text: str, lab: str) -> int:
    """How many regions this lab marks in `text`."""
    return sum(kind == "begin" for kind, _ in _walk(text, lab))


def starter(text: str, lab: str) -> str:
    """`text` with each of the lab's regions replaced by its placeholder (and its starter line)."""
    out = []
    for kind, line in _walk(text, lab):
        if kind == "outside":
            out.append(line)
        elif kind == "begin":
            found = MARKER.match(line.rstrip("\n"))
            assert found is not None  # _walk said it is a marker
            out.append(found["indent"] + PLACEHOLDER.format(lab=lab) + "\n")
            if found["starter"]:
                out.append(found["indent"] + found["starter"] + "\n")
    return "".join(out)


def solution(text: str, lab: str) -> str:
    """`text` without the lab's marker lines: what the attendee's copy should end up as."""
    return "".join(line for kind, line in _walk(text, lab) if kind in ("outside", "inside"))

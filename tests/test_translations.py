"""Every README has a Traditional and a Simplified Chinese twin that keeps in step with the English.

The prose is translated; the skeleton is not. A translation has the same headings, level by level and in the
same order, and the same code and console blocks, byte for byte, so a change to the English fails here until
both translations follow it. `tests/test_docs.py` runs the English console blocks only: they are the same bytes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness import REPO

LANGUAGES = ("zh-TW", "zh-CN")
ENGLISH = sorted(
    path
    for path in [REPO / "README.md", REPO / "AGENDA.md", *REPO.glob("*/README.md")]
    if path.is_file() and not path.parent.name.startswith((".", "node_modules"))
)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^(#{1,6}) ", re.MULTILINE)


def twin(english: Path, language: str) -> Path:
    return english.with_name(f"{english.stem}.{language}.md")


def language_line(english: Path) -> str:
    """The first line of all three files: each language, named in itself, linking to its file."""
    names = {"": "English", "zh-TW": "繁體中文", "zh-CN": "简体中文"}
    links = [f"[{name}]({twin(english, code).name if code else english.name})" for code, name in names.items()]
    return " · ".join(links)


def skeleton(text: str) -> tuple[list[str], list[str]]:
    """The heading levels (outside code blocks) and the code blocks of a Markdown file."""
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    return HEADING.findall(prose), blocks


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("english", ENGLISH, ids=lambda path: str(path.relative_to(REPO)))
def test_a_translation_keeps_the_english_headings_and_blocks(english: Path, language: str) -> None:
    translation = twin(english, language)
    assert translation.is_file(), f"{translation.relative_to(REPO)} is missing: translate {english.name}"
    source, translated = english.read_text(), translation.read_text()
    assert source.splitlines()[0] == language_line(english), f"{english.relative_to(REPO)} starts with its languages"
    assert translated.splitlines()[0] == language_line(english), f"{translation.name} starts with the language line"
    headings, blocks = skeleton(source)
    their_headings, their_blocks = skeleton(translated)
    assert their_headings == headings, f"{translation.relative_to(REPO)}: headings differ in number or level"
    for n, (mine, theirs) in enumerate(zip(blocks, their_blocks, strict=False)):
        assert mine == theirs, f"{translation.relative_to(REPO)}: code block {n + 1} is not the English one:\n{mine}"
    assert len(their_blocks) == len(blocks), f"{translation.relative_to(REPO)}: {len(their_blocks)} code blocks"

"""The labs check themselves: every lab's check fails on its untouched starter, in one line, and passes on the module.

The checks run as an attendee runs them (`python -m labs check NAME`), against real servers started from the
copy; the starters are cut into a temporary workspace, never into my-labs/.
"""

from __future__ import annotations

import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

from labs import regions, workspace
from labs.catalogue import LABS, find
from tests.harness import REPO, server_env

# What each check says of the untouched starter: the first thing the attendee has to write.
STARTER_SAYS = {
    "01-tool": "no tool of your own yet: add an `async def` with `@mcp.tool()` in server.py",
    "02-fingerprint": "show_auth_token does not show the caller's fingerprint yet (it answered 'not written yet')",
    "02-replay": "the replay still works in safe mode: check the token is for this server, then call as itself",
    "03-audience": "a token for another resource gets in (JWT): JwtVerifier.check must require `aud` == self.resource",
    "03-mix-up": "the mix-up still works: hand the SDK the `iss` of the authorization response",
    "04-telemetry": "divide_numbers's span has no attribute of your own: set `workshop.…` on the current span",
    "05-rug-pull": "the rug pull still works: a tool whose sha256 differs from its pin must not return []",
    "05-backend": "no tool of your own behind the proxy yet: add one with `@mcp.tool()` in lab_backend.py",
}


def labs_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labs", *args],
        cwd=REPO,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_lab_is_named_here_and_marked_in_its_module() -> None:
    assert set(STARTER_SAYS) == {lab.name for lab in LABS}
    for lab in LABS:
        assert 5 <= lab.minutes <= 15, lab.name
        for name in lab.files:
            assert regions.count((REPO / lab.module / name).read_text(), lab.name) >= 1, f"{lab.module}/{name}"


@pytest.mark.parametrize("lab", [lab.name for lab in LABS])
def test_the_check_fails_on_the_starter_in_one_line_and_passes_on_the_module(lab: str, tmp_path: Path) -> None:
    started = labs_cli("start", lab, "--workspace", str(tmp_path))
    assert started.returncode == 0, started.stderr
    for name in find(lab).files:
        py_compile.compile(str(workspace.folder(find(lab), tmp_path) / name), doraise=True)  # the starter runs
    starter = labs_cli("check", lab, "--workspace", str(tmp_path))
    assert (starter.returncode, starter.stdout) == (1, f"NOT YET {lab}: {STARTER_SAYS[lab]}\n"), starter.stderr
    solution = labs_cli("check", lab, "--folder", find(lab).module)
    assert solution.returncode == 0, solution.stdout + solution.stderr
    assert solution.stdout.startswith(f"PASS {lab}: ") and solution.stdout.count("\n") == 1


@pytest.mark.parametrize("lab", [lab.name for lab in LABS if lab.attack])
def test_the_attack_works_on_the_module_with_its_defence_off(lab: str) -> None:
    attacked = labs_cli("attack", lab, "--folder", find(lab).module, "--defence", "off")
    assert attacked.returncode == 0, attacked.stdout + attacked.stderr
    assert "ATTACK WORKED" in attacked.stdout and "ATTACK STOPPED" not in attacked.stdout


def test_the_solution_is_the_diff_to_the_module_and_a_started_lab_is_never_overwritten(tmp_path: Path) -> None:
    lab = find("02-replay")
    copy = workspace.start(lab, tmp_path) / "server.py"
    shown = labs_cli("solution", lab.name, "--workspace", str(tmp_path)).stdout
    assert "-        credential = token\n" in shown and "+        credential = own_upstream_credential()\n" in shown
    assert "# lab 02-replay" in shown  # only the placeholder line, as the attendee's side of the diff
    copy.write_text(regions.solution((REPO / lab.module / "server.py").read_text(), lab.name))
    same = labs_cli("solution", lab.name, "--workspace", str(tmp_path))
    assert same.stdout == "Your copy is the solution, line for line."
    finished = copy.read_text()
    again = labs_cli("start", lab.name, "--workspace", str(tmp_path))
    assert again.returncode == 2 and "exists (your work)" in again.stderr
    assert copy.read_text() == finished


def test_a_marker_without_its_partner_is_an_error() -> None:
    with pytest.raises(regions.RegionError, match="no `end`"):
        regions.starter("# lab x: begin\ncode\n", "x")
    with pytest.raises(regions.RegionError, match="without its `begin`"):
        regions.solution("code\n# lab x: end\n", "x")
    other = "# lab y: begin\nc\n# lab y: end\n"  # another lab's region stays as it is
    text = "a\n    # lab x: begin, starter: pass\n    b\n    # lab x: end\n" + other
    assert regions.starter(text, "x") == f"a\n    {regions.PLACEHOLDER.format(lab='x')}\n    pass\n" + other
    assert regions.solution(text, "x") == "a\n    b\n" + other

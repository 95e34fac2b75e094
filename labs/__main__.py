"""The lab runner: `python -m labs list | start NAME | check NAME | solution NAME | attack NAME`.

    .venv/bin/python -m labs list                      # the labs, their minutes and goals
    .venv/bin/python -m labs start 01-tool             # the starter, in my-labs/01-tool/01-basic-mcp/
    .venv/bin/python -m labs check 01-tool             # one line: done, or what is still missing
    .venv/bin/python -m labs solution 01-tool          # the diff from your copy to the module itself
    .venv/bin/python -m labs attack 02-replay          # run the lab's attack against your copy
    .venv/bin/python -m labs attack 02-replay --defence off

The Makefile has the same as `make lab-list`, `make lab-start LAB=01-tool` and so on.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import anyio

from labs import regions, workspace
from labs.catalogue import LABS, Lab, find
from labs.checks import CHECK_TIMEOUT, Missing, one_line


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m labs", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the labs, their minutes and goals")
    for name, what in (("start", "write the starter"), ("check", "check your copy"), ("solution", "see the diff")):
        command = commands.add_parser(name, help=what)
        command.add_argument("lab")
        command.add_argument("--workspace", type=Path, default=workspace.WORKSPACE, help="where the copies live")
    check = commands.choices["check"]
    check.add_argument("--folder", type=Path, help="check this copy of the module instead (e.g. the module itself)")
    attack = commands.add_parser("attack", help="run an attack lab's attack against your copy")
    attack.add_argument("lab")
    off = "off: 02 in passthrough, 03's client without the lab's line, pinning off"
    attack.add_argument("--defence", choices=["on", "off"], default="on", help=off)
    attack.add_argument("--workspace", type=Path, default=workspace.WORKSPACE)
    attack.add_argument("--folder", type=Path, help="attack this copy of the module instead")
    return parser.parse_args(argv)


def copy_to_use(lab: Lab, args: argparse.Namespace) -> Path:
    chosen: Path = args.folder.resolve() if args.folder else workspace.folder(lab, args.workspace)
    if not chosen.exists():
        raise FileNotFoundError(f"no copy of {lab.name} at {workspace.shown(chosen)}: `make lab-start LAB={lab.name}`")
    return chosen


def leaf(error: BaseException) -> BaseException:
    """The first exception inside the groups the task groups wrapped it in (a `Missing`, most often)."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def timed_check(lab: Lab, folder: Path) -> str:
    with anyio.fail_after(CHECK_TIMEOUT):
        return await lab.check(folder)


def run(args: argparse.Namespace) -> int:
    if args.command == "list":
        for lab in LABS:
            kind = "attack, then defend: " if lab.attack else ""
            print(f"{lab.name:15} {lab.minutes:3} min  {kind}{lab.goal}  ({lab.module}/{', '.join(lab.files)})")
        return 0
    lab = find(args.lab)
    if args.command == "start":
        target = workspace.start(lab, args.workspace)
        for name in lab.files:
            print(f"Your starter: {workspace.shown(target / name)}; write the part marked `# lab {lab.name}`.")
        print(f"Then: make lab-check LAB={lab.name}   (the lab's text: labs/README.md#{lab.name})")
    elif args.command == "solution":
        print(workspace.diff(lab, args.workspace) or "Your copy is the solution, line for line.", end="")
    elif args.command == "check":
        print(f"PASS {lab.name}: {anyio.run(timed_check, lab, copy_to_use(lab, args))}")
    elif lab.attack is None:
        attacks = ", ".join(each.name for each in LABS if each.attack)
        raise KeyError(f"{lab.name} has no attack: the attack labs are {attacks}")
    else:
        print("\n".join(anyio.run(lab.attack, copy_to_use(lab, args), args.defence == "on")))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # The SDK's deprecation notices are for this project's developers; an attendee reads one line.
    warnings.simplefilter("ignore")
    args = parse(argv)
    try:
        try:
            return run(args)
        except BaseExceptionGroup as group:  # what the task groups of the SDK's client wrap a failure in
            raise leaf(group) from None
    except Missing as missing:
        print(f"NOT YET {args.lab}: {missing}")
    except TimeoutError:
        print(f"NOT YET {args.lab}: the check took over {CHECK_TIMEOUT:.0f} s; does a tool of yours hang?")
    except (KeyError, OSError, regions.RegionError) as problem:
        print(f"labs: {problem.args[0] if isinstance(problem, KeyError) else problem}", file=sys.stderr)
        return 2
    except Exception as surprise:  # an attendee's copy can fail in any way: still one line, not a traceback
        print(f"NOT YET {args.lab}: {type(surprise).__name__}: {one_line(surprise)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""What every benchmark section quotes: the command that reproduces its numbers, and the machine."""

from __future__ import annotations

import argparse
import platform

SKIPPED = {"out", "tmp"}  # where results and scratch files go: they change no number


def command_line(parser: argparse.ArgumentParser, args: argparse.Namespace, module: str, shown: tuple[str, ...]) -> str:
    """The command with the options ``shown`` (those that set the section's numbers), prefixed by
    ``make bench`` only when every option is at its default (what ``make bench`` runs): a section
    measured with other settings never claims to be ``make bench``'s. Options that differ from their
    default are shown whether listed or not."""
    actions = [a for a in parser._actions if a.dest not in SKIPPED and a.default is not argparse.SUPPRESS]
    changed = {a.dest for a in actions if getattr(args, a.dest) != a.default}
    options = [
        f"--{a.dest.replace('_', '-')} {getattr(args, a.dest)}" for a in actions if a.dest in changed or a.dest in shown
    ]
    command = " ".join([f"python -m {module}", *options])
    return f"`{command}`" if changed else f"`make bench` (`{command}`)"


def machine() -> str:
    """The CPU a section ran on, with the instruction set torch's kernels dispatch to.

    This project's VM has changed CPU between dates (AVX2 on 2026-12-02, AVX512 on 2026-12-04), and a
    training step's time moves with it: the section says which one measured it.
    """
    from bindspace.utils.environment import describe_environment

    cpu = describe_environment()["cpu"]
    return f"{platform.machine()} {cpu['model']} (torch dispatching to {cpu['torch']})"

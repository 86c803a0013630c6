"""Processes from Linux's /proc: a process's descendants, its command line, its CPU time.

One home for these: the benches measure the processes a command started, and the tests that
kill a Ray worker must touch only the Ray they started themselves (tests import this module;
conftest.py puts bench/ on their path)."""

from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")  # /proc's CPU times are in clock ticks


def _stat(pid: int) -> list[str]:
    # The fields after the command name, which is in parentheses and may hold spaces.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def descendants(root: int, include_root: bool = False) -> list[int]:
    """Every process below `root` (its children, theirs, ...), `root` first when included."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids.setdefault(int(_stat(int(d))[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                continue  # it ended while we looked
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out if include_root else out[1:]


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" once it has ended)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_and_cmd(pid: int) -> tuple[float, str] | None:
    """(user + system CPU seconds, command line), or None once the process has ended."""
    try:
        fields = _stat(pid)
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK, cmdline(pid)

"""The file systems mounted inside the root, from the kernel's mount table.

A disk mounted in a folder of the dataset and then unmounted leaves an empty folder behind:
to the scanner its files look deleted. syncd remembers the mount points it has seen (the
ledger) and compares them with this table, which names every mount (bind mounts and nested
ones too) without touching the mounted file systems themselves (a hung NFS server cannot
block the reading of it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

MOUNTINFO = "/proc/self/mountinfo"

_OCTAL = re.compile(r"\\([0-7]{3})")


def mounts_under(
    root: str | os.PathLike[str],
    *,
    table: str = MOUNTINFO,
    exclude: Callable[[str], bool] = lambda _name: False,
) -> dict[str, int] | None:
    """The mount points strictly inside `root`, relative to it, each with its mount id (a
    disk unmounted and mounted again at the same folder gets a new one); None when the table
    cannot be read (not Linux): then nothing is known, and nothing is protected. Mount points
    in or under a folder whose name `exclude` matches (`.zfs/snapshot`, say) are left out:
    the scan never looks there."""
    try:
        with open(table, encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    base = os.path.realpath(os.fspath(root)).rstrip("/")
    found: dict[str, int] = {}
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5 or not fields[0].isdigit():
            continue
        point = _unescape(fields[4])
        if not point.startswith(base + "/"):
            continue
        rel = point[len(base) + 1 :]
        if not any(exclude(name) for name in rel.split("/")):
            found[rel] = int(fields[0])  # the last mount at a folder is the one seen there
    return found


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal escapes."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)

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

MOUNTINFO = "/proc/self/mountinfo"

_OCTAL = re.compile(r"\\([0-7]{3})")


def mounts_under(root: str | os.PathLike[str], *, table: str = MOUNTINFO) -> frozenset[str] | None:
    """The mount points strictly inside `root`, relative to it; None when the table cannot
    be read (not Linux): then nothing is known, and nothing is protected."""
    try:
        with open(table, encoding="utf-8", errors="surrogateescape") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    base = os.path.realpath(os.fspath(root)).rstrip("/")
    found = set()
    for line in lines:
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point.startswith(base + "/"):
            found.add(point[len(base) + 1 :])
    return frozenset(found)


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal escapes."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)

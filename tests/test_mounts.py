"""syncd.mounts: the mount points inside the root, from a mountinfo table."""

from __future__ import annotations

from pathlib import Path

from syncd.mounts import mounts_under

TABLE = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:40 / {root} rw - tmpfs t rw
41 40 0:41 / {root}/nas rw - nfs4 host:/export rw
42 41 0:42 / {root}/nas/inner rw - tmpfs t rw
43 27 0:43 / {root}/with\\040space rw - tmpfs t rw
44 27 0:44 / {root}2/sibling rw - tmpfs t rw
45 27 0:45 / /elsewhere rw - tmpfs t rw
46 27 0:46 / {root}/.zfs/snapshot/daily rw - zfs z rw
"""


def _root_and_table(tmp_path: Path) -> tuple[Path, str]:
    root = tmp_path / "data"
    root.mkdir()
    table = tmp_path / "mountinfo"
    table.write_text(TABLE.format(root=root))
    return root, str(table)


def test_mounts_under_the_root_nested_and_escaped(tmp_path: Path) -> None:
    """Mount points strictly inside the root, relative to it, with their mount ids, nested
    ones too, the kernel's octal escapes undone; the root itself and a sibling sharing its
    prefix are not."""
    root, table = _root_and_table(tmp_path)
    assert mounts_under(root, table=table) == {
        "nas": 41,
        "nas/inner": 42,
        "with space": 43,
        ".zfs/snapshot/daily": 46,
    }


def test_mounts_in_excluded_folders_are_left_out(tmp_path: Path) -> None:
    """A mount point in or under a folder the scan never looks at (`.zfs/snapshot/x`) is not
    one syncd tracks: its comings and goings would only cost full passes."""
    root, table = _root_and_table(tmp_path)
    found = mounts_under(root, table=table, exclude=lambda name: name.startswith("."))
    assert found == {"nas": 41, "nas/inner": 42, "with space": 43}


def test_no_table_means_unknown(tmp_path: Path) -> None:
    """Without a readable table (not Linux) nothing is known: None, not an empty mapping."""
    assert mounts_under(tmp_path, table=str(tmp_path / "absent")) is None


def test_the_real_table_is_read(tmp_path: Path) -> None:
    """On this machine (Linux) the real table reads, and a plain folder has no mounts."""
    assert mounts_under(tmp_path) == {}

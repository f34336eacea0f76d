"""Bad input: files syncd cannot use and configurations it cannot run with.

Every bad file must give a clear message naming the file and the reason, be recorded in the
ledger, show in `syncd status`, and never block the other files; each test ends on the
invariant of `tests/invariants.py` with the bad files held (no input for them). Config errors
exit 2 with one line naming the key.

Tests run as root here, and root reads any file whatever its mode. The permission tests
therefore run `syncd reconcile` as a child process whose capability bounding set lacks
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (prctl PR_CAPBSET_DROP before exec): still uid 0,
but file modes apply to it, so `chmod 000` really makes a file unreadable. As a non-root user
the modes apply anyway and nothing is dropped.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from helpers import (
    KEY_ENV,
    REPO,
    Site,
    make_site,
    run_cli,
    run_syncd,
    wait_until,
    write_config,
)
from invariants import check_invariant, local_images
from proto import ProtoRecorder

from syncd import engine
from syncd.emulator import Emulator
from syncd.ledger import Ledger
from syncd.model import derive_input_id
from syncd.sample import jpeg_bytes, png_bytes

GOOD = 4
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
_LIBC = ctypes.CDLL(None, use_errno=True)


class Hook:
    """A validator hook running one action at the first request of a kind (then checking)."""

    def __init__(self, check: ProtoRecorder) -> None:
        self.check = check
        self.actions: dict[str, Callable[[], None]] = {}

    def __call__(self, kind: str, direction: str, body: dict[str, Any]) -> None:
        self.check(kind, direction, body)
        if direction == "request" and kind in self.actions:
            self.actions.pop(kind)()


@pytest.fixture
def hook(proto_recorder: ProtoRecorder) -> Hook:
    return Hook(proto_recorder)


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator], hook: Hook) -> Emulator:
    return make_emulator(processing_delay=0.05, delete_delay=0.05, validator=hook)


@pytest.fixture
def site(tmp_path: Path, emu: Emulator) -> Site:
    site = make_site(tmp_path, emu)
    for i in range(GOOD):
        site.image(f"good/{i}.png", i)
    return site


def reconcile(site: Site, *flags: str) -> Any:
    return run_cli(["reconcile", "--config", str(site.config), *flags], env=site.env)


def status(site: Site) -> str:
    result = run_cli(["status", "--config", str(site.config), "--no-remote"], env=site.env)
    assert result.exit_code == 0, result.output
    return result.stdout


def assert_held(site: Site, rel: str, reason: str, output: str) -> None:
    """`rel` is held for `reason`: named in the pass output, in the ledger and in `syncd
    status`, never sent, while every other image is in step."""
    assert f"held     {rel}: " in output and reason in output, output
    with Ledger.open(site.ledger, lock=False) as ledger:
        errors = dict(ledger.file_errors())
    assert reason in errors.get(rel, ""), errors
    shown = status(site)
    assert f"held    {rel}: " in shown and reason in shown, shown
    assert derive_input_id(site.source, rel) not in site.emu.stats()["posts_per_input_id"]
    check_invariant(
        site.emu.url, root=site.root, source=site.source, ledger=site.ledger, held=[rel]
    )


# --- bad image files ------------------------------------------------------------------------


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


BAD_IMAGES: list[tuple[str, str, Callable[[Path], None], str]] = [
    (
        "not_an_image",
        "photo.jpg",
        lambda p: p.write_bytes(b"GIF? no: plain text saved as .jpg\n" * 10),
        "not an image: no JPEG, PNG, GIF, TIFF, BMP or WEBP signature",
    ),
    (
        "truncated_jpeg",
        "cut.jpg",
        lambda p: p.write_bytes(jpeg_bytes(32, 32, seed=3)[:-100]),
        "truncated JPEG (no end-of-image marker)",
    ),
    (
        "truncated_png",
        "cut.png",
        lambda p: p.write_bytes(png_bytes(16, 16, seed=3)[:-20]),
        "truncated PNG",
    ),
    ("zero_bytes", "empty.png", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    (
        "over_20mb",
        "huge.png",
        lambda p: _sparse(p, 25_000_000),
        "too large: 25000000 bytes (limit 20000000)",
    ),
]


@pytest.mark.parametrize(
    ("name", "reason", "make"),
    [(n, r, m) for _, n, m, r in BAD_IMAGES],
    ids=[c[0] for c in BAD_IMAGES],
)
def test_bad_image_file_is_held_and_blocks_nothing(
    site: Site, name: str, reason: str, make: Callable[[Path], None]
) -> None:
    """A file under an image name that is not a whole image (garbage, truncated, empty) or is
    over 20 MB is held with a message naming it and the reason, recorded in the ledger and
    shown by `syncd status`; no request carries it and every other image is synced."""
    make(site.root / name)

    result = reconcile(site)

    assert result.exit_code == 1, result.output
    assert_held(site, name, reason, result.stdout)


def test_file_over_20mb_is_refused_without_reading_or_sending_it(site: Site) -> None:
    """A file over the 20 MB limit is judged by its size alone: not hashed, not read, and no
    byte of it is sent."""
    _sparse(site.root / "huge.png", 25_000_000)

    result = reconcile(site, "--json")

    report = json.loads(result.stdout)
    assert report["files_hashed"] == GOOD
    assert report["bytes_hashed"] < 10_000 and report["bytes_sent"] < 10_000


# --- bad sidecars ---------------------------------------------------------------------------

_DEEP = b'{"metadata": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b"}"
_BIG = b'{"metadata": {"x": "' + b"a" * (10 * 1024 * 1024) + b'"}}'

#: (case, sidecar suffix, content, the reason syncd gives) - every invalid case of
#: docs/dataset-rules.md, plus a 10 MB sidecar and one nested 1,000 deep.
BAD_SIDECARS: list[tuple[str, str, bytes, str]] = [
    ("invalid_json", ".json", b'{"concepts": [}', "line 1 column 15: Expecting value"),
    ("empty", ".json", b"", "empty file: expected a JSON object"),
    ("top_level_array", ".json", b'["cat"]', "top level must be a JSON object, not an array"),
    ("unknown_key", ".json", b'{"labels": ["cat"]}', "unknown key 'labels'"),
    (
        "concept_object_key",
        ".json",
        b'{"concepts": [{"id": "cat", "score": 1}]}',
        "unknown key 'score' (allowed: id, value)",
    ),
    ("duplicate_key", ".json", b'{"id": "x1", "id": "x2"}', "duplicate key 'id'"),
    ("id_empty", ".json", b'{"id": ""}', "is not a valid input id"),
    ("id_too_long", ".json", b'{"id": "' + b"a" * 65 + b'"}', "is not a valid input id"),
    ("id_characters", ".json", b'{"id": "a/b"}', "is not a valid input id"),
    ("id_only_dots", ".json", b'{"id": ".."}', "is not a valid input id"),
    ("id_not_string", ".json", b'{"id": 5}', '"id" must be a string, not a number'),
    (
        "concept_id_control",
        ".json",
        b'{"concepts": ["ca\\tt"]}',
        "contains a control character",
    ),
    ("concept_id_empty", ".json", b'{"concepts": ["  "]}', "empty concept id"),
    (
        "concept_value",
        ".json",
        b'{"concepts": {"cat": 0.5}}',
        "value must be true, false, 1 or 0, not 0.5",
    ),
    (
        "present_and_absent",
        ".json",
        b'{"concepts": ["cat"], "not_concepts": ["cat"]}',
        "concept 'cat' is marked both present and absent",
    ),
    (
        "metadata_not_object",
        ".json",
        b'{"metadata": [1]}',
        '"metadata" must be a JSON object',
    ),
    (
        "metadata_reserved_key",
        ".json",
        b'{"metadata": {"syncd": {"source": "x"}}}',
        "key 'syncd' is reserved",
    ),
    ("nan", ".json", b'{"metadata": {"x": NaN}}', "NaN is not allowed"),
    ("infinity", ".json", b'{"metadata": {"x": -Infinity}}', "-Infinity is not allowed"),
    ("number_too_large", ".json", b'{"metadata": {"x": 1e400}}', "must be finite"),
    (
        "lone_surrogate",
        ".json",
        b'{"metadata": {"x": "\\ud800"}}',
        "contains a lone surrogate",
    ),
    (
        "nested_65",
        ".json",
        b'{"metadata": ' + b'{"a": ' * 64 + b"1" + b"}" * 64 + b"}",
        "nested too deeply (limit 64 levels)",
    ),
    ("nested_1000", ".json", _DEEP, "nested too deeply (limit 64 levels)"),
    ("ten_megabytes", ".json", _BIG, f"too large: {len(_BIG)} bytes (limit 1048576)"),
    ("json_not_utf8", ".json", b'{"metadata": {"x": "\xff"}}', "not valid UTF-8"),
    ("text_present_and_absent", ".txt", b"cat\n-cat\n", "line 2: concept 'cat' is marked"),
    ("text_lone_dash", ".txt", b"cat\n-\n", "line 2: empty concept id"),
    ("text_control", ".txt", b"ca\x01t\n", "contains a control character"),
    ("text_not_utf8", ".txt", b"caf\xe9\n", "not valid UTF-8"),
]


@pytest.mark.parametrize(
    ("suffix", "content", "reason"),
    [c[1:] for c in BAD_SIDECARS],
    ids=[c[0] for c in BAD_SIDECARS],
)
def test_invalid_sidecar_holds_its_image_and_blocks_nothing(
    site: Site, suffix: str, content: bytes, reason: str
) -> None:
    """An invalid sidecar holds its image with a message naming the sidecar and the reason,
    recorded in the ledger and shown by `syncd status`; the image is never sent and every
    other image is synced."""
    (site.root / "bad.png").write_bytes(png_bytes(8, 8, seed=99))
    (site.root / f"bad{suffix}").write_bytes(content)

    result = reconcile(site)

    assert result.exit_code == 1, result.output
    assert_held(site, "bad.png", f"bad{suffix}: ", result.stdout)
    assert reason in result.stdout


def test_two_sidecars_with_one_id_hold_both_images(site: Site) -> None:
    """Two sidecars giving the same input id hold both images, each message naming the other."""
    for name, seed in (("a.png", 1), ("b.png", 2)):
        site.image(name, 100 + seed, id="shared-id")

    result = reconcile(site)

    assert result.exit_code == 1
    assert "held     a.png: input id 'shared-id' is also used by b.png" in result.stdout
    assert "held     b.png: input id 'shared-id' is also used by a.png" in result.stdout
    assert "shared-id" not in site.emu.stats()["posts_per_input_id"]
    check_invariant(
        site.emu.url,
        root=site.root,
        source=site.source,
        ledger=site.ledger,
        held=["a.png", "b.png"],
    )


# --- unreadable files (permissions) ---------------------------------------------------------


def _without_dac_override() -> None:
    """preexec_fn: drop the capabilities that let root ignore file modes (before exec)."""
    if os.geteuid() != 0:
        return
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if _LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def reconcile_unprivileged(site: Site) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "syncd", "reconcile", "--config", str(site.config)],
        env={**os.environ, **site.env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        preexec_fn=_without_dac_override,
    )


def test_unreadable_files_are_held_and_an_unreadable_folder_deletes_nothing(site: Site) -> None:
    """An image or sidecar that cannot be read (permissions) is held with "unreadable:
    Permission denied" naming it, in the output, the ledger and `syncd status`; a folder that
    cannot be listed keeps its inputs (nothing under it is judged deleted); the rest syncs."""
    site.image("locked/kept.png", 50)
    assert reconcile(site).exit_code == 0
    site.image("secret.png", 51)
    site.image("labelled.png", 52, concepts=["cat"])
    for path in ("secret.png", "labelled.json", "locked"):
        os.chmod(site.root / path, 0)
    try:
        result = reconcile_unprivileged(site)
    finally:
        for path in ("secret.png", "labelled.json", "locked"):
            os.chmod(site.root / path, 0o755)
        os.chmod(site.root / "locked", 0o700)

    assert result.returncode == 1, result.stderr
    assert "held     secret.png: unreadable: Permission denied" in result.stdout
    assert "held     labelled.png: labelled.json: unreadable: Permission denied" in result.stdout
    shown = status(site)
    assert "secret.png: unreadable: Permission denied" in shown
    assert "labelled.png: labelled.json: unreadable: Permission denied" in shown
    assert site.emu.stats()["requests"].get("DELETE /v2/inputs", 0) == 0
    check_invariant(
        site.emu.url,
        root=site.root,
        source=site.source,
        ledger=site.ledger,
        held=["secret.png", "labelled.png"],
    )


# --- files that change between scan and read ------------------------------------------------


def after_the_scan(action: Callable[[], object]) -> Callable[[], None]:
    """A hook action for the pass's remote listing request that runs `action` once the scan
    has finished.

    The listing runs beside the scan, so its request can arrive before the scan has seen the
    files; held here until the pass waits for the listing's result (which it does once its
    scan has returned, before it plans and reads files to send), the action lands exactly
    between the scan and the read. The pass runs in this process (CliRunner), so that wait
    is seen in its thread's stack: a new file leaves no trace in the ledger until its add
    reads it, so the ledger cannot tell.
    """

    def run() -> None:
        wait_until(_pass_waits_for_listing, timeout=30, what="the scan to finish")
        action()

    return run


def _pass_waits_for_listing() -> bool:
    for top in sys._current_frames().values():
        frame: FrameType | None = top
        while frame is not None:
            code = frame.f_code
            if code.co_qualname == "_Listing.result" and code.co_filename == engine.__file__:
                return True
            frame = frame.f_back
    return False


def test_file_rewritten_or_deleted_between_scan_and_read(site: Site, hook: Hook) -> None:
    """A new file rewritten after the scan saw it is not sent with bytes that do not match its
    scan (message: "changed since it was scanned"), a file deleted meanwhile is skipped as
    unreadable; both are named in the report, nothing else is blocked, and the next pass sends
    the new bytes and forgets the deleted file."""
    site.image("moving.png", 60)
    site.image("vanishing.png", 61)

    def change_files() -> None:
        (site.root / "moving.png").write_bytes(png_bytes(8, 8, seed=600))
        (site.root / "vanishing.png").unlink()

    hook.actions["ListInputs"] = after_the_scan(change_files)

    first = json.loads(reconcile(site, "--json").stdout)

    skipped = dict(first["skipped"])
    assert "changed since it was scanned" in skipped["moving.png"]
    assert "unreadable: No such file or directory" in skipped["vanishing.png"]
    assert first["added"] == GOOD and first["errors"] == []
    second = reconcile(site)
    assert second.exit_code == 0, second.output
    check_invariant(site.emu.url, root=site.root, source=site.source, ledger=site.ledger)


@pytest.mark.parametrize("flags", [(), ("--explain",)], ids=["read-by-the-add", "hashed-by-scan"])
@pytest.mark.parametrize("change", ["grown", "shrunk", "same size", "named pipe"])
def test_a_file_changed_after_the_scan_is_not_sent(
    site: Site, hook: Hook, change: str, flags: tuple[str, ...]
) -> None:
    """Whether the file grew, shrank, kept its size or became a named pipe, bytes other than
    those scanned are never sent (and a pipe never blocks the upload): the upload reads
    exactly the scanned size plus one byte, and checks the rest by the stat the scan saw (a
    new file, which the scan does not read) or by hash (a file the scan hashed, as it does
    every file with --explain)."""
    site.image("moving.png", 60)
    path = site.root / "moving.png"

    def rewrite() -> None:
        data = path.read_bytes()
        if change == "named pipe":  # opening it for reading must not wait for a writer
            path.unlink()
            os.mkfifo(path)
            return
        path.write_bytes(
            {
                "grown": data + b"\0" * 10,
                "shrunk": data[:-10],
                "same size": data[:-1] + bytes([data[-1] ^ 1]),
            }[change]
        )

    hook.actions["ListInputs"] = after_the_scan(rewrite)

    first = json.loads(reconcile(site, "--json", *flags).stdout)

    assert "changed since it was scanned" in dict(first["skipped"])["moving.png"]
    assert first["added"] == GOOD  # the site's good images; moving.png is not among them
    assert first["files_hashed"] == GOOD + (1 if flags else 0)


def test_text_report_names_a_file_changed_between_scan_and_read(site: Site, hook: Hook) -> None:
    """The text report of a pass that skipped a file rewritten after the scan names the file
    and the reason, so the exit code 1 is explained."""
    site.image("moving.png", 60)
    hook.actions["ListInputs"] = after_the_scan(
        lambda: (site.root / "moving.png").write_bytes(png_bytes(8, 8, seed=600))
    )

    result = reconcile(site)

    assert result.exit_code == 1, result.output
    assert "moving.png" in result.stdout and "changed since it was scanned" in result.stdout


# --- names and shapes that must simply work -------------------------------------------------


def _deep_dirs(root: Path, depth: int, width: int) -> str:
    """Nested folders `depth` deep with names `width` long, made relative to each parent's
    descriptor (so the whole path may exceed PATH_MAX); returns the relative path."""
    parts = [f"{k:02d}" + "n" * (width - 2) for k in range(depth)]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            os.mkdir(part, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        image = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        with os.fdopen(image, "wb") as f:
            f.write(png_bytes(8, 8, seed=depth))
    finally:
        os.close(fd)
    return "/".join(parts)


def test_awkward_names_are_synced(site: Site) -> None:
    """Names with spaces, Unicode, a newline, a tab, bytes that are not UTF-8, a long (but
    legal) path, and an image inside a folder named `x.jpg`: all are synced like any other."""
    root = site.root
    names = ["with space.png", "ünïcødé 猫.png", "new\nline.png", "tab\there.png"]
    for i, name in enumerate(names):
        site.image(name, 70 + i)
    with open(os.path.join(os.fsencode(root), b"latin1-\xe9\xff.png"), "wb") as f:
        f.write(png_bytes(8, 8, seed=80))
    long_rel = _deep_dirs(root, 14, 250) + "/deep.png"  # ~3,500 bytes, under PATH_MAX
    site.image("folder.jpg/inside.png", 82)

    result = reconcile(site)

    assert result.exit_code == 0, result.output
    images = local_images(root)
    for rel in [*names, "latin1-\udce9\udcff.png", long_rel, "folder.jpg/inside.png"]:
        assert rel in images
    check_invariant(site.emu.url, root=root, source=site.source, ledger=site.ledger)


def test_held_file_with_an_awkward_name_is_reported_on_one_line(site: Site) -> None:
    """A held file whose name holds a newline and a byte that is not UTF-8 is named on one
    line, escaped, by `syncd reconcile` and by `syncd status`."""
    (site.root / "bad\nname\udcff.png").write_bytes(b"")
    line = b"bad\\nname\\xff.png: empty file (0 bytes)\n"

    outputs = [
        subprocess.run(
            [sys.executable, "-m", "syncd", *args, "--config", str(site.config)],
            env={**os.environ, **site.env},
            capture_output=True,
            timeout=60,
            check=False,
            cwd=REPO,
        ).stdout
        for args in (["reconcile"], ["status", "--no-remote"])
    ]

    assert b"held     " + line in outputs[0], outputs[0]
    assert b"held    " + line in outputs[1], outputs[1]


# --- entries that are reported but not recorded ----------------------------------------------


def _symlink_loop(site: Site) -> tuple[str, str]:
    (site.root / "loop").mkdir()
    os.symlink("..", site.root / "loop" / "up")
    return "loop/up", "symlink loop"


def _path_too_long(site: Site) -> tuple[str, str]:
    rel = _deep_dirs(site.root, 20, 240)  # ~4,800 bytes: over PATH_MAX for the full path
    return rel.split("/")[16], "File name too long"


@pytest.mark.parametrize("make", [_symlink_loop, _path_too_long], ids=["symlink_loop", "too_long"])
def test_skipped_entries_are_recorded_and_shown_by_status(
    tmp_path: Path, emu: Emulator, make: Callable[[Site], tuple[str, str]]
) -> None:
    """A symlink loop (with follow_symlinks) or a folder whose path is too long to open is
    named with its reason in the reconcile output and in `syncd status`, and the rest syncs."""
    site = make_site(tmp_path, emu, source_opts={"follow_symlinks": True})
    site.image("ok.png", 1)
    part, reason = make(site)

    result = reconcile(site)

    check_invariant(site.emu.url, root=site.root, source=site.source, ledger=site.ledger)
    assert part in result.stdout and reason in result.stdout, result.output
    shown = status(site)
    assert part in shown and reason in shown, shown


# --- configuration errors -------------------------------------------------------------------


def _config(tmp_path: Path, emu: Emulator, **sections: dict[str, Any]) -> Path:
    root = tmp_path / "pets"
    root.mkdir(exist_ok=True)
    base: dict[str, dict[str, Any]] = {
        "source": {"root": root},
        "remote": {"api_base": emu.url, "api_key_env": KEY_ENV},
        "sync": {},
        "ledger": {"path": tmp_path / "ledger.db"},
    }
    for section, values in sections.items():
        base[section] = {**base[section], **values}
        base[section] = {k: v for k, v in base[section].items() if v is not None}
    return write_config(tmp_path / "syncd.toml", base)


CONFIG_ERRORS: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
    ("missing_root", {"source": {"root": None}}, {}, "source.root is missing"),
    ("unknown_key", {"sync": {"batch_sise": 5}}, {}, "sync.batch_sise: unknown key"),
    ("wrong_type", {"sync": {"workers": "two"}}, {}, "sync.workers"),
    ("batch_size_129", {"sync": {"batch_size": 129}}, {}, "sync.batch_size = 129"),
    ("batch_size_env", {}, {"SYNCD_SYNC_BATCH_SIZE": "129"}, "SYNCD_SYNC_BATCH_SIZE"),
    ("missing_credentials", {}, {KEY_ENV: ""}, f"environment variable {KEY_ENV}"),
]


@pytest.mark.parametrize(
    ("sections", "env", "names"),
    [c[1:] for c in CONFIG_ERRORS],
    ids=[c[0] for c in CONFIG_ERRORS],
)
def test_config_error_is_one_line_naming_the_key_with_exit_2(
    tmp_path: Path,
    emu: Emulator,
    sections: dict[str, Any],
    env: dict[str, str],
    names: str,
) -> None:
    """A missing root, an unknown key, a wrong type, batch_size 129 (file or environment) or
    missing credentials: `syncd reconcile` exits 2 with exactly one line naming the key, and
    sends nothing."""
    config = _config(tmp_path, emu, **sections)

    result = run_syncd(
        ["reconcile", "--config", str(config)], env={KEY_ENV: emu.api_key, **env}, timeout=30
    )

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("syncd: ") and names in lines[0], lines[0]
    assert emu.stats()["requests_total"] == 0

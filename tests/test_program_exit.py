"""The `syncd` program's quick exit (`syncd.cli.program`), in real child processes.

The exit skips the interpreter's teardown, so these check what that teardown would otherwise
have done for us: the exit status, buffered output, and waiting for live threads.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run_program(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `body` (which replaces `cli.main`) then `cli.program()` in a child Python."""
    # buffered stdio, as most shells give it (PYTHONUNBUFFERED would hide a missing flush)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    script = "import sys\nfrom syncd import cli\n" + textwrap.dedent(body) + "\ncli.program()\n"
    return subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("exit_with", "status", "stderr"),
    [("None", 0, ""), ("0", 0, ""), ("3", 3, ""), ("'boom'", 1, "boom\n")],
)
def test_the_status_is_the_one_sys_exit_gives(
    tmp_path: Path, exit_with: str, status: int, stderr: str
) -> None:
    result = run_program(f"def main():\n    sys.exit({exit_with})\ncli.main = main", tmp_path)
    assert (result.returncode, result.stderr) == (status, stderr)


def test_buffered_output_is_written_before_the_exit(tmp_path: Path) -> None:
    """stdout and stderr to pipes hold small writes in their buffers until flushed."""
    result = run_program(
        """
        def main():
            sys.stdout.write("report" * 100)
            sys.stderr.write("a warning")
            sys.exit(0)
        cli.main = main
        """,
        tmp_path,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "report" * 100, "a warning")


def test_a_live_thread_gets_the_normal_exit_which_waits_for_it(tmp_path: Path) -> None:
    """The thread writes its marker only once the main thread has ended: the quick exit
    would have killed it first; the normal one waits for it."""
    marker = tmp_path / "thread-finished"
    result = run_program(
        f"""
        import threading
        def finish():
            threading.main_thread().join()
            open({str(marker)!r}, "w").close()
        def main():
            threading.Thread(target=finish).start()
            sys.exit(4)
        cli.main = main
        """,
        tmp_path,
    )
    assert result.returncode == 4
    assert marker.exists()


def test_the_real_program_reports_a_usage_error_with_status_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "syncd", "no-such-command"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "No such command 'no-such-command'" in result.stderr

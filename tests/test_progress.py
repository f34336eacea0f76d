"""The progress line of `syncd reconcile`: drawn on a terminal, silent elsewhere."""

from __future__ import annotations

import io

from syncd.progress import NoProgress, Progress, progress_for


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_the_stage_and_its_live_detail() -> None:
    """A redraw shows the current stage with the detail function's text at that moment."""
    out = io.StringIO()
    progress = Progress(out, interval=3600)
    done = [0]
    progress.stage("upload", lambda: f"{done[0]}/10 added")
    done[0] = 7
    progress._draw()
    progress.close()
    text = out.getvalue()
    assert "upload: 7/10 added" in text
    assert text.endswith("\r")  # the line is cleared for the summary that follows


def test_a_failing_detail_function_does_not_break_the_display() -> None:
    """A counter that cannot be read right now skips one redraw instead of raising."""
    out = io.StringIO()
    progress = Progress(out, interval=3600)
    progress.stage("scan", lambda: str(1 / 0))
    progress._draw()
    progress.close()
    assert "scan" not in out.getvalue()


def test_progress_is_only_shown_on_a_terminal() -> None:
    """Off a terminal (journald, a pipe, CI) the display is the silent one."""
    assert isinstance(progress_for(io.StringIO()), NoProgress)
    assert isinstance(progress_for(FakeTty()), Progress)

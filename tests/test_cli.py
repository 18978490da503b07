"""The `corral` command as a user runs it: a real process, its output and exit status."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from corral.cli.main import EXIT_BUG, EXIT_FAILURE, EXIT_USAGE, exit_status
from corral.errors import Conflict, CorralError, Internal, InvalidArgument, NotFound, Unavailable


def _corral() -> list[str]:
    exe = shutil.which("corral", path=str(Path(sys.executable).parent))
    assert exe, "the corral console script is not installed in this environment"
    return [exe]


def test_demo_runs_and_tells_the_story() -> None:
    out = subprocess.run([*_corral(), "demo"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "fetch_state(1, 0) -> 4" in out.stdout
    assert "Compacted" in out.stdout
    assert "nothing was written" in out.stdout
    assert "kill -9 replica-2: the next write committed" in out.stdout
    assert "digests agree again" in out.stdout and "linearizable read of /jobs/0 -> 'running'" in out.stdout


def test_unknown_command_is_a_usage_error() -> None:
    out = subprocess.run([*_corral(), "frobnicate"], capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_USAGE
    assert "invalid choice" in out.stderr


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (InvalidArgument("x"), EXIT_USAGE),
        (NotFound("x"), EXIT_USAGE),
        (Conflict("x"), EXIT_FAILURE),
        (Unavailable("x"), EXIT_FAILURE),
        (Internal("x"), EXIT_BUG),
    ],
)
def test_exit_status_by_error(err: CorralError, status: int) -> None:
    assert exit_status(err) == status

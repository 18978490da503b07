"""Terminal output shared by the CLI commands."""

from __future__ import annotations

import shutil

from rich.console import Console

# Piped output (scripts, CI logs) has no terminal width; rich would assume 80 columns and cut tables.
PIPE_WIDTH = 160


def console() -> Console:
    return Console(width=shutil.get_terminal_size((PIPE_WIDTH, 24)).columns)

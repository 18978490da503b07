"""Terminal output shared by the CLI commands."""

from __future__ import annotations

import shutil

from rich.console import Console

from corral.client.aio import NodeStatus

# Piped output (scripts, CI logs) has no terminal width; rich would assume 80 columns and cut tables.
PIPE_WIDTH = 160


def console() -> Console:
    return Console(width=shutil.get_terminal_size((PIPE_WIDTH, 24)).columns)


def node_state(st: NodeStatus) -> str:
    """A node's state for a status table: the coordinator's view (number, members, a replica joining),
    a replica's place in it (a member with a read lease serves linearizable reads)."""
    if not st.up:
        return f"[red]down[/] ({st.error})" if st.error else "[red]down[/]"
    if st.role == "coordinator":
        joining = f", {st.joining} joining" if st.joining else ""
        return f"[green]up[/], view {st.view}: {', '.join(st.view_members) or 'no members'}{joining}"
    if st.lease_valid:
        return "[green]up[/], member"
    return f"[green]up[/], [yellow]{st.membership or 'unknown'}[/] (not serving linearizable reads)"

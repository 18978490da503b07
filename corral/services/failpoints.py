"""Failpoints: make a node crash, pause, fail or drop messages at a named protocol step (tests only).

One `Failpoints` object per process; services call `hit(name)` at each named step. With nothing
armed, `hit` is a dictionary-emptiness check, so production pays nothing measurable.

Arming (gofail-like syntax, `[COUNT*]ACTION[(ARG)]`):
- from the environment at start: `CORRAL_FAILPOINTS="replica-1:replica.after_prepare_log=crash; ..."`
  (an entry without `node:` applies to every node started with that environment);
- from the config file: `[nodes.NAME.failpoints]`, `"name" = "action"`;
- at run time: the Admin.SetFailpoint RPC (`corral failpoint NODE NAME ACTION`).

Actions: `off`; `crash` (SIGKILL itself: no cleanup, exactly like `kill -9`); `pause` (SIGSTOP itself,
until someone sends SIGCONT); `sleep(MS)` (block the whole process MS ms, like a long GC pause);
`delay(MS)` (the caller awaits MS ms at that step only); `drop` (the caller drops the messages of that
step); `error` (the caller fails the step, as if the network broke). `3*drop` acts three times then
turns itself off.

Step names used by the services (`<dst>`/`<src>` is a node name):
- coordinator: `coordinator.send_prepare[.<dst>]`, `coordinator.send_commit[.<dst>]`,
  `coordinator.send_abort[.<dst>]` (before a batch goes out); `coordinator.on_vote` (before stepping
  votes); `coordinator.after_commit_log` (decision fsynced, nothing sent or answered yet);
  `coordinator.commit_acked.<src>` (a replica acknowledged a commit).
- replica: `replica.recv[.<src>]` (a batch arrives; drop/error fail the whole RPC);
  `replica.on_prepare`, `replica.on_commit`, `replica.on_abort` (before stepping that message);
  `replica.after_prepare_log`, `replica.after_commit_apply` (batch fsynced, reply not sent yet);
  `replica.read` (a client read arrives); `replica.read.skip_lock_wait=drop` makes linearizable reads
  skip waiting for prepared keys: a deliberately broken mode the nemesis test uses to show that its
  checker catches stale reads.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass

from corral.errors import InvalidArgument

ENV_FAILPOINTS = "CORRAL_FAILPOINTS"
ACTIONS = ("off", "crash", "pause", "sleep", "delay", "drop", "error")
_SPEC = re.compile(r"^\s*(?:(\d+)\*)?([a-z]+)(?:\((\d+)\))?\s*$")

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Action:
    kind: str
    arg_ms: int = 0
    remaining: int | None = None  # None: forever


def parse_action(spec: str) -> Action:
    """Parse `[COUNT*]ACTION[(ARG)]`.

    Raises:
        InvalidArgument: not that shape, or an unknown action.
    """
    m = _SPEC.match(spec)
    if not m or m.group(2) not in ACTIONS:
        raise InvalidArgument(
            f"failpoint action {spec!r} is not valid; use [COUNT*]ACTION[(MS)] with ACTION one of {', '.join(ACTIONS)}"
        )
    count, kind, arg = m.groups()
    if kind in ("sleep", "delay") and arg is None:
        raise InvalidArgument(f"failpoint action {kind} needs a duration in ms, e.g. {kind}(500)")
    return Action(kind, int(arg or 0), int(count) if count else None)


class Failpoints:
    """The armed failpoints of this process (see the module docstring)."""

    def __init__(self, node: str, armed: dict[str, str] | None = None, *, role: str = "") -> None:
        self.node = node
        self.node_role = role or node  # prefix of this node's step names: "coordinator" or "replica"
        self._armed: dict[str, Action] = {}
        for name, spec in (armed or {}).items():
            self.set(name, spec)

    @classmethod
    def from_environment(cls, node: str, configured: dict[str, str] | None = None, *, role: str = "") -> Failpoints:
        fp = cls(node, configured, role=role)
        for entry in re.split(r"[;,]", os.environ.get(ENV_FAILPOINTS, "")):
            if not entry.strip():
                continue
            target, sep, rest = entry.partition(":")
            scoped = bool(sep) and "=" in rest and "=" not in target
            if scoped and target.strip() != node:
                continue
            name, eq, spec = (rest if scoped else entry).partition("=")
            if not eq:
                raise InvalidArgument(f"{ENV_FAILPOINTS} entry {entry!r} must look like [node:]name=action")
            fp.set(name.strip(), spec.strip())
        return fp

    def set(self, name: str, spec: str) -> None:
        if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise InvalidArgument(f"failpoint name {name!r} is not valid (letters, digits, . _ -)")
        action = parse_action(spec)
        if action.kind == "off":
            self._armed.pop(name, None)
        else:
            self._armed[name] = action
        log.warning("node=%s failpoint %s=%s", self.node, name, spec)

    def armed(self) -> dict[str, str]:
        return {name: a.kind for name, a in self._armed.items()}

    @property
    def any_armed(self) -> bool:
        """False while no failpoint is armed: a hot path may skip naming the ones it would hit."""
        return bool(self._armed)

    def hit(self, *names: str) -> Action | None:
        """Evaluate the failpoints `names` (first armed wins). crash/pause/sleep act here; the caller
        handles delay/drop/error from the returned action."""
        if not self._armed:
            return None
        for name in names:
            action = self._armed.get(name)
            if action is None:
                continue
            if action.remaining is not None:
                action.remaining -= 1
                if action.remaining <= 0:
                    del self._armed[name]
            log.warning("node=%s failpoint %s fires: %s", self.node, name, action.kind)
            if action.kind == "crash":
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            elif action.kind == "pause":
                os.kill(os.getpid(), signal.SIGSTOP)
            elif action.kind == "sleep":
                time.sleep(action.arg_ms / 1000)  # blocks everything on purpose: a stalled process
            return action
        return None

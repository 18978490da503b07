"""Failpoint parsing and scoping (the actions themselves are exercised by the integration tests)."""

from __future__ import annotations

import pytest

from corral import InvalidArgument
from corral.services.failpoints import ENV_FAILPOINTS, Failpoints, parse_action


def test_parse_actions() -> None:
    assert parse_action("crash").kind == "crash"
    a = parse_action("3*drop")
    assert (a.kind, a.remaining) == ("drop", 3)
    assert parse_action("delay(250)").arg_ms == 250
    for bad in ("explode", "delay", "2*", "sleep(x)", ""):
        with pytest.raises(InvalidArgument):
            parse_action(bad)


def test_counted_action_turns_itself_off() -> None:
    fp = Failpoints("n", {"step": "2*drop"})
    assert fp.hit("step") is not None and fp.hit("step") is not None
    assert fp.hit("step") is None and fp.armed() == {}


def test_first_armed_name_wins_and_off_clears() -> None:
    fp = Failpoints("n")
    assert fp.hit("a", "b") is None
    fp.set("b", "error")
    action = fp.hit("a", "b")
    assert action is not None and action.kind == "error"
    fp.set("b", "off")
    assert fp.hit("b") is None


def test_environment_entries_are_scoped_to_their_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        ENV_FAILPOINTS, "replica-1:replica.on_prepare=crash; replica-2:replica.read=drop, any.step=error"
    )
    one = Failpoints.from_environment("replica-1")
    assert one.armed() == {"replica.on_prepare": "crash", "any.step": "error"}
    two = Failpoints.from_environment("replica-2", {"cfg.step": "drop"})
    assert two.armed() == {"cfg.step": "drop", "replica.read": "drop", "any.step": "error"}
    monkeypatch.setenv(ENV_FAILPOINTS, "nonsense")
    with pytest.raises(InvalidArgument, match="name=action"):
        Failpoints.from_environment("replica-1")

"""The linearizability checker (DESIGN "Invariants": the history of client operations is linearizable).

Hand-written histories with known verdicts, a brute-force cross-check on tiny random histories, generated
correct histories (always ok) and their mutations and buggy-replica variants (never ok), and a size check.
"""

from __future__ import annotations

import itertools
import random
import time
from bisect import bisect_right
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import InvalidArgument
from corral.sim.linearizability import CheckResult, Operation, OpKind, check

Time = int | float | None


def put(client: int, value: bytes, call: int, ret: Time, key: str = "k") -> Operation:
    return Operation(client, OpKind.PUT, key, value=value, call=call, ret=ret)


def get(client: int, output: bytes | None, call: int, ret: Time, key: str = "k") -> Operation:
    return Operation(client, OpKind.GET, key, output=output, call=call, ret=ret)


def delete(client: int, call: int, ret: Time, key: str = "k") -> Operation:
    return Operation(client, OpKind.DELETE, key, call=call, ret=ret)


def cas(client: int, expected: bytes | None, value: bytes, output: bool | None, span: tuple[int, Time]) -> Operation:
    """A cas over [call, ret] = `span`."""
    call, ret = span
    return Operation(client, OpKind.CAS, "k", value=value, expected=expected, output=output, call=call, ret=ret)


def assert_ok(history: list[Operation]) -> None:
    result = check(history, time_budget_s=10)
    assert result == CheckResult(ok=True), result.explanation


def assert_violation(history: list[Operation], key: str = "k") -> CheckResult:
    result = check(history, time_budget_s=10)
    assert not result.ok and not result.timed_out and result.key == key, result
    return result


# --- hand-written histories -------------------------------------------------------------------------------


def test_empty_history_is_ok() -> None:
    assert check([]) == CheckResult(ok=True)


def test_sequential_history_is_ok() -> None:
    """One client, no overlap: each read sees the latest write (None before the first and after a delete)."""
    assert_ok(
        [
            get(1, None, 0, 1),
            put(1, b"a", 2, 3),
            get(1, b"a", 4, 5),
            put(1, b"b", 6, 7),
            get(1, b"b", 8, 9),
            delete(1, 10, 11),
            get(1, None, 12, 13),
        ]
    )


def test_stale_read_after_completed_put() -> None:
    """put(b) returned before the get was called, so the get must see b, not the older a."""
    assert_violation([put(1, b"a", 0, 1), put(1, b"b", 2, 3), get(2, b"a", 4, 5)])


@pytest.mark.parametrize("seen", [b"a", b"b"])
def test_read_concurrent_with_put_may_see_either_value(seen: bytes) -> None:
    """The get overlaps put(b): it may take effect before or after it."""
    assert_ok([put(1, b"a", 0, 1), put(1, b"b", 2, 10), get(2, seen, 3, 4)])


def test_read_concurrent_with_put_cannot_see_absent() -> None:
    """put(a) completed before both; neither order of put(b) and the get leaves the key absent."""
    assert_violation([put(1, b"a", 0, 1), put(1, b"b", 2, 10), get(2, None, 3, 4)])


def test_two_readers_disagree_on_order_of_concurrent_puts() -> None:
    """Reader 3 sees a then b, reader 4 sees b then a: that needs put(a) < put(b) and put(b) < put(a)."""
    assert_violation(
        [
            put(1, b"a", 0, 100),
            put(2, b"b", 0, 100),
            get(3, b"a", 10, 20),
            get(3, b"b", 30, 40),
            get(4, b"b", 10, 20),
            get(4, b"a", 30, 40),
        ]
    )


def test_readers_agreeing_on_order_is_ok() -> None:
    """Same as above, but both readers see a then b."""
    history = [put(1, b"a", 0, 100), put(2, b"b", 0, 100), get(3, b"a", 10, 20), get(3, b"b", 30, 40)]
    assert_ok([*history, get(4, b"a", 10, 20), get(4, b"b", 30, 40)])


def test_two_cas_from_the_same_value_cannot_both_swap() -> None:
    """After the first swap the state is no longer a, so the second cas(a -> ...) must fail."""
    assert_violation([put(1, b"a", 0, 1), cas(2, b"a", b"b", True, (2, 5)), cas(3, b"a", b"c", True, (2, 5))])


def test_one_of_two_concurrent_cas_swaps() -> None:
    """One swaps, the other sees the swapped value and fails; a later read sees the winner's value."""
    history = [put(1, b"a", 0, 1), cas(2, b"a", b"b", True, (2, 5)), cas(3, b"a", b"c", False, (2, 5))]
    assert_ok([*history, get(1, b"b", 6, 7)])
    assert_violation([*history, get(1, b"c", 6, 7)])


def test_cas_that_fails_although_the_state_matches() -> None:
    """Nothing else runs: the state is a when cas(a -> b) runs, so it must swap."""
    assert_violation([put(1, b"a", 0, 1), cas(2, b"a", b"b", False, (2, 3))])


def test_cas_expecting_absent() -> None:
    """expected=None compares against an absent key; the swap is then visible to a later read."""
    assert_ok([cas(1, None, b"a", True, (0, 1)), get(2, b"a", 2, 3), cas(1, None, b"b", False, (4, 5))])
    assert_violation([cas(1, None, b"a", True, (0, 1)), get(2, None, 2, 3)])


def test_get_after_delete_returns_old_value() -> None:
    """The delete completed before the get was called, so the key must be absent."""
    assert_violation([put(1, b"a", 0, 1), delete(1, 2, 3), get(2, b"a", 4, 5)])


def test_get_of_a_value_nobody_wrote() -> None:
    """Only a was ever written; z cannot be read, even with every operation concurrent."""
    assert_violation([put(1, b"a", 0, 10), get(2, b"z", 0, 10)])


def test_unknown_put_observed_later_is_ok() -> None:
    """The client of put(b) timed out; a later read of b shows it took effect."""
    assert_ok([put(1, b"a", 0, 1), put(2, b"b", 2, None), get(3, b"b", 10, 11)])


def test_unknown_put_never_observed_is_ok() -> None:
    """The timed-out put(b) may never have taken effect (or after everything): reads of a are fine."""
    assert_ok([put(1, b"a", 0, 1), put(2, b"b", 2, None), get(3, b"a", 10, 11), get(3, b"a", 12, 13)])


def test_unknown_put_cannot_be_unseen() -> None:
    """Once b is read, a cannot come back: nobody wrote a after the put(b) that the first read proves."""
    assert_violation([put(1, b"a", 0, 1), put(2, b"b", 2, None), get(3, b"b", 10, 11), get(3, b"a", 12, 13)])


def test_unknown_put_cannot_take_effect_before_its_call() -> None:
    """The read of b returned at 1; put(b) was only called at 5."""
    assert_violation([get(1, b"b", 0, 1), put(2, b"b", 5, None)])


def test_unknown_delete_and_cas() -> None:
    """An unknown delete may explain an absent read; an unknown cas swaps only from its expected value."""
    assert_ok([put(1, b"a", 0, 1), delete(2, 2, None), get(3, None, 5, 6)])
    assert_ok([put(1, b"a", 0, 1), cas(2, b"a", b"b", None, (2, None)), get(3, b"b", 5, 6)])
    assert_violation([put(1, b"a", 0, 1), cas(2, b"x", b"b", None, (2, None)), get(3, b"b", 5, 6)])


def test_unknown_put_then_unknown_cas_chain() -> None:
    """Two timed-out ops explain the read together: put(x) then cas(x -> y); without the put the cas cannot swap."""
    chain = [put(1, b"a", 0, 1), put(2, b"x", 2, None), cas(3, b"x", b"y", None, (3, None))]
    assert_ok([*chain, get(4, b"y", 10, 11)])
    assert_violation([*chain[:1], *chain[2:], get(4, b"y", 10, 11)])


def test_unknown_get_is_ignored() -> None:
    """A read whose answer never arrived constrains nothing, whatever `output` holds."""
    assert_ok([put(1, b"a", 0, 1), get(2, b"nonsense", 2, None)])


def test_many_unknown_puts_do_not_blow_up_a_violation() -> None:
    """40 timed-out puts are candidates everywhere, yet proving the stale read wrong stays quick."""
    unknown = [put(10 + i, f"u{i}".encode(), 0, None) for i in range(40)]
    history = [*unknown, put(1, b"a", 0, 1), put(1, b"b", 2, 3), get(2, b"a", 100, 101)]
    started = time.monotonic()
    assert_violation(history)
    assert time.monotonic() - started < 5


def test_equal_timestamps_are_concurrent() -> None:
    """A return at 5 and a call at 5 are concurrent, so the get may precede put(a); at 6 it may not."""
    assert_ok([put(1, b"a", 0, 5), get(2, None, 5, 6)])
    assert_violation([put(1, b"a", 0, 5), get(2, None, 6, 7)])


def test_keys_are_independent() -> None:
    """Each key is its own register: a written to x is not readable from y, and x's writes do not hide y's."""
    assert_violation([put(1, b"a", 0, 1, key="x"), get(2, b"a", 2, 3, key="y")], key="y")
    # As one register this would be a stale read of a after put(b); per key it is fine.
    assert_ok(
        [put(1, b"a", 0, 1, key="x"), put(2, b"b", 2, 3, key="y"), get(1, b"a", 4, 5, key="x")],
    )


def test_stale_replica_after_completed_write_is_caught() -> None:
    """A replica lags: client 2 reads the new value from the leader while the write is still in flight, the
    write is acknowledged, then client 3 reads the old value from the lagging replica."""
    result = assert_violation(
        [put(1, b"v1", 0, 5), put(1, b"v2", 10, 20), get(2, b"v2", 12, 14), get(3, b"v1", 22, 25)]
    )
    assert "client=3 get -> b'v1' [call=22, ret=25]" in result.explanation


def test_explanation_names_the_operations_and_the_state() -> None:
    """The message shows the deepest prefix, its state and the op that could not be placed."""
    result = assert_violation([put(1, b"a", 0, 1), put(1, b"b", 2, 3), get(2, b"a", 4, 5), put(3, b"x", 2, None)])
    text = result.explanation
    assert "key 'k'" in text and "state there is b'b'" in text
    assert "#1 client=1 put b'b' [call=2, ret=3]" in text
    assert "#2 client=2 get -> b'a' [call=4, ret=5]" in text
    assert "ret=? (outcome unknown)" in text


def test_explanation_is_bounded() -> None:
    """A read overlapping 60 writes (8 at a time, like 8 clients) lists at most ~20 of them."""
    history = [put(i % 8, f"v{i}".encode(), i, i + 8) for i in range(60)] + [get(99, b"nope", 0, 100)]
    lines = assert_violation(history).explanation.splitlines()
    assert len(lines) < 40
    assert "  #60 client=99 get -> b'nope' [call=0, ret=100]" in lines


def test_time_budget_exceeded_is_not_ok() -> None:
    """With no time at all the verdict is unknown, never ok."""
    result = check([put(1, b"a", 0, 1), get(2, b"a", 2, 3)], time_budget_s=0)
    assert not result.ok and result.timed_out and result.key == "k"
    assert "time budget" in result.explanation


@pytest.mark.parametrize(
    ("op", "field"),
    [
        (put(1, b"a", 5, 4), "ret"),
        (Operation(1, OpKind.PUT, "k", call=0, ret=1), "value"),
        (Operation(1, OpKind.GET, "k", output=True, call=0, ret=1), "output"),
        (Operation(1, OpKind.CAS, "k", value=b"a", output=None, call=0, ret=1), "output"),
        (Operation(1, "scan", "k", call=0, ret=1), "kind"),  # type: ignore[arg-type]  # deliberately no OpKind
    ],
)
def test_malformed_operations_are_rejected(op: Operation, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check([op])
    assert caught.value.details["field"] == field


# --- a brute-force reference on tiny histories -------------------------------------------------------------


def brute_force(history: list[Operation]) -> bool:
    """Try every subset of unknown-outcome ops and every order respecting real time (ret < call strictly)."""
    keys = {op.key for op in history}
    return all(_brute_force_key([op for op in history if op.key == k]) for k in keys)


def _brute_force_key(ops: list[Operation]) -> bool:
    known = [op for op in ops if op.ret is not None]
    unknown = [op for op in ops if op.ret is None and op.kind != OpKind.GET]
    for n in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, n):
            for order in itertools.permutations(known + list(chosen)):
                if _valid(order):
                    return True
    return False


def _valid(order: tuple[Operation, ...]) -> bool:
    for i, a in enumerate(order):
        if any(b.ret is not None and b.ret < a.call for b in order[i + 1 :]):
            return False
    state: bytes | None = None
    for op in order:
        if op.kind == OpKind.PUT:
            state = op.value
        elif op.kind == OpKind.DELETE:
            state = None
        elif op.kind == OpKind.GET:
            if op.output != state:
                return False
        elif state == op.expected:
            if op.ret is not None and op.output is not True:
                return False
            state = op.value
        elif op.ret is not None and op.output is not False:
            return False
    return True


VALUES = st.sampled_from([None, b"a", b"b"])


@st.composite
def tiny_histories(draw: st.DrawFn) -> list[Operation]:
    """Up to 6 ops on two keys with small integer times (so ties), a fifth of outcomes unknown, any outputs."""
    history = []
    for client in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(list(OpKind)))
        call = draw(st.integers(0, 6))
        ret = None if draw(st.integers(0, 4)) == 0 else call + draw(st.integers(0, 4))
        output: bytes | bool | None = draw(st.booleans()) if kind == OpKind.CAS else draw(VALUES)
        key, value, expected = draw(st.sampled_from(["k", "j"])), draw(st.sampled_from([b"a", b"b"])), draw(VALUES)
        history.append(Operation(client, kind, key, value, expected, output, call, ret))
    return history


@settings(max_examples=400, deadline=None)
@given(tiny_histories())
def test_agrees_with_brute_force_on_tiny_histories(history: list[Operation]) -> None:
    result = check(history, time_budget_s=10)
    assert not result.timed_out
    assert result.ok == brute_force(history), result.explanation


# --- generated histories of a correct (or deliberately broken) register ------------------------------------


def run_register(
    rng: random.Random, *, n_ops: int, n_clients: int, n_keys: int, unknown_rate: float, read_lag: int = 0
) -> list[Operation]:
    """A run against a dict, each op taking effect at one instant inside [call, ret].

    Clients issue ops one after another; an op with unknown outcome takes effect (or not, half the time) at any
    later instant while its client moves on. With `read_lag`, half the reads go to a replica that shows the
    state as it was `read_lag` ticks earlier: the bug of acknowledging writes before every replica applied them.
    """
    keys = [f"k{i}" for i in range(n_keys)]
    free_at = [0] * n_clients
    plans = []
    for seq in range(n_ops):
        client = rng.randrange(n_clients)
        kind = rng.choices(list(OpKind), weights=[35, 35, 10, 20])[0]
        call = free_at[client] + rng.randint(0, 3)
        if rng.random() < unknown_rate:
            instant, ret, applies = call + rng.randint(0, 200), None, rng.random() < 0.5
            free_at[client] = call + 20  # the client timed out and carries on
        else:
            instant = call + rng.randint(0, 8)
            ret, applies = instant + rng.randint(0, 8), True
            free_at[client] = ret
        plans.append((instant, seq, client, kind, rng.choice(keys), call, ret, applies))
    state: dict[str, bytes | None] = {}
    changes: dict[str, tuple[list[int], list[bytes | None]]] = {k: ([], []) for k in keys}
    written: dict[str, list[bytes]] = {k: [] for k in keys}
    history = []
    for instant, seq, client, kind, key, call, ret, applies in sorted(plans):
        current, value = state.get(key), f"{client}:{seq}".encode()
        op = Operation(client, kind, key, call=call, ret=ret)
        if kind == OpKind.PUT:
            op, new = replace(op, value=value), value
        elif kind == OpKind.DELETE:
            new = None
        elif kind == OpKind.GET:
            seen = current
            if read_lag and rng.random() < 0.5:
                times, states = changes[key]
                at = bisect_right(times, instant - read_lag) - 1
                seen = states[at] if at >= 0 else None
            op, new = replace(op, output=seen if ret is not None else None), current
        else:
            expected = current if rng.random() < 0.6 else rng.choice([None, *written[key][-3:]])
            new = value if current == expected else current
            output = (current == expected) if ret is not None else None
            op = replace(op, value=value, expected=expected, output=output)
        if applies and new != current:
            state[key] = new
            changes[key][0].append(instant)
            changes[key][1].append(new)
        if op.value is not None:
            written[key].append(op.value)
        history.append(op)
    rng.shuffle(history)  # the checker must not depend on input order
    return history


def mutate_one_get(rng: random.Random, history: list[Operation]) -> tuple[list[Operation], str] | None:
    """Change one completed get to read a value it cannot have seen in any linearization, or None if no get.

    Preferred: a value first written after the get returned, or one whose (completed) write was overwritten by
    another completed write before the get was called; else a value nobody wrote. Values are unique per write.
    """
    gets = [i for i, op in enumerate(history) if op.kind == OpKind.GET and op.ret is not None]
    if not gets:
        return None
    index = rng.choice(gets)
    g = history[index]
    assert g.ret is not None
    same_key = [op for op in history if op.key == g.key]
    future = [op.value for op in same_key if op.value is not None and op.call > g.ret]
    effective = [op for op in same_key if op.ret is not None and (op.kind != OpKind.CAS or op.output is True)]
    effective = [op for op in effective if op.kind != OpKind.GET]
    overwrite_calls = [op.call for op in effective if op.ret is not None and op.ret < g.call]
    stale = [
        op.value
        for op in effective
        if op.value is not None and op.ret is not None and overwrite_calls and op.ret < max(overwrite_calls)
    ]
    bad = rng.choice(future + stale or [b"never written"])
    assert bad != g.output
    return [*history[:index], replace(g, output=bad), *history[index + 1 :]], g.key


SHAPES = {
    "seed": st.integers(0, 2**32 - 1),
    "n_ops": st.integers(1, 150),
    "n_clients": st.integers(1, 8),
    "n_keys": st.integers(1, 3),
    "unknown_rate": st.sampled_from([0.0, 0.05, 0.2]),
}


@settings(max_examples=150, deadline=None)
@given(**SHAPES)
def test_correct_runs_are_linearizable(seed: int, n_ops: int, n_clients: int, n_keys: int, unknown_rate: float) -> None:
    rng = random.Random(seed)
    history = run_register(rng, n_ops=n_ops, n_clients=n_clients, n_keys=n_keys, unknown_rate=unknown_rate)
    assert_ok(history)


@settings(max_examples=150, deadline=None)
@given(**SHAPES)
def test_a_mutated_read_is_caught(seed: int, n_ops: int, n_clients: int, n_keys: int, unknown_rate: float) -> None:
    rng = random.Random(seed)
    history = run_register(rng, n_ops=n_ops, n_clients=n_clients, n_keys=n_keys, unknown_rate=unknown_rate)
    mutated = mutate_one_get(rng, history)
    if mutated is not None:
        assert_violation(*mutated)


@pytest.mark.parametrize("seed", range(5))
def test_lagging_replica_is_caught(seed: int) -> None:
    """Reads served by a replica 15 ticks behind the leader (ops last up to 16 ticks) are not linearizable;
    the same workload with an up-to-date replica is."""

    def run(read_lag: int) -> list[Operation]:
        rng = random.Random(seed)
        return run_register(rng, n_ops=300, n_clients=4, n_keys=2, unknown_rate=0.02, read_lag=read_lag)

    assert_ok(run(read_lag=0))
    result = check(run(read_lag=15), time_budget_s=10)
    assert not result.ok and not result.timed_out, result


def test_size_5000_ops_8_clients_5_keys() -> None:
    """The fault-injection test's scale checks well within a generous budget (no timing asserted beyond it)."""
    history = run_register(random.Random(7), n_ops=5000, n_clients=8, n_keys=5, unknown_rate=0.02)
    assert sum(op.ret is None for op in history) > 50
    result = check(history, time_budget_s=20)
    assert result == CheckResult(ok=True), result

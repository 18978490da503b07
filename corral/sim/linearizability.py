"""Linearizability checker for key/value histories: Wing & Gong's search with Lowe's memoisation (as in porcupine).

Model. Each key is a register whose state is `bytes | None` (None: absent, the initial state). `put` sets it,
`delete` clears it, `get` must return it, and `cas(expected, value)` sets it to `value` and returns True when
the state equals `expected` (None meaning "absent"), else leaves it and returns False. A history is
linearizable when every operation can be given one instant inside its [call, ret] interval such that applying
the operations in the order of those instants to the register gives every recorded output. Linearizability is
compositional, so each key is checked on its own; a key's search space is much smaller than the whole's.

Algorithm (per key). The completed operations' call and return events sit in one doubly linked list sorted by
time. At each step the candidates for the next linearization point are the operations whose call comes before
the earliest return still in the list (an operation that has returned must precede everything called after
that). A candidate whose step on the register gives its recorded output is placed: its two events are unlinked
(dancing links, so undoing is O(1)) and pushed on a stack; when no candidate fits, the last placement is undone
and the next candidate after it tried. Lowe's memoisation prunes configurations already seen: a configuration
is (set of placed operations as an int bitset, register state), and two orders reaching the same set and state
have the same future. Configurations are recorded when the search leaves them, i.e. when proven dead. A
completed read that fits the state (a get of it, a cas that rightly failed) is placed at once and alone: it can
be moved to the front of any linearization from there, so if it leads nowhere, nothing does.

Unknown outcomes (`ret=None`, a client that timed out or crashed) may have taken effect at any instant after
their call, or never. Porcupine gives them a return at +infinity and requires them to be linearized too, which
is only sound because placing such an operation after every completed one is invisible; we make that explicit:
the search succeeds as soon as every *completed* operation is placed, and unknown ones are optional. Such an
operation never returns, so it never forces an order; it is a candidate from its call until the end. An
unknown `get` has no effect and is dropped. Completed candidates are tried first, so an unknown operation is
placed when a later observation needs it. Optional operations could multiply the search by 2^u, so it only
looks for linearizations in a canonical form, of which one exists whenever any linearization does (each rule
turns a linearization into a shorter or equally good one):
- an unknown placement that leaves the state unchanged (a cas that fails, a put of the current value) is
  skipped, and so is any put or delete right after an unknown placement (it would overwrite it unobserved:
  drop the earlier one); hence an unknown put or delete is placed only when a completed candidate (directly,
  or after unknown cas steps) fits the state it sets;
- unknown operations with the same effect are interchangeable once called (none of them ever returns), so
  only the first unplaced one by call time is tried;
- a dead configuration with placed unknown set U also kills the same configuration with any U' containing U:
  having placed more optional operations never opens an option (see `_dominated`). Whether the last
  placement was unknown is part of U, as it forbids a put or delete next.

Equal timestamps. A return at t and a call at t are treated as concurrent (calls sort before returns at equal
times, as in porcupine). Clocks are coarse (a fake clock delivers a response and the next request in one tick;
monotonic_ns readings in different processes tie), so equal times do not prove an order, and the checker must
only report violations the history proves: a false alarm from a fault-injection run wastes a day. A caller that
knows an order makes the times differ, e.g. the simulator advances its clock between a response and the next
request.

The checker does no I/O; the only clock it reads is for the optional time budget, and a search that runs out of
time says so (`timed_out=True`) instead of claiming a verdict.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from corral.errors import InvalidArgument
from corral.frozen import frozen

# The failure explanation lists at most this many operations and placed steps: enough context to see the
# conflict, short enough to read in a test failure.
EXPLAIN_OPS_MAX = 20
EXPLAIN_STEPS_MAX = 6
# The search reads the clock once per this many steps, so the budget check costs nothing measurable.
_CLOCK_EVERY_STEPS = 1024

State = bytes | None


class OpKind(StrEnum):
    """What a client asked the store to do."""

    PUT = "put"
    GET = "get"
    DELETE = "delete"
    CAS = "cas"


@frozen
class Operation:
    """One client operation on one key, with its invocation and response times."""

    client: int | str  # who issued it (for messages only)
    kind: OpKind
    key: str
    value: bytes | None = None  # put: the value written; cas: the new value (None: the cas deletes)
    expected: bytes | None = None  # cas: the value compared against (None = "key must be absent")
    output: bytes | bool | None = None  # get: value read (None = key absent); cas: True if it swapped
    call: int | float = 0  # invocation time
    ret: int | float | None = None  # response time; None = outcome unknown (client timed out / crashed)


@dataclass(frozen=True)
class CheckResult:
    """The verdict: `ok` only when every key is proven linearizable."""

    ok: bool
    timed_out: bool = False
    key: str | None = None  # first key found not linearizable (or, if timed out, the first unfinished key)
    explanation: str = ""


_PUT, _GET, _DELETE, _CAS = range(4)
_KIND_CODES = {OpKind.PUT: _PUT, OpKind.GET: _GET, OpKind.DELETE: _DELETE, OpKind.CAS: _CAS}


def check(history: Iterable[Operation], *, time_budget_s: float | None = None) -> CheckResult:
    """Decide whether `history` is linearizable, key by key (in sorted order), within `time_budget_s` if given.

    A violation proven in one key wins over a timeout in another: `timed_out` is set only when no key failed.

    Raises:
        InvalidArgument: an operation is malformed (unknown kind, ret before call, a put without a value,
            a completed get whose output is a bool or a completed cas whose output is not).
    """
    by_key: dict[str, list[tuple[int, Operation]]] = {}
    for index, op in enumerate(history):
        _validate(index, op)
        if op.ret is None and op.kind == OpKind.GET:
            continue  # a read with unknown outcome constrains nothing
        by_key.setdefault(op.key, []).append((index, op))
    deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
    unfinished: list[str] = []
    for key in sorted(by_key):
        status, explanation = _check_key(key, by_key[key], deadline)
        if status == "violation":
            return CheckResult(ok=False, key=key, explanation=explanation)
        if status == "timeout":
            unfinished.append(key)
    if unfinished:
        text = f"time budget of {time_budget_s} s exceeded; verdict unknown for keys {unfinished!r}"
        return CheckResult(ok=False, timed_out=True, key=unfinished[0], explanation=text)
    return CheckResult(ok=True)


def _validate(index: int, op: Operation) -> None:
    problem, field = "", ""
    if op.kind not in _KIND_CODES:
        problem, field = f"kind is {op.kind!r}; expected one of put, get, delete, cas", "kind"
    elif op.ret is not None and op.ret < op.call:
        problem, field = f"ret is {op.ret}, before call {op.call}; swapped?", "ret"
    elif op.kind == OpKind.PUT and op.value is None:
        problem, field = "a put needs a value; record a delete instead", "value"
    elif op.ret is not None and op.kind == OpKind.GET and isinstance(op.output, bool):
        problem, field = f"a get's output is bytes or None, got {op.output!r}", "output"
    elif op.ret is not None and op.kind == OpKind.CAS and not isinstance(op.output, bool):
        problem, field = f"a completed cas's output is True or False, got {op.output!r}", "output"
    if problem:
        where = f"history[{index}] ({op.kind} of key {op.key!r} by client {op.client!r})"
        raise InvalidArgument(f"{where}: {problem}", field=field)


def _dominated(failed: dict[tuple[int, State], list[int]], known: int, unknown: int, state: State) -> bool:
    """Whether (known, unknown, state) is proven dead: some dead config had the same known set and state and
    placed a subset of `unknown`. Every completion of ours is one of its completions with our extra unknown
    operations left out (they are optional and never constrain the order), so it has none either."""
    dead = failed.get((known, state))
    return dead is not None and any(d & unknown == d for d in dead)


def _check_key(key: str, ops: Sequence[tuple[int, Operation]], deadline: float | None) -> tuple[str, str]:
    """Search one key's history; return ("ok" | "violation" | "timeout", explanation)."""
    n = len(ops)
    kinds = [_KIND_CODES[op.kind] for _, op in ops]
    values = [op.value for _, op in ops]
    expects = [op.expected for _, op in ops]
    seen: list[State] = [None if isinstance(op.output, bool) else op.output for _, op in ops]  # what a get read
    swapped = [op.output is True for _, op in ops]  # whether a completed cas swapped
    calls = [op.call for _, op in ops]
    rets = [op.ret for _, op in ops]
    is_known = [r is not None for r in rets]
    known_total = sum(is_known)

    # Completed operations' events: entry 2i is op i's call, 2i+1 its return; sentinels HEAD and TAIL.
    # Sort by time, calls before returns at equal times (concurrent; see the module docstring).
    head, tail = 2 * n, 2 * n + 1
    nxt = [tail] * (2 * n + 2)
    prv = [head] * (2 * n + 2)

    def event_key(e: int) -> tuple[int | float, int, int]:
        t = rets[e >> 1] if e & 1 else calls[e >> 1]
        assert t is not None
        return (t, e & 1, e >> 1)

    events = sorted((e for i in range(n) if is_known[i] for e in (2 * i, 2 * i + 1)), key=event_key)
    for a, b in zip([head, *events], [*events, tail], strict=True):
        nxt[a], prv[b] = b, a
    # Unknown-outcome operations by call time; sentinels UHEAD and UTAIL.
    uhead, utail = n, n + 1
    unxt = [utail] * (n + 2)
    uprv = [uhead] * (n + 2)
    pending = sorted((i for i in range(n) if not is_known[i]), key=lambda i: (calls[i], i))
    for a, b in zip([uhead, *pending], [*pending, utail], strict=True):
        unxt[a], uprv[b] = b, a
    unknown_cas = [i for i in pending if kinds[i] == _CAS]
    # twins[u]: the unknown ops before u in that order with the same effect. Once called they stay available
    # to the end, so they are interchangeable and only the first unplaced one is tried.
    twins = [0] * n
    groups: dict[tuple[int, State, State], int] = {}
    for i in pending:
        effect = (kinds[i], values[i] if kinds[i] != _DELETE else None, expects[i] if kinds[i] == _CAS else None)
        twins[i] = groups.get(effect, 0)
        groups[effect] = twins[i] | 1 << i
    # Set in `unknown_bits` when the last placement was an unknown op, which nothing has observed yet.
    after_unknown = 1 << n

    state: State = None
    known_bits = unknown_bits = 0
    placed_known = 0
    stack: list[int] = []  # placed operations, in linearization order
    saved: list[tuple[State, int]] = []  # (state, unknown_bits) before each placement
    failed: dict[tuple[int, State], list[int]] = {}  # dead configs: (known bits, state) -> unknown bit sets
    # The deepest dead end (most completed ops placed, then fewest unknown): (placed known, stack, states, op)
    best: tuple[int, list[int], list[State], int] = (-1, [], [], -1)
    e = nxt[head]  # cursor over completed candidates
    u = -1  # cursor over unknown candidates; -1 = not started at this config
    fresh = True  # at a config not yet scanned for a read
    steps = 0
    while placed_known < known_total:
        steps += 1
        if deadline is not None and steps % _CLOCK_EVERY_STEPS == 1 and time.monotonic() >= deadline:
            return "timeout", ""
        pick, new, child_unknown, dead_end = -1, state, unknown_bits & ~after_unknown, False
        if fresh:
            # A completed read that fits (a get of the state, a cas that rightly failed) goes first and alone: in
            # any linearization from here it can be moved to the front, so if it leads nowhere nothing does.
            fresh, x = False, nxt[head]
            while not x & 1:
                i = x >> 1
                if (kinds[i] == _GET and seen[i] == state) or (
                    kinds[i] == _CAS and not swapped[i] and state != expects[i]
                ):
                    if _dominated(failed, known_bits | 1 << i, child_unknown, state):
                        dead_end = True
                    else:
                        pick = i
                    break
                x = nxt[x]
        if pick < 0 and not dead_end and not e & 1:  # a completed operation's call: try placing it now
            i = e >> 1
            kind = kinds[i]
            if kind == _PUT:
                new, fits = values[i], True
            elif kind == _DELETE:
                new, fits = None, True
            elif kind == _CAS and state == expects[i]:
                new, fits = values[i], swapped[i]
            else:
                fits = False  # a read: it would have been picked above
            # An unknown op overwritten before anything observes it is pointless: the sequence without it
            # reaches the same config with more options, so it is not searched.
            if unknown_bits & after_unknown and kind in (_PUT, _DELETE):
                fits = False
            if fits and not _dominated(failed, known_bits | 1 << i, child_unknown, new):
                pick = i
            else:
                e = nxt[e]
                continue
        elif pick < 0 and not dead_end:
            # `e` is the earliest return among unplaced completed ops: only unknown ops called by then remain.
            first_ret = rets[e >> 1]
            assert first_ret is not None
            u = unxt[uhead] if u == -1 else u
            # What an unknown put or delete must set for the next completed op to fit: a get's output or a
            # swapping cas's expected value, or what an unknown cas turns into one (None: anything, as a cas
            # that failed fits many states).
            wanted: set[State] | None = set()
            x = nxt[head]
            while wanted is not None and x != e:
                i = x >> 1
                if kinds[i] == _GET:
                    wanted.add(seen[i])
                elif swapped[i]:
                    wanted.add(expects[i])
                elif kinds[i] == _CAS:
                    wanted = None
                x = nxt[x]
            grown = wanted is not None
            while wanted is not None and grown:
                grown = False
                for i in unknown_cas:
                    if calls[i] > first_ret:
                        break
                    if not unknown_bits >> i & 1 and values[i] in wanted and expects[i] not in wanted:
                        wanted.add(expects[i])
                        grown = True
            while u != utail and calls[u] <= first_ret:
                kind = kinds[u]
                if kind == _PUT or (kind == _CAS and state == expects[u]):
                    new = values[u]
                else:
                    new = None if kind == _DELETE else state
                # Skip a placement that leaves the state as it is, that nothing next could use, that overwrites
                # an unobserved unknown op, or that has an unplaced twin before it: in each case a sequence
                # without it does as well (module docstring).
                useless = (
                    new == state
                    or (kind != _CAS and (unknown_bits & after_unknown or (wanted is not None and new not in wanted)))
                    or twins[u] & ~unknown_bits
                )
                child_unknown = unknown_bits | 1 << u | after_unknown
                if not useless and not _dominated(failed, known_bits, child_unknown, new):
                    pick = u
                    break
                u = unxt[u]
        if pick >= 0:
            stack.append(pick)
            saved.append((state, unknown_bits))
            state, unknown_bits = new, child_unknown
            if is_known[pick]:
                known_bits, placed_known = known_bits | 1 << pick, placed_known + 1
                c, r = 2 * pick, 2 * pick + 1
                nxt[prv[c]], prv[nxt[c]] = nxt[c], prv[c]
                nxt[prv[r]], prv[nxt[r]] = nxt[r], prv[r]
            else:
                unxt[uprv[pick]], uprv[unxt[pick]] = unxt[pick], uprv[pick]
            e, u, fresh = nxt[head], -1, True
            continue
        # Dead end: no candidate fits. Remember it, then undo the last placement and try the next candidate;
        # after a read placed alone (see above), its parent is a dead end too.
        if placed_known > best[0] or (placed_known == best[0] and len(stack) < len(best[1])):
            blocking = e
            while not blocking & 1:
                blocking = nxt[blocking]
            best = (placed_known, stack.copy(), [s for s, _ in saved[1:]] + [state] if stack else [], blocking >> 1)
        while True:
            if not stack:
                return "violation", _explain(key, ops, *best[1:])
            dead = failed.setdefault((known_bits, state), [])
            dead[:] = [d for d in dead if d & unknown_bits != unknown_bits]  # now dominated by the new entry
            dead.append(unknown_bits)
            p = stack.pop()
            read = is_known[p] and (kinds[p] == _GET or (kinds[p] == _CAS and not swapped[p]))
            state, unknown_bits = saved.pop()
            if is_known[p]:
                c, r = 2 * p, 2 * p + 1
                nxt[prv[r]] = prv[nxt[r]] = r  # undo in reverse order of unlinking
                nxt[prv[c]] = prv[nxt[c]] = c
                known_bits, placed_known = known_bits & ~(1 << p), placed_known - 1
                e, u = nxt[c], -1
            else:
                unxt[uprv[p]] = uprv[unxt[p]] = p
                u = unxt[p]  # `e` is unchanged: the completed set, hence its earliest return, is the same
            if not read:
                break
    return "ok", ""


def _describe(index: int, op: Operation) -> str:
    """One line per operation: history index, client, what it did and saw, and its interval."""
    if op.kind == OpKind.PUT:
        what = f"put {op.value!r}"
    elif op.kind == OpKind.DELETE:
        what = "delete"
    elif op.kind == OpKind.GET:
        what = f"get -> {op.output!r}"
    else:
        outcome = "unknown" if op.ret is None else "swapped" if op.output else "not swapped"
        what = f"cas {op.expected!r} -> {op.value!r} ({outcome})"
    ret = "? (outcome unknown)" if op.ret is None else op.ret
    return f"#{index} client={op.client!r} {what} [call={op.call}, ret={ret}]"


def _explain(
    key: str, ops: Sequence[tuple[int, Operation]], placed: list[int], states: list[State], blocking: int
) -> str:
    """Describe the deepest partial linearization (`states[j]`: the state after `placed[j]`) and where it stuck."""
    state = states[-1] if states else None
    known_total = sum(op.ret is not None for _, op in ops)
    placed_known = sum(ops[i][1].ret is not None for i in placed)
    block_index, block_op = ops[blocking]
    lines = [
        f"key {key!r} is not linearizable ({len(ops)} operations, {known_total} completed).",
        f"Deepest partial linearization: {placed_known} of {known_total} completed operations "
        f"(+{len(placed) - placed_known} of unknown outcome) placed; the state there is {state!r}.",
        "Its last steps, in linearization order:",
    ]
    steps = list(zip(placed, states, strict=True))[-EXPLAIN_STEPS_MAX:]
    lines += [f"  {_describe(*ops[i])} => {s!r}" for i, s in steps] or ["  (none)"]
    lines.append(
        f"Stuck there: #{block_index} returned at {block_op.ret}, so it comes before anything called later, "
        "and no operation that may come next leads to a linearization. It is:"
    )
    lines.append(f"  {_describe(block_index, block_op)}")
    # The operations around the dead end: from the first of the last steps to the blocking return.
    recent = [ops[i][1].call for i in placed[-EXPLAIN_STEPS_MAX:]]
    start = min([*recent, block_op.call])
    assert block_op.ret is not None
    end = block_op.ret
    near = [(i, op) for i, op in ops if op.call <= end and (op.ret is None or op.ret >= start) and i != block_index]
    near.sort(key=lambda item: (item[1].call, item[0]))
    omitted = max(0, len(near) - (EXPLAIN_OPS_MAX - 1))
    shown = sorted([*near[omitted:], (block_index, block_op)], key=lambda item: (item[1].call, item[0]))
    placed_indexes = {ops[i][0] for i in placed}
    lines.append(f"Operations of this key overlapping [{start}, {end}], by call time (* = placed above):")
    if omitted:
        lines.append(f"  ({omitted} with earlier calls not shown)")
    lines += [f"  {'*' if i in placed_indexes else ' '} {_describe(i, op)}" for i, op in shown]
    return "\n".join(lines)

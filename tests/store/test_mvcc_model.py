"""Property test: the store's reads at every revision equal a naive model that copies everything.

The model keeps a full dict per revision; the store keeps rows per change. Random sequences of puts,
deletes, multi-key transactions and compactions must give the same answer to every get and range at
every readable revision, and the same Compacted errors below the compaction point.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from corral import Compacted, Delete, MVCCStore, Put

KEYS = st.sampled_from(["a", "ab", "abc", "b", "b/1", "b/2", "é", "z"])
PREFIXES = st.sampled_from(["", "a", "ab", "b", "b/", "é", "q"])
VALUES = st.binary(max_size=8)

# key -> (value, create_revision, mod_revision, version)
State = dict[str, tuple[bytes, int, int, int]]


class StoreVersusCopies(RuleBasedStateMachine):
    @initialize()
    def open_store(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.path = Path(self.tmp.name) / "m.db"
        # synchronous=OFF: this test checks logic, not fsync; the crash test checks durability.
        self.store = MVCCStore(self.path, synchronous="OFF")
        self.history: list[State] = [{}]
        self.compacted = 0

    def teardown(self) -> None:
        if hasattr(self, "store"):
            self.store.close()
            self.tmp.cleanup()

    def _commit(self, writes: list[Put | Delete]) -> None:
        state = dict(self.history[-1])
        rev = len(self.history)
        for w in writes:
            if isinstance(w, Put):
                old = state.get(w.key)
                state[w.key] = (w.value, old[1] if old else rev, rev, old[3] + 1 if old else 1)
            else:
                state.pop(w.key, None)
        assert self.store.txn(writes).revision == rev
        self.history.append(state)

    @rule(key=KEYS, value=VALUES)
    def put(self, key: str, value: bytes) -> None:
        self._commit([Put(key, value)])

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        self._commit([Delete(key)])

    @rule(data=st.data())
    def txn(self, data: st.DataObject) -> None:
        keys = data.draw(st.lists(KEYS, min_size=1, max_size=4, unique=True))
        writes: list[Put | Delete] = [
            Put(k, data.draw(VALUES)) if data.draw(st.booleans()) else Delete(k) for k in keys
        ]
        self._commit(writes)

    @precondition(lambda self: len(self.history) > 1)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        rev = data.draw(st.integers(self.compacted, len(self.history) - 1))
        self.store.compact(rev)
        self.compacted = rev

    @precondition(lambda self: len(self.history) > 1)
    @rule(data=st.data(), key=KEYS)
    def get(self, data: st.DataObject, key: str) -> None:
        rev = data.draw(st.integers(1, len(self.history) - 1))
        if rev < self.compacted:
            with pytest.raises(Compacted):
                self.store.get(key, revision=rev)
            return
        kv = self.store.get(key, revision=rev)
        want = self.history[rev].get(key)
        got = None if kv is None else (kv.value, kv.create_revision, kv.mod_revision, kv.version)
        assert got == want

    @precondition(lambda self: len(self.history) > 1)
    @rule(data=st.data(), prefix=PREFIXES)
    def range(self, data: st.DataObject, prefix: str) -> None:
        rev = data.draw(st.integers(max(1, self.compacted), len(self.history) - 1))
        got = [(kv.key, kv.value, kv.mod_revision) for kv in self.store.range(prefix, revision=rev)]
        want = sorted((k, v[0], v[2]) for k, v in self.history[rev].items() if k.startswith(prefix))
        assert got == sorted(want, key=lambda t: t[0].encode())

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = MVCCStore(self.path, synchronous="OFF")

    @invariant()
    def current_state_matches(self) -> None:
        if not hasattr(self, "store"):
            return
        assert self.store.revision == len(self.history) - 1
        now = {kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in self.store.range("")}
        assert now == self.history[-1]


StoreVersusCopies.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
test_store_matches_copy_everything_model = StoreVersusCopies.TestCase

"""Property test: the store's reads at every revision equal a naive model that copies everything.

The model keeps a full dict per revision; the store keeps rows per change (ordered by revision, found
through its in-memory key index). Random sequences of puts, deletes, multi-key transactions,
compactions, rolled-back transactions and reopens must give the same answer to every get, range and
change feed at every readable revision, the same live keys per lease, and the same Compacted errors
below the compaction point.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from corral import Compacted, Delete, EventKind, MVCCStore, Put

KEYS = st.sampled_from(["a", "ab", "abc", "b", "b/1", "b/2", "é", "z"])
PREFIXES = st.sampled_from(["", "a", "ab", "b", "b/", "é", "q"])
VALUES = st.binary(max_size=8)
LEASES = st.sampled_from([0, 0, 7, 8])

# key -> (value, create_revision, mod_revision, version, lease)
State = dict[str, tuple[bytes, int, int, int, int]]


class Rollback(Exception):
    pass


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
                state[w.key] = (w.value, old[1] if old else rev, rev, old[3] + 1 if old else 1, w.lease)
            else:
                state.pop(w.key, None)
        assert self.store.txn(writes).revision == rev
        self.history.append(state)

    @rule(key=KEYS, value=VALUES, lease=LEASES)
    def put(self, key: str, value: bytes, lease: int) -> None:
        self._commit([Put(key, value, lease)])

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
        got = None if kv is None else (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
        assert got == want

    @precondition(lambda self: len(self.history) > 1)
    @rule(data=st.data(), prefix=PREFIXES)
    def changes(self, data: st.DataObject, prefix: str) -> None:
        # Above the compaction point, so each change's previous state is readable too.
        start = data.draw(st.integers(self.compacted + 1, len(self.history)))
        got = [
            (e.kind, e.kv.key, e.kv.mod_revision, e.kv.value, None if e.prev_kv is None else e.prev_kv.mod_revision)
            for e in self.store.changes(start, prefix=prefix)
        ]
        want = []
        for rev in range(start, len(self.history)):
            before, after = self.history[rev - 1], self.history[rev]
            for key in sorted(set(before) | set(after), key=str.encode):
                if not key.startswith(prefix) or before.get(key) == after.get(key):
                    continue
                prev = None if key not in before else before[key][2]
                if key in after:
                    want.append((EventKind.PUT, key, rev, after[key][0], prev))
                else:
                    want.append((EventKind.DELETE, key, rev, b"", prev))
        assert got == want

    @rule(key=KEYS, value=VALUES)
    def rolled_back_txn(self, key: str, value: bytes) -> None:
        """A transaction that fails after applying leaves no trace, in the rows or the index."""
        with pytest.raises(Rollback), self.store.transaction() as tx:
            tx.apply([Put(key, value, 7)])
            tx.apply([Delete("z")])
            raise Rollback

    @rule()
    def keys_with_lease(self) -> None:
        for lease in (7, 8):
            want = sorted((k for k, v in self.history[-1].items() if v[4] == lease), key=str.encode)
            assert self.store.keys_with_lease(lease) == want

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
        now = {
            kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in self.store.range("")
        }
        assert now == self.history[-1]


StoreVersusCopies.TestCase.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
test_store_matches_copy_everything_model = StoreVersusCopies.TestCase

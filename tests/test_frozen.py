"""`@frozen` record types: value semantics at run time, immutability enforced by the type checker."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from corral.core.messages import Vote
from corral.errors import InvalidArgument
from corral.frozen import frozen
from corral.model import Put


@frozen
class _Point:
    x: int
    y: int = 0


def test_equality_and_hash_follow_the_fields() -> None:
    assert _Point(1, 2) == _Point(1, 2)
    assert _Point(1, 2) != _Point(2, 1)
    assert hash(_Point(1, 2)) == hash(_Point(1, 2))
    assert len({_Point(1, 2), _Point(1, 2), _Point(3)}) == 2
    assert {Vote(7, True): "a"}[Vote(7, True)] == "a"


def test_slots_only_no_instance_dict() -> None:
    assert not hasattr(_Point(1), "__dict__")
    with pytest.raises(AttributeError):
        _Point(1).z = 3  # type: ignore[attr-defined]


def test_post_init_still_validates_and_normalises() -> None:
    put = Put("k", bytearray(b"v"))  # type: ignore[arg-type]  # callers may pass any bytes-like
    assert put.value == b"v"
    assert type(put.value) is bytes
    with pytest.raises(InvalidArgument):
        Put("", b"v")


def test_the_type_checker_rejects_assigning_a_field(tmp_path: Path) -> None:
    source = tmp_path / "mutates.py"
    source.write_text(
        textwrap.dedent(
            """
            from corral.model import Put

            p = Put("k", b"v")
            p.value = b"w"
            """
        )
    )
    out, _, status = mypy_api.run(["--no-incremental", "--follow-imports=silent", "--cache-dir=/dev/null", str(source)])
    assert status == 1, out
    assert 'Property "value" defined in "Put" is read-only' in out

"""The thin public namespace agrees with what it exports, and every export says what it is for."""

from __future__ import annotations

import corral
from corral import errors


def test_all_names_exist_and_are_documented() -> None:
    for name in corral.__all__:
        obj = getattr(corral, name)
        if name != "__version__":
            assert obj.__doc__, f"corral.{name} has no docstring"


def test_every_error_is_exported_and_has_a_code() -> None:
    leaves = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.CorralError)]
    codes = [cls.code for cls in leaves]
    assert len(codes) == len(set(codes)), "error codes must be unique"
    for cls in leaves:
        assert cls.__name__ in corral.__all__, f"{cls.__name__} is not exported from corral"


def test_errors_round_trip_by_code() -> None:
    err = errors.Compacted("gone", compact_revision=7)
    back = errors.from_code(err.code, err.message, err.details)
    assert type(back) is errors.Compacted and back.compact_revision == 7 and back.message == "gone"
    unknown = errors.from_code("no-such-code", "x")
    assert type(unknown) is errors.CorralError
    assert errors.Conflict("x").retryable and not errors.InvalidArgument("x").retryable
    assert "bug in Corral" in errors.Internal("broken").message


def test_errors_pickle() -> None:
    import pickle

    err = errors.Unavailable("down", outcome_unknown=True)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is errors.Unavailable and back.outcome_unknown and back.message == "down"

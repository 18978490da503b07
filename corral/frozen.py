"""`@frozen`: an immutable record type, checked by the type checker rather than at run time.

`@dataclass(frozen=True)` enforces immutability at run time by sending every field of every
`__init__` through `object.__setattr__`, which makes construction about 3x slower (0.64 against 0.21
µs for three fields, measured here on CPython 3.11). The write path builds a dozen such objects per
put on every node (peer messages, events, effects, records, model writes): frozen construction was
~7% of each node's CPU at 64 clients, and lifting it gave +6.7% puts/s (stop 17, clusters run side
by side). attrs makes the same trade (`attrs.frozen` with `on_setattr` off is a plain slots class).

So a `@frozen` class is, at run time, a slots dataclass with equality and a field hash (what
`frozen=True` gives, less the setattr guard); to mypy (strict, part of `make test`) it is frozen
through `dataclass_transform(frozen_default=True)`, so any assignment to a field is a type error.
`__post_init__` may still normalise a field with `object.__setattr__`, as with frozen dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, eq_default=True)
def frozen(cls: type[_T]) -> type[_T]:
    """A slots dataclass with `__eq__` and `__hash__` over its fields, frozen for the type checker."""
    return dataclass(slots=True, unsafe_hash=True)(cls)

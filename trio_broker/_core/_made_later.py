"""A tuple whose items are made only when read (:class:`MadeLater`): the base of a replica's
decoded group held as columns (``_append_columns.AppendColumns``) and of a run's results
(``_appended_run.AppendedRun``), which stand where the core expects tuples.

Each subclass says how to make its items (:meth:`MadeLater._make`), its length and its
pickling from what it holds; this class makes the items once, the first time anything reads
one, keeps them, and is the tuple of them for every read: an index or a slice, an iteration,
a comparison with a tuple (both ways: a tuple's ``==`` returns NotImplemented for another
type), its hash and its repr. What a tuple has and these lack (``+``, ``*``, ordering) raises
``TypeError``: nothing uses it on a group's commands or results
(tests/test_revcols_lazy.py)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar, overload

T = TypeVar("T")


class MadeLater(Sequence[T]):
    """The tuple :meth:`_make` returns, made the first time an item is read."""

    __slots__ = ("_made",)

    def __init__(self) -> None:
        self._made: tuple[T, ...] | None = None

    def _make(self) -> tuple[T, ...]:
        raise NotImplementedError

    def made(self) -> tuple[T, ...]:
        """The items as a tuple (made the first time)."""
        made = self._made
        if made is None:
            made = self._made = self._make()
        return made

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: Any) -> Any:
        return self.made()[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self.made())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MadeLater | tuple):
            return self.made() == (other.made() if isinstance(other, MadeLater) else other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.made())  # (what the equal tuple's is)

    def __repr__(self) -> str:
        return repr(self.made())


__all__ = ["MadeLater"]

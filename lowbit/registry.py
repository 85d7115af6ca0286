"""One small name -> object registry, shared by lowbit's catalogues.

:class:`Registry` maps names to objects (classes, factories, entries) and raises the same
``ValueError`` everywhere for an unknown name (listing the known names) or a duplicate one.
This module imports nothing from lowbit, so any layer can use it.

Example::

    >>> reg = Registry("colour")
    >>> reg.register("red", 1)
    1
    >>> @reg.register("blue")
    ... def _blue(): ...
    >>> reg.names()
    ['blue', 'red']
    >>> reg.get("green")
    Traceback (most recent call last):
    ...
    ValueError: unknown colour 'green'; known: blue, red
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, overload

__all__ = ["Registry", "unknown_name"]

T = TypeVar("T")


def unknown_name(kind: str, name: object, known: Iterable[str]) -> ValueError:
    """The ``ValueError`` for an unknown ``name`` of ``kind``, listing the ``known`` names
    (sorted): ``unknown <kind> '<name>'; known: a, b, c``. Returned, not raised."""
    return ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(known))}")


class Registry(Generic[T]):
    """Named objects of one ``kind`` (the word used in error messages, e.g. ``"quantizer"``).

    Names are strings; iteration, :meth:`names` and :meth:`items` are sorted by name.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name: str, obj: T) -> T: ...

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    def register(self, name: str, obj: Any = None) -> Any:
        """Add ``obj`` under ``name`` and return it; without ``obj``, a decorator that does.

        Raises ValueError for a non-string or empty name, or one already registered.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty str, got {name!r}")
        if obj is None:
            def deco(o: T) -> T:
                self.register(name, o)
                return o

            return deco
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        """The object named ``name``; ValueError listing the known names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise unknown_name(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        """Sorted names."""
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs, sorted by name."""
        return sorted(self._items.items())

    def copy(self) -> Registry[T]:
        """A registry of the same kind holding the same entries (e.g. for a test that registers
        and must leave the original untouched)."""
        new: Registry[T] = Registry(self.kind)
        new._items = dict(self._items)
        return new

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"

"""Named choices: encoders, losses, optimizers, schedulers, datasets, item tables, tasks.

Each registry maps a name to an object (a class or a factory) and, optionally, the config class
that validates its settings. Packages own their registry instance (`userseq.encoders.ENCODERS`,
`userseq.losses.LOSSES`, ...) and register their built-in entries with the decorator; user code
adds entries the same way through `userseq.register_encoder` & co.:

    @userseq.register_encoder("tiny", config=TinyConfig)
    class Tiny(SequenceEncoder): ...

An unknown name is a `ConfigError` that lists the registered names and suggests the closest one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from userseq.core.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered choice: its name, the object, its config class (or None) and a one-line
    help."""

    name: str
    obj: T
    config: type | None
    help: str


class Registry(Generic[T]):
    """A name -> object table with a decorator to fill it and clear errors for unknown names."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind, self.hint = kind, hint
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, config: type | None = None,
                 aliases: tuple[str, ...] = (), help: str | None = None,
                 replace: bool = False) -> Any:
        """Register `obj` under `name` (also usable as a decorator). Registering a taken name is an
        error unless `replace=True` (tests and notebooks re-running a cell)."""

        def add(o: T) -> T:
            for key in (name, *aliases):
                taken = key in self._entries or key in self._aliases
                if taken and not replace:
                    raise ConfigError(f"{self.kind} '{key}' is already registered; "
                                      "choose another name "
                                      "or pass replace=True.")
            doc = (getattr(o, "__doc__", None) or "").strip().split("\n")[0]
            doc = help if help is not None else doc
            self._entries[name] = Entry(name, o, config, doc)
            for a in aliases:
                self._aliases[a] = name
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        for a in [a for a, n in self._aliases.items() if n == name]:
            del self._aliases[a]

    def canonical(self, name: str) -> str:
        """The registered name for `name` or one of its aliases; unknown names raise ConfigError."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        close = difflib.get_close_matches(str(name), [*self._entries, *self._aliases], n=1)
        maybe = f" Did you mean '{close[0]}'?" if close else ""
        hint = f" {self.hint}" if self.hint else ""
        names = ", ".join(self.names())
        raise ConfigError(f"unknown {self.kind} '{name}'.{maybe} Choose one of: {names}.{hint}")

    def get(self, name: str) -> Entry[T]:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"


def decorator(registry: Registry[Any]) -> Callable[..., Any]:
    """`registry.register` with a docstring naming the registry (the public `register_*`
    functions)."""

    def register(name: str, obj: Any = None, **kw: Any) -> Any:
        return registry.register(name, obj, **kw)

    register.__doc__ = (f"Register a {registry.kind} under `name` (decorator or direct call); "
                        "see `Registry.register`.")
    return register

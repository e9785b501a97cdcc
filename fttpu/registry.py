"""Things by name (methods, model families, config sections): `register` adds one, `get` finds it or
fails with the valid names. A leaf module beside fttpu.errors."""

from typing import Generic, Iterator, TypeVar

from fttpu.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
  """A table of `kind`s by name (a method, a model family, ...)."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str, entry: T) -> T:
    if name in self._entries:
      raise ValueError(f"{self.kind} {name!r} is registered twice")
    self._entries[name] = entry
    return entry

  def unregister(self, name: str) -> None:
    del self._entries[name]

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise ConfigError(f"unknown {self.kind} {name!r}; valid: {self.names()}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def items(self):
    return self._entries.items()

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)

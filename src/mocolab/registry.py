"""Name -> class tables for the pieces a contributor adds: pretraining methods and transfer tasks.

A method or task registers itself where it is defined (`@METHODS.register`), so adding one
touches one file and one preset. The built-in ones are imported the first time a table is read:
a table names its package as a string, so this module imports nothing of mocolab (the layers
keep going one way: see docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import Any


class Registry:
    """Items with a unique `name` attribute (classes or instances), looked up by name."""

    def __init__(self, kind: str, builtins: str):
        self.kind = kind
        # the module whose import registers the built-in items (loaded on first lookup)
        self.builtins = builtins
        self._items: dict[str, Any] = {}

    def register(self, item):
        """Adds `item` under `item.name`; usable as a class decorator. Registering a second item
        under a taken name is an error (a typo would otherwise replace a method silently)."""
        name = item.name
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"a {self.kind} named {name!r} is registered already ({self._items[name]!r})")
        self._items[name] = item
        return item

    def remove(self, name: str) -> None:
        """Takes `name` out (a test's or a notebook's item)."""
        self._items.pop(name, None)

    def _load(self) -> dict[str, Any]:
        importlib.import_module(self.builtins)
        return self._items

    def names(self) -> list[str]:
        return list(self._load())

    def get(self, name: str):
        """The item registered as `name`; KeyError naming the known ones."""
        items = self._load()
        if name not in items:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(items)}")
        return items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._load()

    def __iter__(self):
        return iter(list(self._load().values()))


# moco.method=<name>: mocolab.methods.base.Method subclasses
METHODS = Registry("method", "mocolab.methods")
# mocolab detect | segment (task.kind): mocolab.transfer.task.Task instances
TASKS = Registry("transfer task", "mocolab.transfer.tasks")


def method_specific_keys() -> set[str]:
    """The config keys (group.name) that some method lists in its `config_keys`: each applies only
    to the methods that list it; every other key applies to all (config checks, sweep axes)."""
    return set().union(*(m.config_keys for m in METHODS))

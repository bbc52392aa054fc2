"""One bounded least-recently-used cache (decoded images, feature maps)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable


class LRUCache:
    """At most ``size`` values; reading a key makes it the most recent, and storing one
    more than ``size`` drops the least recently used.

    ``get(key, load)`` returns the cached value for ``key``, or ``load()`` stored under it.
    A data-loader worker or a process has its own copy.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"cache size must be >= 1, got {size}")
        self.size, self._items = size, OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable, load: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = load()
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

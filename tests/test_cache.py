"""refsr.cache.LRUCache: the one bounded cache (decoded images in training, feature maps in match)."""

from __future__ import annotations

import pytest

from refsr.cache import LRUCache


def test_lru_keeps_the_recently_used_and_loads_once():
    loads = []
    cache = LRUCache(2)
    get = lambda k: cache.get(k, lambda: loads.append(k) or k.upper())  # noqa: E731
    assert [get("a"), get("b"), get("a")] == ["A", "B", "A"] and loads == ["a", "b"]
    get("c")  # "b" is the least recently used: dropped, "a" stays
    assert len(cache) == 2 and "a" in cache and "b" not in cache and "c" in cache
    get("b")
    assert loads == ["a", "b", "c", "b"] and "a" not in cache
    with pytest.raises(ValueError, match="cache size must be >= 1, got 0"):
        LRUCache(0)

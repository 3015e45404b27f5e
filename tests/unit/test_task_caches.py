"""The task's in-memory parts in front of RocksDB: the state cache evicts the least
recently used keys (it used to drop everything at its bound), and the seen-id Bloom filter
is rebuilt bigger once it has taken as many ids as it was sized for."""

from __future__ import annotations

import pytest

from kwheel.runtime import dedup
from kwheel.runtime.dedup import SeenIds
from kwheel.runtime.state_cache import StateCache
from kwheel.state.store import TaskStore


@pytest.fixture
def store(tmp_path):
    s = TaskStore(tmp_path / "c-0")
    yield s
    s.close()


def _commit(store: TaskStore, cache: StateCache, values: dict[bytes, dict[str, object]]) -> None:
    for tag, d in values.items():
        cache.load(tag)
        cache.stage(tag, "k", d)
    store.apply(cache.changes(), store.applied_offset + 1)
    cache.committed()


def test_the_least_recently_used_keys_are_evicted_not_all(store):
    cache = StateCache(store, max_keys=8)
    _commit(store, cache, {bytes([i]): {"n": i} for i in range(8)})
    assert list(cache.clean) == [bytes([i]) for i in range(8)]
    assert cache.load(bytes([0])) == {"n": 0}  # used again: now the most recent
    assert cache.load(bytes([20])) == {}  # a ninth key: over the bound
    assert len(cache.clean) == 8 - 8 // 8 and bytes([0]) in cache.clean
    assert bytes([1]) not in cache.clean and bytes([2]) not in cache.clean
    assert cache.load(bytes([1])) == {"n": 1}  # evicted values come back from the store


def test_a_commit_over_the_bound_evicts_too(store):
    cache = StateCache(store, max_keys=8)
    _commit(store, cache, {bytes([i]): {"n": i} for i in range(12)})
    assert len(cache.clean) <= 8
    for i in range(12):
        assert cache.load(bytes([i])) == {"n": i}


def test_the_bloom_filter_is_rebuilt_bigger_when_full_and_forgets_expired_ids(store, monkeypatch):
    monkeypatch.setattr(dedup, "MIN_BLOOM_CAPACITY", 10)
    seen = SeenIds(store)
    seen.load()
    assert seen.capacity == 10
    offset = 0
    capacities = []
    for batch in range(5):  # 5 batches of 6 ids: the filter fills at the 2nd and 5th
        for i in range(6):
            seen.add(f"id-{batch}-{i}".encode(), 1000 * batch + i)
        horizon = 2000 if batch >= 3 else 0  # the 4th commit expires batches 0 and 1
        changes = seen.changes(horizon)
        store.apply(changes.entries, offset, changes.next_batch, seen.pending)
        offset += 1
        seen.committed(changes)
        capacities.append(seen.capacity)
    assert capacities == [10, 24, 24, 24, 36]
    kept = set(store.seen_ids())
    assert kept == {f"id-{b}-{i}".encode() for b in (2, 3, 4) for i in range(6)}
    # rebuilt from the store after the last commit: the expired ids are not counted
    assert (seen.capacity, seen.added) == (2 * len(kept), len(kept))
    assert all(rid in seen.bloom for rid in kept)  # no false negatives

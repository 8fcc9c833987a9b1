"""The document's names and ddf's additions: enum values, configuration, the shared manager,
batches, statistics, errors."""

import pytest

import ddf_cache
from ddf_cache import CACHE, CACHE_CONFIG, CacheBackend, CacheConfig, CacheError, CacheManager


def test_cache_backend_members_and_ini_values():
    assert {b.name: b.value for b in CacheBackend} == {
        "NONE": "none", "PICKLE": "pickle", "MEMCACHED": "memcached",
        "MEMCACHED_PICKLE": "memcached_pickle", "REDIS": "redis", "REDIS_PICKLE": "redis_pickle",
    }


def test_config_keywords_and_ddf_keys(tmp_path):
    c = CacheConfig(backend=CacheBackend.MEMCACHED, ttl=60, enabled=False, namespace="app:",
                    memcached_servers=[("localhost", 11211), ("::1", 11212), "h:1"], timeout=1.5)
    assert (c.backend, c.ttl, c.enabled, c.namespace) == (CacheBackend.MEMCACHED, 60, False, "app:")
    assert c.memcached_servers == [("localhost", 11211), ("::1", 11212), ("h", 1)]
    with pytest.raises(CacheError, match="redis_port"):
        CacheConfig(redis_port="not a port")
    with pytest.raises(CacheError, match="no_such_key") as e:
        CacheConfig(no_such_key=1)
    # Named as the keyword argument it was, with the known ones; no INI line number.
    assert str(e.value).startswith('CacheConfig: unknown keyword argument "no_such_key"'), e.value
    assert "pickle_dir" in str(e.value) and "line" not in str(e.value)
    with pytest.raises(ValueError):
        CacheConfig(namespace="a\nb")


def test_shared_and_separate_managers(tmp_path):
    assert CacheManager() is CACHE is CacheManager()
    assert CACHE.config is CACHE_CONFIG
    other = CacheManager(CacheConfig(pickle_dir=str(tmp_path)))
    assert other is not CACHE


def test_batches_stats_and_errors(tmp_path):
    cache = CacheManager(CacheConfig(pickle_dir=str(tmp_path)))
    cache.set_many({"a": 1, "b": [2]})
    cache.set_many([("c", "")], ttl=60)
    assert cache.get_many(["a", "b", "c", "missing"]) == [1, [2], "", None]
    assert cache.delete_many(["a", "b", "missing"]) == 2
    stats = cache.stats()
    assert stats["sets"] == 3 and stats["hits"] == 3 and stats["misses"] == 1
    with pytest.raises(CacheError, match="TTL of zero"):
        cache.set("k", 1, ttl=0)
    with pytest.raises(ValueError, match="ttl"):
        cache.set("k", 1, ttl=-1)
    assert issubclass(CacheError, Exception) and ddf_cache.CacheError is CacheError


def test_disabled_cache_misses_and_accepts_writes(tmp_path):
    cache = CacheManager(CacheConfig(enabled=False, pickle_dir=str(tmp_path)))
    assert cache.set("k", 1) is True and cache.get("k") is None

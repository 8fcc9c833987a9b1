"""The same bytes as the Python DDF on the servers: redis-py and pymemcache read what ddf_cache
writes and the other way round (namespace="" as the original has no key prefix)."""

import datetime
import json
import pickle

import pytest

from ddf_cache import CacheBackend, CacheConfig, CacheError, CacheManager

VALUES = ["text", "", "ünï", 0, -7, 2**70, 1.5, True, None, [1, "a", [2]], {"a": {"b": [1, 2]}}]
PICKLE_ONLY = [(1, "t"), {1, 2}, frozenset({3}), b"\x00raw", bytearray(b"ba"), {1: "int key", (1, 2): "tuple key"}]


def redis_cache(server, backend, **kw):
    return CacheManager(CacheConfig(backend=backend, redis_host="127.0.0.1", redis_port=server.port,
                                    namespace="", fallback="error", **kw))


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_redis_json_bytes_are_json_dumps(value, redis_server, redis_py):
    cache = redis_cache(redis_server, CacheBackend.REDIS)
    cache.set("k", value)
    assert redis_py.get("k") == json.dumps(value).encode()
    redis_py.set("from-python", json.dumps(value).encode())
    assert cache.get("from-python") == value


@pytest.mark.parametrize("value", VALUES + PICKLE_ONLY, ids=repr)
def test_redis_pickle_bytes_are_python_pickles(value, redis_server, redis_py):
    cache = redis_cache(redis_server, CacheBackend.REDIS_PICKLE)
    cache.set("k", value)
    assert redis_py.get("k") == pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        redis_py.set("from-python", pickle.dumps(value, protocol))
        got = cache.get("from-python")
        assert got == value and type(got) is type(value)


def test_restricted_decoder_refuses_objects_unless_trusted(redis_server, redis_py, tmp_path):
    class Boom:
        def __reduce__(self):
            return (open, (str(tmp_path / "executed"), "w"))

    redis_py.set("evil", pickle.dumps(Boom()))
    redis_py.set("date", pickle.dumps(datetime.date(2024, 1, 2)))
    cache = redis_cache(redis_server, CacheBackend.REDIS_PICKLE)
    with pytest.raises(CacheError):
        cache.get("evil")
    assert not (tmp_path / "executed").exists()
    with pytest.raises(CacheError):
        cache.get("date")
    trusted = redis_cache(redis_server, CacheBackend.REDIS_PICKLE, trust_pickles=True)
    assert trusted.get("date") == datetime.date(2024, 1, 2)
    trusted.set("obj", datetime.datetime(2024, 1, 2, 3, 4))
    assert trusted.get("obj") == datetime.datetime(2024, 1, 2, 3, 4)


@pytest.mark.parametrize("value", VALUES + [b"raw bytes", (1, 2), {1, 2}], ids=repr)
def test_memcached_python_memcache_flags_both_ways(value, memcached_server, memcached_server2):
    from pymemcache import serde
    from pymemcache.client.hash import HashClient

    servers = [("127.0.0.1", memcached_server.port), ("127.0.0.1", memcached_server2.port)]
    mc = HashClient(servers, serde=serde.pickle_serde, connect_timeout=2, timeout=2, default_noreply=False)
    cache = CacheManager(CacheConfig(backend=CacheBackend.MEMCACHED, memcached_servers=servers,
                                     namespace="", fallback="error"))
    for i in range(8):  # several keys: each lands on the server pymemcache's hashing picks
        cache.set(f"k{i}", value)
        got = mc.get(f"k{i}")
        assert got == value and type(got) is type(value)
        mc.set(f"from-python{i}", value)
        got = cache.get(f"from-python{i}")
        assert got == value and type(got) is type(value)
    mc.close()

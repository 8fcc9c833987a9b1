"""One test per defect class of the Python DDF (NOTES.md §1); each would fail against the
original and passes here."""

import multiprocessing
import os
import threading
import time

import pytest

from conftest import run_python
from ddf_cache import CacheBackend, CacheConfig, CacheError, CacheManager, cache_with_invalidation


def file_cache(tmp_path, **kw):
    return CacheManager(CacheConfig(backend=CacheBackend.PICKLE, pickle_dir=str(tmp_path / "c"), **kw))


def redis_cache(server, **kw):
    return CacheManager(CacheConfig(backend=CacheBackend.REDIS, redis_host="127.0.0.1",
                                    redis_port=server.port, fallback="error", **kw))


def memcached_cache(*servers, backend=CacheBackend.MEMCACHED, **kw):
    return CacheManager(CacheConfig(backend=backend, fallback="error",
                                    memcached_servers=[("127.0.0.1", s.port) for s in servers], **kw))


# 1. File backend without a ttl never hit (float > None), and ignored a per-call TTL.
def test_1_file_backend_hits_without_ttl_and_honours_a_per_call_ttl(tmp_path):
    cache = file_cache(tmp_path)
    assert cache.config.ttl is None
    cache.set("k", "v")
    assert cache.get("k") == "v"
    cache.set("short", "v", ttl=1)
    time.sleep(2.5)  # expiry is a lower bound: no margin to lose on a slow machine
    assert cache.get("short") is None
    assert cache.get("k") == "v"


# 2. File keys were joined into paths: ../x, absolute paths and / escaped the directory.
def test_2_file_keys_never_leave_the_cache_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    before = sorted(os.listdir(tmp_path)), sorted(os.listdir(outside))
    cache = file_cache(tmp_path)
    keys = ["../x", "../outside/y", str(outside / "z"), "a/b/c", "/etc/passwd-ddf"]
    for k in keys:
        cache.set(k, k)
    for k in keys:
        assert cache.get(k) == k
    assert sorted(os.listdir(outside)) == before[1]
    assert set(os.listdir(tmp_path)) - set(before[0]) == {"c"}
    assert not os.path.exists("/etc/passwd-ddf")
    assert cache.delete("../x") and cache.get("../x") is None


# 3. invalidate_pattern used glob/KEYS patterns: `svc?`, `svc[1]:`, `svc*` misbehaved.
@pytest.mark.parametrize("kind", ["file", "redis"])
def test_3_invalidate_pattern_takes_the_prefix_literally(kind, tmp_path, redis_server, redis_py):
    cache = file_cache(tmp_path) if kind == "file" else redis_cache(redis_server)
    cache.flush_all()
    for k in ["svc1:a", "svc2:b", "svcX", "svc[1]:a", "svc?x", "svc*y", "other"]:
        cache.set(k, 1)
    assert cache.invalidate_pattern("svc?") == 1  # only "svc?x"
    assert cache.invalidate_pattern("svc[1]:") == 1
    assert cache.get("svc[1]:a") is None and cache.get("svc1:a") == 1
    assert cache.invalidate_pattern("svc*") == 1
    assert cache.get("svc2:b") == 1 and cache.get("other") == 1
    assert cache.invalidate_pattern("svc") == 3  # svc1:a, svc2:b, svcX


# 4. flush_all was FLUSHDB on Redis (and a server-wide flush_all on Memcached).
def test_4_flush_all_removes_only_this_caches_keys(redis_server, redis_py, memcached_server):
    from pymemcache.client.base import Client

    redis_py.set("other-app:key", b"keep")
    cache = redis_cache(redis_server)
    cache.set("mine", 1)
    cache.flush_all()
    assert cache.get("mine") is None
    assert redis_py.get("other-app:key") == b"keep"

    mc = Client(("127.0.0.1", memcached_server.port))
    mc.set("other-app:key", b"keep")
    cache = memcached_cache(memcached_server)
    cache.set("mine", 1)
    cache.flush_all()
    assert cache.get("mine") is None
    assert mc.get("other-app:key") == b"keep"
    mc.close()


def _writer(port, n, worker):
    cache = memcached_cache(type("S", (), {"port": port})())
    for i in range(n):
        cache.set(f"reg:{worker}:{i}", i)


# 5. The Memcached key registry lost 47-57% of keys under 4 concurrent writers.
def test_5_memcached_invalidate_pattern_finds_every_key_written_concurrently(memcached_server):
    memcached_cache(memcached_server).invalidate_pattern("reg:")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(memcached_server.port, 200, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = memcached_cache(memcached_server)
    assert cache.invalidate_pattern("reg:") == 800
    assert cache.get("reg:0:0") is None


# 6. Memcached: only the first server was used; keys with spaces failed; values over 1 MB
#    vanished (and the previous value with them); memcached_pickle did not work at all.
def test_6_memcached_uses_every_server_odd_keys_big_values_and_pickle_mode(memcached_server, memcached_server2):
    from pymemcache.client.base import Client

    cache = memcached_cache(memcached_server, memcached_server2)
    cache.invalidate_pattern("")
    for i in range(64):
        cache.set(f"spread:{i}", i)
    counts = []
    for s in (memcached_server, memcached_server2):
        c = Client(("127.0.0.1", s.port))
        counts.append(int(c.stats()[b"curr_items"]))
        c.close()
    assert all(n > 0 for n in counts), counts
    cache.set("a key with spaces\tand\ncontrol", "ok")
    assert cache.get("a key with spaces\tand\ncontrol") == "ok"
    cache.set("big", "previous")
    with pytest.raises(CacheError):
        cache.set("big", "x" * (2 * 1024 * 1024))
    assert cache.get("big") == "previous"
    pickled = memcached_cache(memcached_server, backend=CacheBackend.MEMCACHED_PICKLE, namespace="p:")
    pickled.set("t", {"a": (1, 2.5, None)})
    assert pickled.get("t") == {"a": (1, 2.5, None)}


# 7. Server down: each operation took ~4 s (refused) or blocked ~26 s (stopped) and hung.
def test_7_a_stopped_server_does_not_hang_operations(tmp_path):
    from conftest import start_redis

    server = start_redis()
    cache = CacheManager(CacheConfig(backend=CacheBackend.REDIS, redis_host="127.0.0.1",
                                     redis_port=server.port, timeout=0.5, connect_timeout=0.5,
                                     fallback="none"))
    cache.set("k", 1)
    os.kill(server.pid, 19)  # SIGSTOP: connections stay open, nothing answers
    try:
        start = time.monotonic()
        for _ in range(5):
            try:
                cache.get("k")
            except CacheError:
                pass
        assert time.monotonic() - start < 30  # generous: 5 ops, 0.5 s timeouts, the breaker
    finally:
        os.kill(server.pid, 18)
        server.stop()


# 8. JSON backends: bytes/sets/dates failed to store then read as a miss; falsy values were
#    hard to tell from a miss.
def test_8_json_backend_keeps_falsy_values_and_refuses_what_json_cannot_hold(redis_server, redis_py):
    cache = redis_cache(redis_server)
    for i, v in enumerate([0, "", [], {}, False, 0.0, None]):
        cache.set(f"falsy:{i}", v)
        got = cache.get(f"falsy:{i}")
        assert got == v and type(got) is type(v)
    assert cache.get("falsy:6") is None  # a stored None reads as None: get_many tells it apart
    for bad in [b"bytes", {1, 2}, __import__("datetime").date(2024, 1, 1), float("nan")]:
        with pytest.raises(CacheError, match="JSON"):
            cache.set("bad", bad)
    assert redis_py.exists("ddf:bad") == 0


# 9. The decorator keyed only on str/int/float/bool arguments, shared entries across functions
#    with one key_prefix, and never cached None.
def test_9_decorator_keys_on_every_argument_and_function_and_caches_none(tmp_path):
    cache = file_cache(tmp_path)
    calls = []

    @cache_with_invalidation(ttl=60, key_prefix="shared", cache=cache)
    def total(xs):
        calls.append(("total", xs))
        return sum(xs)

    @cache_with_invalidation(ttl=60, key_prefix="shared", cache=cache)
    def count(xs):
        calls.append(("count", xs))
        return len(xs)

    @cache_with_invalidation(cache=cache)
    def nothing(x):
        calls.append(("nothing", x))
        return None

    assert total([1, 2]) == 3 and total([5, 5]) == 10 and total([1, 2]) == 3
    assert count([1, 2]) == 2
    assert nothing("a") is None and nothing("a") is None
    assert calls == [("total", [1, 2]), ("total", [5, 5]), ("count", [1, 2]), ("nothing", "a")]
    assert total.invalidate() == 2


# 10. Configuration: pickle_dir was never read from the INI file; one bad value silently
#     dropped the rest of the section.
def test_10_ini_pickle_dir_is_read_and_a_bad_value_is_an_error(tmp_path):
    ini = tmp_path / "ddf.ini"
    ini.write_text(f"[cache]\nbackend = pickle\npickle_dir = {tmp_path / 'mine'}\n")
    config = CacheConfig.from_ini(ini)
    assert config.pickle_dir == str(tmp_path / "mine")
    CacheManager(config).set("k", 1)
    assert os.listdir(tmp_path / "mine")
    ini.write_text("[cache]\nbackend = redis\nttl = soon\nredis_host = cache.internal\n")
    with pytest.raises(CacheError, match="ttl"):
        CacheConfig.from_ini(ini)
    # The global configuration reports it and runs uncached rather than with other settings.
    out = run_python("from ddf_cache import CACHE_CONFIG, CACHE\nprint(CACHE_CONFIG.enabled, CACHE.get('x'))",
                     env={"DDF_CONFIG": str(ini)}, tmp_path=tmp_path)
    assert out.split() == ["False", "None"]

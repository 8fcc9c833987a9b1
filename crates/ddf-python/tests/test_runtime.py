"""Python's runtime: threads sharing one manager, the GIL released during backend calls, a
forked child with working connections and resilience probe, cleanup at exit."""

import os
import threading
import time

import pytest

from conftest import run_python, start_memcached, start_redis
from ddf_cache import CacheBackend, CacheConfig, CacheError, CacheManager


def redis_cache(server, **kw):
    kw.setdefault("fallback", "error")
    return CacheManager(CacheConfig(backend=CacheBackend.REDIS_PICKLE, redis_host="127.0.0.1",
                                    redis_port=server.port, **kw))


@pytest.mark.parametrize("kind", ["file", "redis", "memcached"])
def test_threads_share_one_manager(kind, tmp_path, redis_server, memcached_server):
    if kind == "file":
        cache = CacheManager(CacheConfig(backend=CacheBackend.PICKLE, pickle_dir=str(tmp_path)))
    elif kind == "redis":
        cache = redis_cache(redis_server, namespace="threads:")
    else:
        cache = CacheManager(CacheConfig(backend=CacheBackend.MEMCACHED, fallback="error",
                                         memcached_servers=[("127.0.0.1", memcached_server.port)],
                                         namespace="threads:"))
    written = set()  # every value written to the shared key: a read must be one of them or None
    lock = threading.Lock()
    errors = []

    def worker(t):
        try:
            for i in range(150):
                cache.set(f"own:{t}", [t, i])
                assert cache.get(f"own:{t}") == [t, i]  # nobody else writes it
                with lock:
                    written.add((t, i))
                cache.set("shared", [t, i])
                got = cache.get("shared")
                assert got is not None and tuple(got) in written, got
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors[0]
    assert cache.stats()["errors"] == 0


def test_checker_catches_a_planted_violation():
    written = {(0, 1)}
    assert (0, 2) not in written  # what the worker's check would reject


def test_the_gil_is_released_during_a_backend_call():
    server = start_redis()
    try:
        cache = redis_cache(server, timeout=10, connect_timeout=10, fallback="none")
        cache.set("k", 1)
        os.kill(server.pid, 19)  # SIGSTOP: the next call waits up to its 10 s timeout
        blocked = threading.Thread(target=lambda: _swallow(cache.get, "k"))
        blocked.start()
        time.sleep(0.3)
        # This line runs while the call waits: were the GIL held, the main thread could not
        # have woken before the call ended.
        assert blocked.is_alive()
        os.kill(server.pid, 18)
        blocked.join(30)
    finally:
        os.kill(server.pid, 18)
        server.stop()


def _swallow(f, *a):
    try:
        f(*a)
    except CacheError:
        pass


@pytest.mark.parametrize("kind", ["redis", "memcached"])
def test_a_forked_child_gets_its_own_connections_and_probe(kind, tmp_path):
    # A server of its own: the test stops it (SIGSTOP) while the child probes.
    server = start_redis() if kind == "redis" else start_memcached()
    try:
        _fork_and_probe(kind, server, tmp_path)
    finally:
        os.kill(server.pid, 18)
        server.stop()


def _fork_and_probe(kind, server, tmp_path):
    common = dict(namespace="fork:", fallback="pickle", pickle_dir=str(tmp_path), timeout=0.5,
                  connect_timeout=0.5, breaker_failures=1, breaker_retry=0.2)
    if kind == "redis":
        import redis

        cache = redis_cache(server, **common)
        raw = redis.Redis(port=server.port)
        raw_get = lambda key: raw.get(key)  # noqa: E731
    else:
        from pymemcache.client.base import Client

        cache = CacheManager(CacheConfig(backend=CacheBackend.MEMCACHED_PICKLE,
                                         memcached_servers=[("127.0.0.1", server.port)], **common))
        raw = Client(("127.0.0.1", server.port), connect_timeout=2, timeout=2)
        raw_get = lambda key: raw.get(key)  # noqa: E731
    cache.set("parent", "before")  # the parent's connection exists
    assert cache.get("parent") == "before"
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 1
        try:
            assert cache.get("parent") == "before"
            cache.set("child", "hello")
            assert cache.get("child") == "hello"
            # The probe: the server stops answering, the breaker opens (fallback serves), the
            # server answers again: writes reach the server again.
            os.kill(server.pid, 19)
            try:
                cache.set("during", 1)
                cache.get("during")
                assert cache.stats()["fallback"] > 0, cache.stats()
            finally:
                os.kill(server.pid, 18)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                cache.set("after", "x")
                if raw_get("fork:after") is not None:
                    code = 0
                    break
                time.sleep(0.1)
        except BaseException as e:  # noqa: BLE001
            os.write(w, repr(e).encode())
        finally:
            os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    msg = os.read(r, 4096).decode()
    os.close(r)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, msg
    # The parent's manager still works on its own connection.
    assert cache.get("child") == "hello"
    cache.set("parent", "after")
    assert cache.get("parent") == "after"


def test_cleanup_runs_at_exit(tmp_path, redis_server):
    # atexit runs handlers last-registered first: this one, registered before ddf_cache is
    # imported, runs after ddf_cache's and sees what it did.
    code = (
        "import atexit\n"
        "calls = []\n"
        "atexit.register(lambda: print('cleanup calls', len(calls)))\n"
        "import ddf_cache\n"
        "orig = ddf_cache.CacheManager.cleanup\n"
        "ddf_cache.CacheManager.cleanup = lambda self: (calls.append(1), orig(self))\n"
        "c = ddf_cache.CacheManager(ddf_cache.CacheConfig(backend='redis', redis_host='127.0.0.1',"
        f" redis_port={redis_server.port}))\n"
        "c.set('k', 1)\n"
    )
    out = run_python(code, tmp_path=tmp_path)
    assert "cleanup calls 0" not in out and "cleanup calls" in out


def test_start_up_loads_no_extra_module_and_a_first_read_creates_no_database(tmp_path):
    """`import ddf_cache` plus a first `get` (issue #16: under 20 ms over a bare interpreter)
    imports no module a bare interpreter has not, but built-in ones (`enum` comes with
    `CacheBackend`), and a read of a new directory does not make the database (SQLite's
    creation costs fsyncs; the file is created empty at build, so that an unusable directory
    fails then); a write does."""
    cache_dir = tmp_path / "c"
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import ddf_cache\n"
        "assert ddf_cache.CACHE.get('k') is None\n"
        "print(sorted(m for m in set(sys.modules) - before\n"
        "             if not m.startswith('ddf_cache') and m not in sys.builtin_module_names))\n"
        "import os\n"
        "print(sorted(os.listdir(%r)), os.path.getsize(os.path.join(%r, 'ddf-cache.sqlite3')))\n"
        "ddf_cache.CACHE.set('k', 1)\n"
        "from ddf_cache import CacheBackend\n"
        "assert ddf_cache.CACHE_CONFIG.backend is CacheBackend.PICKLE and ddf_cache.CACHE.get('k') == 1\n"
        % (str(cache_dir), str(cache_dir))
    )
    out = run_python(code, ini=f"[cache]\nbackend = pickle\npickle_dir = {cache_dir}\n", tmp_path=tmp_path)
    modules, files = out.splitlines()
    assert modules == "[]", f"imported at start-up: {modules}"
    assert "ddf-cache.sqlite3-wal" not in files and files.endswith("] 0"), files
    assert (cache_dir / "ddf-cache.sqlite3").stat().st_size > 0


def test_a_lock_held_at_the_fork_is_free_in_the_child(tmp_path):
    """The shared manager's lock, held by another thread of the parent at the fork (building
    `CACHE`), would stay held in the child for ever: the child gets a new one."""
    code = (
        "import os, ddf_cache\n"
        "ddf_cache._SHARED_LOCK.acquire()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if ddf_cache._SHARED_LOCK.acquire(timeout=5) else 1)\n"
        "ddf_cache._SHARED_LOCK.release()\n"
        "print(os.WEXITSTATUS(os.waitpid(pid, 0)[1]))\n"
    )
    assert run_python(code, tmp_path=tmp_path).strip() == "0"

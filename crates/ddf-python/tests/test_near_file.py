"""The near cache over the file backend (``backend=PICKLE, near_cache=True``): a value another
process writes is read at once, never the one it replaced (the directory's change counters;
docs/near-cache.md, "The file backend")."""

import subprocess
import sys

from ddf_cache import CacheBackend, CacheConfig, CacheManager, cache_with_invalidation

WRITER = """
import sys
from ddf_cache import CacheBackend, CacheConfig, CacheManager
m = CacheManager(CacheConfig(backend=CacheBackend.PICKLE, pickle_dir=sys.argv[1]))
for line in sys.stdin:
    key, value = line.split()
    if value == "-":
        m.delete(key)
    else:
        m.set(key, {"v": int(value)})
    print("ok", flush=True)
"""


def test_another_process_writes_are_read_at_once_through_the_near_cache(tmp_path):
    reader = CacheManager(CacheConfig(backend=CacheBackend.PICKLE, pickle_dir=str(tmp_path), near_cache=True))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        def write(key, value):
            writer.stdin.write(f"{key} {value}\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "ok\n"

        for v in range(1, 30):
            write("k", v)
            # The write returned: the first read after it and every one after see it, hits included.
            for _ in range(3):
                assert reader.get("k") == {"v": v}
        write("k", "-")
        assert reader.get("k") is None
        stats = reader.stats()
        assert stats["near_hits"] > 0 and stats["near_evictions"] > 0, stats

        calls = []

        @cache_with_invalidation(ttl=3600, key_prefix="nf", cache=reader)
        def f(a):
            calls.append(a)
            return a * 2

        assert f(2) == 4 and f(2) == 4 and calls == [2]
    finally:
        writer.stdin.close()
        writer.wait(timeout=10)

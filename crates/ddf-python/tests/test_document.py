"""Every Python code block of the API document (cache-api.rst, a copy of the reference) runs
with `ddf` replaced by `ddf_cache`: the configuration examples against real servers where they
name Redis or Memcached, the usage examples on the file backend and on Redis."""

import os
import re

import pytest

from conftest import run_python, start_redis

DOC = os.path.join(os.path.dirname(__file__), "cache-api.rst")


def python_blocks():
    text = open(DOC).read()
    blocks = []
    for m in re.finditer(r"\.\. code-block:: python\n\n((?:(?:   .*)?\n)+)", text):
        lines = [line[3:] for line in m.group(1).splitlines()]
        blocks.append("\n".join(lines).strip() + "\n")
    return [b.replace("from ddf import", "from ddf_cache import") for b in blocks]


BLOCKS = python_blocks()
CONFIG_BLOCKS = [b for b in BLOCKS if "CacheConfig(" in b]
GLOBAL_BLOCKS = [b for b in BLOCKS if "CacheConfig(" not in b]


def test_the_document_has_the_blocks_we_run():
    assert len(BLOCKS) == 9  # 3 configuration, 4 usage, 2 troubleshooting
    assert len(CONFIG_BLOCKS) == 3


def roundtrip(config):
    from ddf_cache import CacheManager

    cache = CacheManager(config)
    cache.set("doc:key", {"ports": ["8080:80"]}, ttl=60)
    assert cache.get("doc:key") == {"ports": ["8080:80"]}
    assert cache.invalidate_pattern("doc:") == 1
    assert cache.get("doc:key") is None


def test_pickle_configuration_example(tmp_path):
    (block,) = [b for b in CONFIG_BLOCKS if "PICKLE" in b]
    ns = {}
    exec(block, ns)
    assert ns["config"].pickle_dir == "/tmp/ddf_cache"
    exec(block.replace('"/tmp/ddf_cache"', repr(str(tmp_path))), ns)
    roundtrip(ns["config"])


def test_redis_configuration_example():
    (block,) = [b for b in CONFIG_BLOCKS if "REDIS" in b]
    ns = {}
    exec(block, ns)
    assert (ns["config"].redis_port, ns["config"].redis_password) == (6379, "secret")
    server = start_redis("--requirepass", "secret")
    try:
        exec(block.replace("redis_port=6379", f"redis_port={server.port}"), ns)
        roundtrip(ns["config"])
    finally:
        server.stop()


def test_memcached_configuration_example(memcached_server, memcached_server2):
    (block,) = [b for b in CONFIG_BLOCKS if "MEMCACHED" in b]
    ns = {}
    exec(block, ns)
    assert ns["config"].memcached_servers == [("localhost", 11211), ("192.168.1.100", 11211)]
    block = block.replace("('localhost', 11211)", f"('127.0.0.1', {memcached_server.port})")
    block = block.replace("('192.168.1.100', 11211)", f"('127.0.0.1', {memcached_server2.port})")
    exec(block, ns)
    roundtrip(ns["config"])


PREAMBLE = "result = 'computed'\n"
EPILOGUE = "\nif 'my_expensive_function' in dir():\n    assert my_expensive_function(1, 2) == 'computed'\n"


@pytest.mark.parametrize("block", GLOBAL_BLOCKS, ids=[b.splitlines()[0][:40] for b in GLOBAL_BLOCKS])
def test_usage_example_on_the_file_backend(block, tmp_path):
    ini = f"[cache]\nbackend = pickle\nenabled = true\npickle_dir = {tmp_path / 'c'}\n"
    out = run_python(PREAMBLE + block + EPILOGUE, ini=ini, tmp_path=tmp_path)
    if "Cache working" in block:
        assert "Cache working: True" in out
    if "Cache backend" in block:
        assert "Cache enabled: True" in out and "CacheBackend.PICKLE" in out


@pytest.mark.parametrize("block", GLOBAL_BLOCKS, ids=[b.splitlines()[0][:40] for b in GLOBAL_BLOCKS])
def test_usage_example_on_redis(block, tmp_path, redis_server):
    ini = (f"[cache]\nbackend = redis\nenabled = true\nttl = 3600\nredis_host = 127.0.0.1\n"
           f"redis_port = {redis_server.port}\nfallback = error\n")
    out = run_python(PREAMBLE + block + EPILOGUE, ini=ini, tmp_path=tmp_path)
    if "Cache working" in block:
        assert "Cache working: True" in out
    if "Cache backend" in block:
        assert "CacheBackend.REDIS" in out

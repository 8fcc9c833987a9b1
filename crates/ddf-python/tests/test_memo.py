"""The memoized hit (cache_with_invalidation): keys built natively for plain arguments and by
pickle for the rest never mix calls up; results come back as the manager's mode decodes them;
an entry another process removed is never served."""

import datetime
import enum

import pytest

from conftest import run_python
from ddf_cache import CacheBackend, CacheConfig, CacheError, CacheManager, cache_with_invalidation


def make(kind, tmp_path, redis_server=None, memcached_server=None, **kw):
    if kind == "file":
        return CacheManager(CacheConfig(backend=CacheBackend.PICKLE, pickle_dir=str(tmp_path), **kw))
    if kind in ("redis", "redis_pickle"):
        return CacheManager(CacheConfig(backend=kind, redis_host="127.0.0.1", redis_port=redis_server.port,
                                        namespace=f"memo-{tmp_path.name}:", fallback="error", **kw))
    return CacheManager(CacheConfig(backend=kind, memcached_servers=[("127.0.0.1", memcached_server.port)],
                                    namespace=f"memo-{tmp_path.name}:", fallback="error", **kw))


class Color(enum.IntEnum):
    RED = 1


class Text(str):
    pass


def nested(depth):
    v = 1
    for _ in range(depth):
        v = (v,)
    return v


# Arguments equal (==) in Python but different to a cache, plain ones and others.
DISTINCT = [1, 1.0, True, "1", b"1", (1,), [1], None, 0, False, 0.0, -0.0, "", b"", (), [],
            2**70, Color.RED, Text("1"), {"a": 1}, {1}, nested(40), nested(41), ("a", ["b", (None,)]),
            "\ud800"]


def test_calls_with_different_arguments_never_share_a_result(tmp_path):
    cache = make("file", tmp_path)
    calls = []

    @cache_with_invalidation(ttl=60, cache=cache)
    def f(x):
        calls.append(x)
        return repr(x)

    for x in DISTINCT:
        assert f(x) == repr(x)
    assert len(calls) == len(DISTINCT)
    for x in DISTINCT:  # all hits now, each its own
        assert f(x) == repr(x)
    assert len(calls) == len(DISTINCT)
    assert f.invalidate() == len(DISTINCT)


def test_keyword_arguments_key_by_name_not_order(tmp_path):
    cache = make("file", tmp_path)
    calls = []

    @cache_with_invalidation(ttl=60, cache=cache)
    def f(*args, **kwargs):
        calls.append((args, kwargs))
        return len(calls)

    assert f(a=1, b=2) == f(b=2, a=1) == 1
    assert f(1, b=2) == 2  # positional and keyword are different calls
    assert f(a=1, b=3) == 3
    assert f(a=1, b={"x": 1}) == 4 and f(a=1, b={"x": 1}) == 4  # a dict: keyed by pickle
    assert len(calls) == 4


def test_unpicklable_arguments_run_uncached(tmp_path):
    cache = make("file", tmp_path)
    calls = []

    @cache_with_invalidation(ttl=60, cache=cache)
    def f(x):
        calls.append(1)
        return 7

    g = lambda: None  # noqa: E731
    assert f(g) == 7 and f(g) == 7
    assert len(calls) == 2


def test_a_keyword_name_with_a_lone_surrogate_is_keyed_by_pickle(tmp_path):
    cache = make("file", tmp_path)
    calls = []

    @cache_with_invalidation(ttl=60, cache=cache)
    def f(**kw):
        calls.append(1)
        return sorted(kw.values())

    assert f(**{"\ud800": 1}) == [1] and f(**{"\ud800": 1}) == [1]
    assert len(calls) == 1


def test_a_stored_none_under_a_calls_key_is_a_miss(tmp_path):
    from ddf_cache import _ddf

    cache = make("file", tmp_path)

    @cache_with_invalidation(ttl=60, cache=cache)
    def f(x):
        return x * 2

    cache.set(_ddf.Memo(f.cache_key_prefix, 0, 0).key((3,), None), None)
    assert f(3) == 6
    assert f(3) == 6


def test_closures_of_one_function_do_not_share_results(tmp_path):
    cache = make("file", tmp_path)

    def make_scaler(n, token=None):
        @cache_with_invalidation(ttl=60, cache=cache)
        def scale(x):
            _ = token  # captured; unpicklable when a lambda
            return x * n

        return scale

    assert make_scaler(2)(10) == 20
    assert make_scaler(3)(10) == 30
    assert make_scaler(2)(10) == 20
    assert make_scaler(4, token=lambda: None)(10) == 40


RESULTS = [0, "", None, False, 1.5, 2**70, "ünï", [1, [2]], {"a": {"b": None}}, (1, "t"), {1, 2}, b"\x00raw"]


@pytest.mark.parametrize("kind", ["file", "redis", "redis_pickle", "memcached", "memcached_pickle"])
@pytest.mark.parametrize("trust", [False, True], ids=["restricted", "trusted"])
def test_a_hit_returns_what_the_call_returned(kind, trust, tmp_path, redis_server, memcached_server):
    cache = make(kind, tmp_path, redis_server, memcached_server, trust_pickles=trust)
    json_only = kind == "redis"
    calls = []

    @cache_with_invalidation(ttl=60, cache=cache)
    def f(i):
        calls.append(i)
        return RESULTS[i]

    for i, want in enumerate(RESULTS):
        first, hit = f(i), f(i)
        assert first == want and type(first) is type(want)
        if json_only and isinstance(want, (set, bytes)):
            assert hit == want and calls.count(i) == 2  # no JSON form: not cached, computed again
        elif json_only and isinstance(want, tuple):
            assert hit == list(want) and calls.count(i) == 1  # JSON has no tuples
        else:
            assert hit == want and type(hit) is type(want) and calls.count(i) == 1
    assert cache.stats()["hits"] >= 10


def test_a_refused_pickle_raises_as_get_does(tmp_path):
    trusted = make("file", tmp_path, trust_pickles=True)
    restricted = make("file", tmp_path)

    def day(n):
        return datetime.date(2024, 1, n)

    assert cache_with_invalidation(ttl=60, cache=trusted)(day)(2) == datetime.date(2024, 1, 2)
    with pytest.raises(CacheError, match="date"):
        cache_with_invalidation(ttl=60, cache=restricted)(day)(2)


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_an_entry_removed_by_another_process_is_not_served(kind, tmp_path, redis_server):
    cache = make(kind, tmp_path, redis_server)
    calls = []

    @cache_with_invalidation(ttl=60, key_prefix="other", cache=cache)
    def f(x):
        calls.append(x)
        return len(calls)

    assert f("a") == 1 and f("a") == 1
    if kind == "file":
        ini = f"[cache]\nbackend = pickle\npickle_dir = {tmp_path}\n"
    else:
        ini = (f"[cache]\nbackend = redis\nredis_host = 127.0.0.1\nredis_port = {redis_server.port}\n"
               f"namespace = memo-{tmp_path.name}:\n")
    code = f"from ddf_cache import CACHE\nprint(CACHE.invalidate_pattern({f.cache_key_prefix!r}))"
    assert run_python(code, ini=ini, tmp_path=tmp_path).split() == ["1"]
    assert f("a") == 2 and f("a") == 2


def test_a_disabled_cache_calls_through(tmp_path):
    cache = CacheManager(CacheConfig(enabled=False))
    calls = []

    @cache_with_invalidation(cache=cache)
    def f(x):
        calls.append(x)
        return x

    assert f(1) == 1 and f(1) == 1 and len(calls) == 2


@pytest.mark.parametrize("text", [b"[2]", b"[-0]", b"[-0.0]", b'["a-0"]', b"[NaN]", b"[1e400]", b'["\\ud800"]',
                                  b"[18446744073709551616]", b'[{"k": 1, "k": 2}]', b"[1.0000000000000002]"])
def test_a_json_hit_reads_as_json_loads(text, tmp_path, redis_server, redis_py):
    import json
    import math

    from ddf_cache import _ddf

    cache = make("redis", tmp_path, redis_server)

    @cache_with_invalidation(ttl=60, cache=cache)
    def f(x):
        raise AssertionError("computed: the entry was not read")

    key = _ddf.Memo(f.cache_key_prefix, None, None).key((1,), None)
    redis_py.set(f"memo-{tmp_path.name}:{key}", text)
    got, want = f(1), json.loads(text)[0]
    assert type(got) is type(want)
    assert got == want or math.isnan(got) and math.isnan(want)
    assert repr(got) == repr(want)


def _reference_encoding(v):
    """The typed encoding of src/memo.rs, written again in Python: the key format is pinned by
    this test (a change orphans every cached call)."""
    import struct

    n = lambda k: struct.pack("<Q", k)  # noqa: E731
    if v is None:
        return b"N"
    if type(v) is bool:
        return b"T" if v else b"F"
    if type(v) is int:
        return b"i" + struct.pack("<q", v)
    if type(v) is float:
        return b"f" + struct.pack("<d", v)
    if type(v) is str:
        return b"s" + n(len(v.encode())) + v.encode()
    if type(v) is bytes:
        return b"b" + n(len(v)) + v
    tag = b"(" if type(v) is tuple else b"["
    return tag + n(len(v)) + b"".join(_reference_encoding(x) for x in v)


def test_the_key_of_plain_arguments_is_the_sha256_of_their_typed_encoding():
    import hashlib
    import struct

    from ddf_cache import _ddf

    args, kwargs = (1, -2**63, "ünï", None, (True, False, 1.5, -0.0), [b"x", []]), {"z": 2**63 - 1, "a": ""}
    enc = b"ddf_cache-memo/1\0" + _reference_encoding(args) + b"k" + struct.pack("<Q", 2)
    for name in sorted(kwargs):
        enc += struct.pack("<Q", len(name)) + name.encode() + _reference_encoding(kwargs[name])
    key = _ddf.Memo("p:m.f:", None, None).key(args, kwargs)
    assert key == "p:m.f:" + hashlib.sha256(enc).hexdigest()
    assert key == "p:m.f:0d5f05c94a0d77ad0ea014e688978e61649ae10b5b9e72d1f670b41c48a8d8b2"
    # Not plain: left to Python's pickle.
    for other in [2**63, {"a": 1}, {1}, frozenset(), Color.RED, Text("x"), bytearray(b"x"), object()]:
        assert _ddf.Memo("p:", None, None).key((other,), None) is None


def test_validation_keeps_fresh_entries_and_drops_stale_ones(tmp_path):
    cache = make("file", tmp_path)
    state = {"fresh": True, "hash": "h1"}
    calls = []

    def validation():
        if state["fresh"] is None:
            raise OSError("the watched file is gone")
        return state["hash"], "cached", state["fresh"]

    @cache_with_invalidation(ttl=60, invalidate_on=["other:"], validation=validation, cache=cache)
    def f(x):
        calls.append(x)
        return len(calls)

    cache.set("other:1", "x")
    assert f(1) == 1 and f(1) == 1 and f({"a": 1}) == 2 and f({"a": 1}) == 2  # plain and pickled keys
    state.update(fresh=False, hash="h2")
    assert f(1) == 3  # stale: the function's entries and `other:` dropped, recomputed
    assert cache.get("other:1") is None and cache.get("yaml:hash") == "h2"
    state["fresh"] = True
    assert f(1) == 3 and f({"a": 1}) == 4  # the recomputed entry is served; the dropped one is not
    state["fresh"] = None
    assert f(1) == 5  # a failing validation recomputes

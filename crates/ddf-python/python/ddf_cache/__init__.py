"""ddf_cache: the Python DDF's cache API (``cache-api.rst``) on ddf's Rust engine.

    from ddf_cache import CACHE
    CACHE.set("key", "value", ttl=3600)
    CACHE.get("key")            # 'value'; a miss is None, a stored falsy value is itself

Values are stored as the Python DDF stores them (JSON backends ``json.dumps(value).encode()``,
pickle backends Python pickles, Memcached pymemcache's ``python_memcache`` flags), so both
share entries (with ``namespace=""``: ddf scopes its keys under ``ddf:`` by default). Pickles
are read with ddf's restricted decoder (plain data only, nothing executed) unless the
configuration says ``trust_pickles=True``. Every backend call releases the GIL; a forked child
rebuilds its connections on first use; ``cleanup`` runs at interpreter exit.
"""

# Only modules a bare interpreter has loaded already (`_thread`, `_weakref`, `os`) or built
# in (`atexit`): `import ddf_cache` plus a first `get` is measured against a bare interpreter
# (issue #16: under 20 ms), and `enum`, `functools`, `threading` and `weakref` cost about as
# much as the rest of the import together. `enum` is imported when `CacheBackend` is first
# named (module `__getattr__`), `functools` when a function is decorated.
import _thread
import _weakref
import atexit
import os

from . import _ddf
from ._ddf import CacheError

__all__ = [
    "CACHE",
    "CACHE_CONFIG",
    "CacheBackend",
    "CacheConfig",
    "CacheError",
    "CacheManager",
    "cache_with_invalidation",
]

_PICKLE_PROTOCOL = 5  # pickle.HIGHEST_PROTOCOL on 3.8+: what the Python DDF and pymemcache write


def _pickle():
    # Imported on first use: `import ddf_cache` and a first read of plain data need no pickle
    # module (the restricted decoder is native), and importing it costs milliseconds.
    import pickle

    return pickle

# pymemcache's python_memcache flags.
_FLAG_BYTES, _FLAG_PICKLE, _FLAG_INTEGER, _FLAG_LONG, _FLAG_COMPRESSED, _FLAG_TEXT = 0, 1, 2, 4, 8, 16


def _log():
    import logging

    return logging.getLogger("ddf_cache")


# Type checkers take this block as true and see `CacheBackend` (its members complete); at
# run time it is false, and `CacheBackend` comes from module `__getattr__` on first use (no
# `typing` import: it costs start-up too).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._backend import CacheBackend

_BACKEND_CLASS = None


def _backend_class():
    """``CacheBackend`` (module ``_backend``, imported on first use: it imports ``enum``), an
    ``enum.Enum`` whose ``.value`` is the INI name. No lock: Python's import runs the module
    once, so every thread gets the same class."""
    global _BACKEND_CLASS
    if _BACKEND_CLASS is None:
        from ._backend import CacheBackend

        _BACKEND_CLASS = CacheBackend
    return _BACKEND_CLASS


def __getattr__(name):
    # PEP 562: `from ddf_cache import CacheBackend`, `ddf_cache.CacheBackend`, `import *`.
    if name == "CacheBackend":
        return _backend_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | {"CacheBackend"})


def _ini_value(key, value):
    if _BACKEND_CLASS is not None and isinstance(value, _BACKEND_CLASS):
        text = value.value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif key == "memcached_servers" and not isinstance(value, str):
        parts = []
        for server in value:
            if isinstance(server, str):
                parts.append(server)
            else:
                host, port = server
                host = f"[{host}]" if ":" in host else host
                parts.append(f"{host}:{int(port)}")
        text = ", ".join(parts)
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    elif isinstance(value, os.PathLike):
        text = os.fspath(value)
    else:
        text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"CacheConfig: {key} must be one line, got {text!r}")
    return text


class CacheConfig:
    """Configuration for cache backends: the keyword arguments of the API document plus ddf's
    own keys (``namespace``, ``fallback``, ``timeout``, ``redis_url``... see ddf's README),
    checked by ddf's configuration rules. ``ttl=None`` means no expiry.

    ``trust_pickles=True`` reads pickles with Python's ``pickle.loads`` (any object; only for
    servers and directories you trust); the default is ddf's restricted decoder.
    """

    def __init__(
        self,
        backend=None,
        enabled=None,
        ttl=None,
        memcached_servers=None,
        redis_host=None,
        redis_port=None,
        redis_password=None,
        redis_db=None,
        pickle_dir=None,
        *,
        trust_pickles=False,
        **ddf_keys,
    ):
        given = dict(
            backend=backend,
            enabled=enabled,
            ttl=ttl,
            memcached_servers=memcached_servers,
            redis_host=redis_host,
            redis_port=redis_port,
            redis_password=redis_password,
            redis_db=redis_db,
            pickle_dir=pickle_dir,
        )
        given.update(ddf_keys)
        lines = ["[cache]"]
        for key, value in given.items():
            if value is not None:
                lines.append(f"{key} = {_ini_value(key, value)}")
        try:
            self._native = _ddf.Config.from_ini_str("\n".join(lines) + "\n")
        except CacheError as e:
            # The keyword arguments went through INI lines: name the argument, not the line.
            text = str(e)
            if text.startswith("INI text, line "):
                text = text.split(": ", 1)[-1].replace(' in [cache]', '', 1)
                text = text.replace("unknown key ", "unknown keyword argument ", 1)
            raise CacheError(f"CacheConfig: {text}") from None
        self.trust_pickles = bool(trust_pickles)

    @classmethod
    def _wrap(cls, native, trust_pickles):
        self = cls.__new__(cls)
        self._native = native
        self.trust_pickles = bool(trust_pickles)
        return self

    @classmethod
    def from_ini(cls, path, *, trust_pickles=False):
        """Reads the ``[cache]`` section of an INI file (configparser rules; errors name the
        line, the key and what is allowed)."""
        return cls._wrap(_ddf.Config.from_ini_file(os.fspath(path)), trust_pickles)

    @classmethod
    def load(cls, *, trust_pickles=False):
        """ddf's discovery: ``$DDF_CONFIG``, ``./ddf.ini``, ``~/.config/ddf/ddf.ini``, then the
        environment (``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_PASSWORD``, ``REDIS_DB``...)."""
        return cls._wrap(_ddf.Config.load(), trust_pickles)

    backend = property(lambda self: _backend_class()(self._native.backend))
    enabled = property(lambda self: self._native.enabled)
    ttl = property(lambda self: self._native.ttl)
    namespace = property(lambda self: self._native.namespace)
    pickle_dir = property(lambda self: str(self._native.pickle_dir))
    redis_host = property(lambda self: self._native.redis_host)
    redis_port = property(lambda self: self._native.redis_port)
    redis_password = property(lambda self: self._native.redis_password)
    redis_db = property(lambda self: self._native.redis_db)
    memcached_servers = property(lambda self: self._native.memcached_servers)

    def __repr__(self):
        return (
            f"CacheConfig(backend={self.backend}, enabled={self.enabled}, ttl={self.ttl}, "
            f"namespace={self.namespace!r})"
        )


def _load_global_config():
    try:
        return CacheConfig.load(trust_pickles=os.environ.get("DDF_TRUST_PICKLES") == "1")
    except CacheError as e:
        _log().error("ddf_cache: cannot load the cache configuration; caching is disabled: %s", e)
        return CacheConfig(enabled=False)


CACHE_CONFIG = _load_global_config()

# The live managers (for fork and exit), by id: weak references that remove themselves.
_MANAGERS: "dict[int, object]" = {}
_SHARED = None
_SHARED_LOCK = _thread.allocate_lock()


def _register(manager):
    key = id(manager)
    _MANAGERS[key] = _weakref.ref(manager, lambda _ref, key=key: _MANAGERS.pop(key, None))


def _live_managers():
    return [m for m in (r() for r in list(_MANAGERS.values())) if m is not None]

# Encoding modes, from the backend.
_JSON, _MEMCACHE, _PICKLE = "json", "memcache", "pickle"
_MODES = {
    "none": _PICKLE,
    "pickle": _PICKLE,
    "redis_pickle": _PICKLE,
    "memcached_pickle": _PICKLE,
    "redis": _JSON,
    "memcached": _MEMCACHE,
}


class CacheManager:
    """Unified cache manager over ddf's backends.

    ``CacheManager()`` is the shared instance, built from ``CACHE_CONFIG`` (the Python DDF's
    singleton); ``CacheManager(config)`` builds a separate one. Threads may share a manager.
    """

    def __new__(cls, config=None):
        global _SHARED
        if config is None:
            with _SHARED_LOCK:
                if _SHARED is None:
                    _SHARED = object.__new__(cls)
                    _SHARED._setup(CACHE_CONFIG, shared=True)
            return _SHARED
        self = object.__new__(cls)
        self._setup(config, shared=False)
        self._client()  # a bad configuration fails here, not on first use
        return self

    def __init__(self, config=None):
        pass

    def _setup(self, config, shared):
        self.config = config
        self._shared = shared
        self._native = None
        self._lock = _thread.allocate_lock()
        self._mode = _MODES[config._native.backend]
        self._memcached = config._native.backend.startswith("memcached")
        self._loads = (lambda data: _pickle().loads(data)) if config.trust_pickles else _ddf.loads_restricted
        self._enabled = config.enabled
        # What a memoized hit decodes natively: JSON, restricted pickles (flags 1; also flags
        # 0 where the backend stores no flags and 0 means the manager's pickle); trusted
        # pickles are Python's.
        if self._mode is _JSON:
            self._memo_decode = _ddf.DECODE_JSON
        elif config.trust_pickles:
            self._memo_decode = _ddf.DECODE_NONE
        elif self._mode is _PICKLE and not self._memcached:
            self._memo_decode = _ddf.DECODE_PICKLE_OR_ZERO
        else:
            self._memo_decode = _ddf.DECODE_PICKLE
        _register(self)

    def _client(self):
        """The native manager, built on first use (and again in a forked child)."""
        native = self._native
        if native is not None:
            return native
        with self._lock:
            if self._native is None:
                try:
                    self._native = _ddf.Manager(self.config._native)
                except CacheError as e:
                    if not self._shared:
                        raise
                    _log().error("ddf_cache: cannot build the cache; caching is disabled: %s", e)
                    off = _ddf.Config.from_ini_str("[cache]\nenabled = false\n")
                    self._native = _ddf.Manager(off)
            return self._native

    _get_client = _client

    def _after_fork_in_child(self):
        # The parent's sockets and threads are not ours: forget them (never close or join),
        # and build a fresh backend on first use. The lock may have been held by a thread
        # that does not exist here.
        native = self._native
        self._native = None
        self._lock = _thread.allocate_lock()
        if native is not None:
            native.forget()

    # Values as the Python DDF stores them.

    def _serialize(self, key, value):
        mode = self._mode
        if mode is _PICKLE:
            return _pickle().dumps(value, _PICKLE_PROTOCOL), _FLAG_PICKLE
        if mode is _JSON:
            import json

            try:
                return json.dumps(value, allow_nan=False).encode(), _FLAG_TEXT
            except (TypeError, ValueError) as e:
                raise CacheError(
                    f"cannot encode the value of {key!r} as JSON ({e}); JSON backends store "
                    "str, int, float, bool, None, list, tuple and dict with str keys: use a "
                    "*_pickle backend for other types"
                ) from None
        # pymemcache's python_memcache_serializer, exactly.
        t = type(value)
        if t is bytes:
            return value, _FLAG_BYTES
        if t is str:
            return value.encode("utf8"), _FLAG_TEXT
        if t is int:
            return b"%d" % value, _FLAG_INTEGER
        return _pickle().dumps(value, _PICKLE_PROTOCOL), _FLAG_PICKLE

    def _deserialize(self, key, data, flags):
        if flags & _FLAG_COMPRESSED:
            import zlib

            data = zlib.decompress(data)
            flags &= ~_FLAG_COMPRESSED
        if flags == _FLAG_PICKLE:
            return self._loads(data)
        if flags in (_FLAG_INTEGER, _FLAG_LONG):
            return int(data)
        if self._memcached:
            if flags == _FLAG_TEXT:
                return data.decode("utf8")
            if flags == _FLAG_BYTES:
                return data
        elif flags == _FLAG_TEXT or self._mode is _JSON:
            import json

            return json.loads(data)
        if self._mode is _PICKLE:
            return self._loads(data)
        raise CacheError(f"the value of {key!r} has flags {flags}, which ddf_cache cannot read")

    # Cache operations.

    def get(self, key):
        """The value stored under ``key``, or None on a miss (a stored falsy value is itself)."""
        item = self._client().get_item(key)
        if item is None:
            return None
        return self._deserialize(key, item[0], item[1])

    def set(self, key, value, ttl=None):
        """Stores ``value``; ``ttl`` in seconds, None for the configured ``ttl``."""
        data, flags = self._serialize(key, value)
        self._client().set_item(key, data, flags, ttl)
        return True

    def delete(self, key):
        """Removes ``key``; True if it was there."""
        return self._client().delete(key)

    def invalidate_pattern(self, prefix):
        """Removes every key that starts with ``prefix`` (taken literally: ``*?[`` are plain
        characters) and returns how many were removed."""
        return self._client().invalidate_pattern(prefix)

    def flush_all(self):
        """Removes every entry of this cache (its namespace), and nothing else."""
        self._client().flush_all()
        return True

    def cleanup(self):
        """Releases the connections now; the next operation reconnects."""
        native = self._native
        if native is not None:
            native.cleanup()

    def get_many(self, keys):
        """One value (or None) per key, in order."""
        keys = list(keys)
        items = self._client().get_items(keys)
        return [
            None if item is None else self._deserialize(k, item[0], item[1])
            for k, item in zip(keys, items)
        ]

    def set_many(self, items, ttl=None):
        """Stores a mapping (or ``(key, value)`` pairs) with one TTL."""
        if hasattr(items, "items"):
            items = items.items()
        encoded = [(k, *self._serialize(k, v)) for k, v in items]
        self._client().set_items(encoded, ttl)
        return True

    def delete_many(self, keys):
        """Removes several keys; returns how many were there."""
        return self._client().delete_many(list(keys))

    def stats(self):
        """Counters: hits, misses, sets, deletes, invalidated, errors, fallback; with
        ``near_cache=True`` also near_hits, near_misses and near_evictions (entries dropped
        because another write changed their key)."""
        return self._client().stats()

    @property
    def backend(self):
        return self.config.backend

    def __repr__(self):
        return f"<ddf_cache.CacheManager backend={self.config.backend.value}>"


CACHE = CacheManager()


def _after_fork_in_child():
    # A lock another thread of the parent held at the fork stays held in the child forever.
    global _SHARED_LOCK
    _SHARED_LOCK = _thread.allocate_lock()
    for manager in _live_managers():
        manager._after_fork_in_child()


def _cleanup_at_exit():
    for manager in _live_managers():
        try:
            manager.cleanup()
        except Exception:  # noqa: BLE001 - exiting: nothing left to report to
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_cleanup_at_exit)


_VALIDATION_KEY = "yaml:hash"  # the Python DDF's key for the watched file's hash

# What a memoized function's native lookup (_ddf.Memo.get) returns besides a result.
_MISS = object()  # nothing stored under the call's key
_UNKEYED = object()  # the arguments are not plain: Python keys the call (_pickled_key)
_RawHit = _ddf.RawHit  # a hit for Python to decode (JSON, trusted pickles, other flags)


def _pickled_key(func_prefix, name, args, kwargs):
    """The key of a call whose arguments are not plain: the SHA-256 of their pickle (None when
    they cannot be pickled: the call is not cacheable)."""
    try:
        blob = _pickle().dumps((args, sorted(kwargs.items())), _PICKLE_PROTOCOL)
    except Exception as e:  # noqa: BLE001 - unpicklable arguments: not cacheable
        _log().debug("ddf_cache: %s called uncached (arguments: %s)", name, e)
        return None
    import hashlib

    return func_prefix + hashlib.sha256(blob).hexdigest()


def _closure_tag(func):
    """What tells apart closures of one function: ``make(2)`` and ``make(3)`` of
    ``def make(n): @cache_with_invalidation() def f(x): return x * n`` share a qualified name, and
    keyed by it alone they would share results (the Python DDF's keys do). The tag is a hash of
    the captured values when they pickle (so processes that build the same closure share its
    entries), else a random token (this decorated function's entries are its own). A captured
    value changed after decoration is not seen."""
    cells = getattr(func, "__closure__", None)
    if not cells:
        return ""
    try:
        import hashlib

        data = _pickle().dumps(tuple(c.cell_contents for c in cells), protocol=4)
        return "<closure " + hashlib.sha256(data).hexdigest()[:16] + ">"
    except Exception:  # unpicklable, or a cell not yet filled
        return "<closure " + os.urandom(8).hex() + ">"


def cache_with_invalidation(ttl=None, key_prefix="", invalidate_on=None, validation=None, cache=None):
    """Memoizes a function in the cache.

    The key holds ``key_prefix`` (or ``memo``), the function's module and qualified name, and a
    SHA-256 of all its arguments (a typed encoding, built natively, for ``None``, ``bool``,
    ``int``, ``float``, ``str``, ``bytes`` and tuples and lists of them; the pickle of the
    arguments otherwise), so different arguments never share a result and two functions never
    share entries. ``None`` results are cached too. ``validation`` is the Python DDF's callable
    returning ``(current_hash, cached_hash, status)``: a false ``status`` drops this function's
    entries and every prefix in ``invalidate_on``, stores ``current_hash`` under ``yaml:hash``,
    and recomputes. ``cache`` defaults to ``CACHE``. ``wrapper.invalidate()`` drops every
    cached call of the function.

    A hit is one native call (key, read with the GIL released, decoding); every hit reads the
    backend, so nothing another process deleted is served.
    """
    if validation is not None and not callable(validation):
        raise TypeError("validation must be a callable returning (current_hash, cached_hash, status)")
    patterns = list(invalidate_on or ())

    import functools

    def decorator(func):
        name = f"{func.__module__}.{func.__qualname__}" + _closure_tag(func)
        func_prefix = f"{key_prefix or 'memo'}:{name}:"
        memo = _ddf.Memo(func_prefix, _MISS, _UNKEYED)

        def invalidate():
            return (cache if cache is not None else CACHE).invalidate_pattern(func_prefix)

        def key_of(args, kwargs):
            key = memo.key(args, kwargs)
            return key if key is not None else _pickled_key(func_prefix, name, args, kwargs)

        def compute_and_store(mgr, key, args, kwargs):
            result = func(*args, **kwargs)
            if key is not None:
                try:
                    mgr.set(key, [result], ttl=ttl)
                except CacheError as e:
                    _log().warning("ddf_cache: %s's result not cached: %s", name, e)
            return result

        def validated(mgr, args, kwargs):
            key = key_of(args, kwargs)
            try:
                current_hash, _cached_hash, fresh = validation()
            except Exception as e:  # noqa: BLE001 - the original recomputes then too
                _log().warning("ddf_cache: validation failed (%s); recomputing %s", e, name)
                fresh = False
                current_hash = None
            if not fresh:
                invalidate()
                for pattern in patterns:
                    mgr.invalidate_pattern(pattern)
                if current_hash is not None:
                    mgr.set(_VALIDATION_KEY, current_hash, ttl=ttl)
            elif key is not None:
                hit = mgr.get(key)
                if hit is not None:
                    return hit[0]
            return compute_and_store(mgr, key, args, kwargs)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            mgr = cache if cache is not None else CACHE
            if not mgr._enabled:
                return func(*args, **kwargs)
            if validation is not None:
                return validated(mgr, args, kwargs)
            # The hit: one native call builds the key, reads, and decodes.
            r = memo.get(mgr._native or mgr._client(), args, kwargs, mgr._memo_decode)
            if r is _MISS:
                return compute_and_store(mgr, memo.key(args, kwargs), args, kwargs)
            if r is _UNKEYED:
                key = _pickled_key(func_prefix, name, args, kwargs)
                if key is not None:
                    hit = mgr.get(key)
                    if hit is not None:
                        return hit[0]
                return compute_and_store(mgr, key, args, kwargs)
            if r.__class__ is _RawHit:
                hit = mgr._deserialize(r.key, r.data, r.flags)
                if hit is None:
                    # A stored None is a miss, as on the other paths.
                    return compute_and_store(mgr, r.key, args, kwargs)
                return hit[0]
            return r

        wrapper.invalidate = invalidate
        wrapper.cache_key_prefix = func_prefix
        return wrapper

    return decorator

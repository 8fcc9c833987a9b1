"""``CacheBackend``, in its own module so that ``import ddf_cache`` need not import ``enum``
(``ddf_cache`` imports this module when ``CacheBackend`` is first named; type checkers read it
through ``ddf_cache``'s ``TYPE_CHECKING`` block). Python's import runs it once, so every thread
gets the same class and members compare by identity."""

import enum


class CacheBackend(enum.Enum):
    """Available cache backend types; ``.value`` is the INI name."""

    NONE = "none"
    """No caching."""
    PICKLE = "pickle"
    """Local cache directory (file-based), values as Python pickles."""
    MEMCACHED = "memcached"
    """Memcached, values with pymemcache's python_memcache flags (JSON mode)."""
    MEMCACHED_PICKLE = "memcached_pickle"
    """Memcached with pickle serialization."""
    REDIS = "redis"
    """Redis with JSON serialization."""
    REDIS_PICKLE = "redis_pickle"
    """Redis with pickle serialization."""


# Public as `ddf_cache.CacheBackend` (pickles name it so; `ddf_cache` resolves it).
CacheBackend.__module__ = "ddf_cache"

//! `ddf_cache._ddf`: the native half of the Python package `ddf_cache`.
//!
//! Thin on purpose: a configuration ([`Config`], ddf's [`ddf::CacheConfig`] with its INI rules),
//! a manager ([`Manager`], ddf's [`ddf::CacheManager`] at the level of stored bytes and
//! pymemcache flags), and the restricted pickle decoder ([`loads_restricted`]). Python
//! (`python/ddf_cache/__init__.py`) encodes and decodes values the way the Python DDF stores
//! them, and provides the names of the API document. Every backend call releases the GIL.

mod memo;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ddf::pickle::Value;
use ddf::{CacheConfig, CacheManager, Item};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString, PyTuple,
};

create_exception!(
    _ddf,
    CacheError,
    PyException,
    "An error of the cache: the message is the Rust library's (what was wrong, what is allowed)."
);

/// A ddf error as a Python `CacheError` with the library's message.
pub(crate) fn to_py(e: ddf::Error) -> PyErr {
    CacheError::new_err(e.to_string())
}

/// A TTL in seconds (`None`: the configured default).
fn ttl_of(ttl: Option<f64>) -> PyResult<Option<Duration>> {
    ttl.map(|s| {
        Duration::try_from_secs_f64(s).map_err(|_| {
            PyValueError::new_err(format!(
                "ttl must be a non-negative number of seconds or None, got {s}"
            ))
        })
    })
    .transpose()
}

/// ddf's cache configuration (`[cache]` of an INI file, Python configparser rules).
#[pyclass(frozen, module = "ddf_cache._ddf")]
struct Config {
    inner: CacheConfig,
}

#[pymethods]
impl Config {
    /// Reads INI text over the defaults.
    #[staticmethod]
    fn from_ini_str(text: &str) -> PyResult<Self> {
        let inner = CacheConfig::from_ini_str(text).map_err(to_py)?;
        Ok(Config { inner })
    }

    /// Reads an INI file over the defaults.
    #[staticmethod]
    fn from_ini_file(path: std::path::PathBuf) -> PyResult<Self> {
        let inner = CacheConfig::from_ini_file(path).map_err(to_py)?;
        Ok(Config { inner })
    }

    /// ddf's discovery: `$DDF_CONFIG`, `./ddf.ini`, `~/.config/ddf/ddf.ini`, then the
    /// environment (`REDIS_HOST`...).
    #[staticmethod]
    fn load() -> PyResult<Self> {
        let inner = CacheConfig::load().map_err(to_py)?;
        Ok(Config { inner })
    }

    #[getter]
    fn backend(&self) -> &'static str {
        self.inner.backend.as_str()
    }

    #[getter]
    fn enabled(&self) -> bool {
        self.inner.enabled
    }

    #[getter]
    fn ttl(&self) -> Option<u64> {
        self.inner.ttl.map(|d| d.as_secs())
    }

    #[getter]
    fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    #[getter]
    fn pickle_dir(&self) -> std::path::PathBuf {
        self.inner.pickle_dir()
    }

    #[getter]
    fn redis_host(&self) -> &str {
        &self.inner.redis_host
    }

    #[getter]
    fn redis_port(&self) -> u16 {
        self.inner.redis_port
    }

    #[getter]
    fn redis_password(&self) -> Option<&str> {
        self.inner.redis_password.as_ref().map(|s| s.expose())
    }

    #[getter]
    fn redis_db(&self) -> u32 {
        self.inner.redis_db
    }

    #[getter]
    fn memcached_servers(&self) -> Vec<(String, u16)> {
        self.inner
            .memcached_servers
            .iter()
            .map(|s| (s.host.clone(), s.port))
            .collect()
    }

    #[getter]
    fn file(&self) -> Option<std::path::PathBuf> {
        self.inner.file().map(|p| p.to_path_buf())
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}

/// A stored item as Python sees it: `(bytes, flags)`.
type PyItem = (Py<PyBytes>, u32);

fn item_to_py(py: Python<'_>, item: Option<Item>) -> Option<PyItem> {
    item.map(|i| (PyBytes::new(py, &i.data).unbind(), i.flags))
}

/// ddf's cache manager at the level of stored items. Every backend call releases the GIL.
#[pyclass(frozen, module = "ddf_cache._ddf")]
pub(crate) struct Manager {
    /// Always `Some` until dropped.
    inner: Option<CacheManager>,
    /// Set in a forked child: the parent's connections and threads are not this process's, so
    /// dropping this manager must neither close sockets the parent still uses nor join threads.
    forgotten: AtomicBool,
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Some(m) = self.inner.take()
            && self.forgotten.load(Ordering::Relaxed)
        {
            std::mem::forget(m);
        }
    }
}

impl Manager {
    pub(crate) fn m(&self) -> PyResult<&CacheManager> {
        self.inner
            .as_ref()
            .ok_or_else(|| CacheError::new_err("the cache manager was dropped"))
    }
}

#[pymethods]
impl Manager {
    #[new]
    fn new(py: Python<'_>, config: &Config) -> PyResult<Self> {
        let config = config.inner.clone();
        let inner = py.detach(|| CacheManager::new(config)).map_err(to_py)?;
        Ok(Manager {
            inner: Some(inner),
            forgotten: AtomicBool::new(false),
        })
    }

    /// The backend's name (`none`, `pickle`, `redis`...).
    #[getter]
    fn backend_name(&self) -> PyResult<&'static str> {
        Ok(self.m()?.backend_name())
    }

    /// The bytes and flags stored under `key`, or `None` on a miss.
    fn get_item(&self, py: Python<'_>, key: &str) -> PyResult<Option<PyItem>> {
        let m = self.m()?;
        let item = py.detach(|| m.get_item(key)).map_err(to_py)?;
        Ok(item_to_py(py, item))
    }

    /// Stores bytes with flags; `ttl` in seconds (`None`: the configured default).
    #[pyo3(signature = (key, data, flags, ttl=None))]
    fn set_item(
        &self,
        py: Python<'_>,
        key: &str,
        data: Vec<u8>,
        flags: u32,
        ttl: Option<f64>,
    ) -> PyResult<()> {
        let m = self.m()?;
        let ttl = ttl_of(ttl)?;
        let item = Item::new(data, flags);
        py.detach(|| m.set_item(key, &item, ttl)).map_err(to_py)
    }

    fn delete(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let m = self.m()?;
        py.detach(|| m.delete(key)).map_err(to_py)
    }

    fn invalidate_pattern(&self, py: Python<'_>, prefix: &str) -> PyResult<u64> {
        let m = self.m()?;
        py.detach(|| m.invalidate_pattern(prefix)).map_err(to_py)
    }

    fn flush_all(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m()?;
        py.detach(|| m.flush_all()).map_err(to_py)
    }

    fn cleanup(&self, py: Python<'_>) -> PyResult<()> {
        let m = self.m()?;
        py.detach(|| m.cleanup());
        Ok(())
    }

    /// One `(bytes, flags)` or `None` per key, in order, with the GIL released once.
    fn get_items(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<Vec<Option<PyItem>>> {
        let m = self.m()?;
        let items = py
            .detach(|| {
                keys.iter()
                    .map(|k| m.get_item(k))
                    .collect::<ddf::Result<Vec<_>>>()
            })
            .map_err(to_py)?;
        Ok(items.into_iter().map(|i| item_to_py(py, i)).collect())
    }

    /// Stores `(key, bytes, flags)` triples with one TTL.
    #[pyo3(signature = (items, ttl=None))]
    fn set_items(
        &self,
        py: Python<'_>,
        items: Vec<(String, Vec<u8>, u32)>,
        ttl: Option<f64>,
    ) -> PyResult<()> {
        let m = self.m()?;
        let ttl = ttl_of(ttl)?;
        py.detach(|| {
            items
                .into_iter()
                .try_for_each(|(k, d, f)| m.set_item(&k, &Item::new(d, f), ttl))
        })
        .map_err(to_py)
    }

    fn delete_many(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<u64> {
        let m = self.m()?;
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        py.detach(|| m.delete_many(&refs)).map_err(to_py)
    }

    /// The manager's counters.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.m()?.stats();
        let d = PyDict::new(py);
        d.set_item("hits", s.hits)?;
        d.set_item("misses", s.misses)?;
        d.set_item("sets", s.sets)?;
        d.set_item("deletes", s.deletes)?;
        d.set_item("invalidated", s.invalidated)?;
        d.set_item("errors", s.errors)?;
        d.set_item("fallback", s.fallback)?;
        if self.m()?.config().near_cache {
            d.set_item("near_hits", s.near_hits)?;
            d.set_item("near_misses", s.near_misses)?;
            d.set_item("near_evictions", s.near_evictions)?;
        }
        Ok(d)
    }

    /// In a forked child: never close or join what belongs to the parent when this manager is
    /// dropped (its sockets and threads are the parent's).
    fn forget(&self) {
        self.forgotten.store(true, Ordering::Relaxed);
    }
}

/// Decodes a pickle with ddf's restricted decoder: plain data only (None, bool, int, float,
/// str, bytes, bytearray, list, tuple, set, frozenset, dict), nothing executed, within the
/// decoder's depth and size limits.
#[pyfunction]
fn loads_restricted(py: Python<'_>, data: &[u8]) -> PyResult<Py<PyAny>> {
    let value = Value::from_pickle(data).map_err(to_py)?;
    Ok(value_to_py(py, value)?.unbind())
}

pub(crate) fn value_to_py(py: Python<'_>, v: Value) -> PyResult<Bound<'_, PyAny>> {
    let seq = |items: Vec<Value>| -> PyResult<Vec<Bound<'_, PyAny>>> {
        items.into_iter().map(|i| value_to_py(py, i)).collect()
    };
    Ok(match v {
        Value::None => py.None().into_bound(py),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::BigInt(b) => py.get_type::<PyInt>().call1((b.to_string(),))?,
        Value::Float(f) => PyFloat::new(py, f).into_any(),
        Value::Str(s) => PyString::new(py, &s).into_any(),
        Value::Bytes(b) => PyBytes::new(py, &b).into_any(),
        Value::ByteArray(b) => PyByteArray::new(py, &b).into_any(),
        Value::List(items) => PyList::new(py, seq(items)?)?.into_any(),
        Value::Tuple(items) => PyTuple::new(py, seq(items)?)?.into_any(),
        Value::Set(items) => PySet::new(py, seq(items)?)?.into_any(),
        Value::FrozenSet(items) => PyFrozenSet::new(py, seq(items)?)?.into_any(),
        Value::Dict(pairs) => {
            let d = PyDict::new(py);
            for (k, v) in pairs {
                d.set_item(value_to_py(py, k)?, value_to_py(py, v)?)?;
            }
            d.into_any()
        }
        other => {
            return Err(CacheError::new_err(format!(
                "a pickled {} has no Python form in ddf_cache",
                other.type_name()
            )));
        }
    })
}

#[pymodule]
fn _ddf(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Config>()?;
    m.add_class::<Manager>()?;
    m.add_function(wrap_pyfunction!(loads_restricted, m)?)?;
    memo::register(m)?;
    m.add("CacheError", m.py().get_type::<CacheError>())?;
    Ok(())
}

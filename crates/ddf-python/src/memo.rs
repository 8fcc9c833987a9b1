//! The memoized call's hit in one Python->Rust crossing: [`Memo::get`] builds the call's key
//! from plain arguments, reads the item with the GIL released, and decodes a pickled result
//! with the restricted decoder (or a JSON one with ddf's JSON codec), straight into Python
//! objects.
//!
//! The key is `<function prefix><64 hex digits>`, the digits being the SHA-256 of a format tag
//! and a canonical, typed encoding of the positional arguments and the keyword arguments
//! sorted by name. Plain arguments are the exact types `None`, `bool`, `int` (64-bit), `float`,
//! `str`, `bytes`, and `tuple` and `list` of them, nested up to [`MAX_DEPTH`]. Anything else
//! (a subclass, a dict, a big int, an object) makes the call unkeyed here, and Python keys it
//! on the SHA-256 of its pickle instead: the choice depends on the arguments' types only, so
//! one call always takes the same path, and the format tag keeps the two encodings apart.
//!
//! Nothing is kept between calls but the function's prefix: every hit reads the backend, so an
//! entry another process deleted is never served from here.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use sha2::{Digest, Sha256};

use crate::{Manager, to_py, value_to_py};

/// Starts every hashed encoding: a pickle (what Python hashes for other arguments) starts with
/// `0x80`, so no call's pickle can encode the same bytes as another call's arguments here.
const KEY_FORMAT: &[u8] = b"ddf_cache-memo/1\0";

/// How deep tuples and lists may nest before a call is left to Python's pickle.
const MAX_DEPTH: usize = 32;

/// pymemcache's flags words of a pickle and of text.
const FLAG_PICKLE: u32 = 1;
const FLAG_TEXT: u32 = 16;

/// How [`Memo::get`] may decode a hit (Python passes its manager's mode): not at all, pickles
/// flagged as such, also unflagged pickles (a backend that stores no flags), or JSON (flagged
/// as text or unflagged).
const DECODE_NONE: u8 = 0;
const DECODE_PICKLE: u8 = 1;
const DECODE_PICKLE_OR_ZERO: u8 = 2;
const DECODE_JSON: u8 = 3;

/// A hit that Python decodes (JSON, trusted pickles, flags other than a pickle's, or a
/// pickle that is not the decorator's one-element list).
#[pyclass(frozen, module = "ddf_cache._ddf", get_all)]
struct RawHit {
    /// The key that was read.
    key: Py<PyString>,
    /// The stored bytes.
    data: Py<PyBytes>,
    /// The stored flags word.
    flags: u32,
}

/// One memoized function's part of the hit path: its key prefix and the two markers that
/// [`Memo::get`] returns.
#[pyclass(frozen, module = "ddf_cache._ddf")]
pub(crate) struct Memo {
    prefix: String,
    /// Returned on a miss.
    miss: Py<PyAny>,
    /// Returned when the arguments are not plain (Python keys the call itself).
    unkeyed: Py<PyAny>,
}

#[pymethods]
impl Memo {
    #[new]
    fn new(prefix: String, miss: Py<PyAny>, unkeyed: Py<PyAny>) -> Self {
        Memo {
            prefix,
            miss,
            unkeyed,
        }
    }

    /// The call's key, or `None` when its arguments are not plain.
    #[pyo3(signature = (args, kwargs=None))]
    fn key(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<String>> {
        self.key_of(args, kwargs)
    }

    /// The cached result of the call: `miss` when nothing is stored, `unkeyed` when the
    /// arguments are not plain, a [`RawHit`] for Python to decode, else the decoded result.
    /// `decode` is one of the `DECODE_*` modes.
    ///
    /// # Errors
    /// A backend error or a pickle the restricted decoder refuses, as `CacheError`.
    #[pyo3(signature = (manager, args, kwargs, decode))]
    fn get(
        &self,
        py: Python<'_>,
        manager: &Bound<'_, Manager>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
        decode: u8,
    ) -> PyResult<Py<PyAny>> {
        let Some(key) = self.key_of(args, kwargs)? else {
            return Ok(self.unkeyed.clone_ref(py));
        };
        let m = manager.get().m()?;
        let item = py.detach(|| m.get_item(&key)).map_err(to_py)?;
        let Some(item) = item else {
            return Ok(self.miss.clone_ref(py));
        };
        let value = match decode {
            DECODE_PICKLE | DECODE_PICKLE_OR_ZERO
                if item.flags == FLAG_PICKLE
                    || decode == DECODE_PICKLE_OR_ZERO && item.flags == 0 =>
            {
                Some(ddf::pickle::Value::from_pickle(&item.data).map_err(to_py)?)
            }
            DECODE_JSON
                if (item.flags == 0 || item.flags == FLAG_TEXT) && reads_as_python(&item.data) =>
            {
                // What serde_json refuses (NaN, lone surrogates, 1e400...) Python may read.
                ddf::Codec::Json.decode(&key, &item).ok()
            }
            _ => None,
        };
        // The decorator stores `[result]`; anything else under the key is Python's to judge.
        if let Some(ddf::pickle::Value::List(mut items)) = value
            && items.len() == 1
            && let Some(result) = items.pop()
        {
            return Ok(value_to_py(py, result)?.unbind());
        }
        let hit = RawHit {
            key: PyString::new(py, &key).unbind(),
            data: PyBytes::new(py, &item.data).unbind(),
            flags: item.flags,
        };
        Ok(Py::new(py, hit)?.into_any())
    }
}

impl Memo {
    fn key_of(
        &self,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Option<String>> {
        let mut enc = Vec::with_capacity(64);
        enc.extend_from_slice(KEY_FORMAT);
        enc.push(b'(');
        push_len(&mut enc, args.len());
        for a in args.iter() {
            if !encode(&a, &mut enc, 0)? {
                return Ok(None);
            }
        }
        if let Some(kw) = kwargs.filter(|k| !k.is_empty()) {
            let mut pairs = Vec::with_capacity(kw.len());
            for (k, v) in kw.iter() {
                let Ok(name) = k.cast_exact::<PyString>() else {
                    return Ok(None);
                };
                // A name that is not valid UTF-8 (a lone surrogate) is keyed by pickle.
                let Ok(name) = name.to_cow() else {
                    return Ok(None);
                };
                pairs.push((name.into_owned(), v));
            }
            pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            enc.push(b'k');
            push_len(&mut enc, pairs.len());
            for (name, v) in &pairs {
                push_bytes(&mut enc, name.as_bytes());
                if !encode(v, &mut enc, 0)? {
                    return Ok(None);
                }
            }
        }
        let mut key = String::with_capacity(self.prefix.len() + 64);
        key.push_str(&self.prefix);
        push_hex(&mut key, &Sha256::digest(&enc).into());
        Ok(Some(key))
    }
}

fn push_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    push_len(out, b.len());
    out.extend_from_slice(b);
}

/// Appends the typed encoding of a plain value; `false` when `v` is not plain (nothing
/// useful was appended then: the caller drops the buffer).
fn encode(v: &Bound<'_, PyAny>, out: &mut Vec<u8>, depth: usize) -> PyResult<bool> {
    if v.is_none() {
        out.push(b'N');
    } else if let Ok(s) = v.cast_exact::<PyString>() {
        // A str with lone surrogates has no UTF-8 form: pickle keys it.
        let Ok(t) = s.to_cow() else {
            return Ok(false);
        };
        out.push(b's');
        push_bytes(out, t.as_bytes());
    } else if let Ok(i) = v.cast_exact::<PyInt>() {
        let Ok(i) = i.extract::<i64>() else {
            return Ok(false);
        };
        out.push(b'i');
        out.extend_from_slice(&i.to_le_bytes());
    } else if let Ok(b) = v.cast_exact::<PyBool>() {
        out.push(if b.is_true() { b'T' } else { b'F' });
    } else if let Ok(f) = v.cast_exact::<PyFloat>() {
        out.push(b'f');
        out.extend_from_slice(&f.value().to_bits().to_le_bytes());
    } else if let Ok(b) = v.cast_exact::<PyBytes>() {
        out.push(b'b');
        push_bytes(out, b.as_bytes());
    } else if let Ok(t) = v.cast_exact::<PyTuple>() {
        out.push(b'(');
        push_len(out, t.len());
        return seq(t.iter(), out, depth);
    } else if let Ok(l) = v.cast_exact::<PyList>() {
        out.push(b'[');
        push_len(out, l.len());
        return seq(l.iter(), out, depth);
    } else {
        return Ok(false);
    }
    Ok(true)
}

fn seq<'py>(
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    out: &mut Vec<u8>,
    depth: usize,
) -> PyResult<bool> {
    if depth >= MAX_DEPTH {
        return Ok(false);
    }
    for item in items {
        if !encode(&item, out, depth + 1)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Lowercase hex, as Python's `hexdigest()` writes it, appended in one `push_str`.
fn push_hex(out: &mut String, bytes: &[u8; 32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 64];
    for (pair, b) in buf.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 15)];
    }
    out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
}

/// Whether serde_json reads this JSON text as Python's `json.loads` does, where it succeeds:
/// everywhere but `-0`, a float to serde_json and the int 0 to Python (Python never writes it;
/// a text that might hold it, even inside a string, is left to Python).
fn reads_as_python(data: &[u8]) -> bool {
    !data
        .windows(3)
        .any(|w| w[0] == b'-' && w[1] == b'0' && !matches!(w[2], b'.' | b'e' | b'E'))
        && !data.ends_with(b"-0")
}

/// Registers the classes of this module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Memo>()?;
    m.add_class::<RawHit>()?;
    m.add("DECODE_NONE", DECODE_NONE)?;
    m.add("DECODE_PICKLE", DECODE_PICKLE)?;
    m.add("DECODE_PICKLE_OR_ZERO", DECODE_PICKLE_OR_ZERO)?;
    m.add("DECODE_JSON", DECODE_JSON)?;
    Ok(())
}

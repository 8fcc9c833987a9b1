//! Shared memory between the processes of one cache directory: a small file every process maps
//! (shared) and reads and writes with atomics, so that a check costs a load and no system call.
//! Used by the outage marker (`backend/resilience/journal.rs`: one byte) and the file backend's
//! change counters (`near/file.rs`: the near cache's coherence check).
//!
//! This module holds the crate's one audited `unsafe` block (the workspace denies `unsafe_code`
//! everywhere else): viewing the mapped bytes as atomics.
//!
//! Rules every user keeps: the file is only ever extended, never truncated (a mapped page past
//! the end of its file faults), and stays the same file while processes use the directory (a
//! process that maps a file another one replaced no longer shares anything with it).

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64};

/// A file of the cache directory, held open and, where the platform allows, mapped shared.
#[derive(Debug)]
pub(crate) struct Shared {
    file: File,
    map: Option<memmap2::MmapRaw>,
}

/// An atomic type a mapping may be viewed as (sealed: only these two).
pub(crate) trait Atomic: sealed::Sealed {}
impl Atomic for AtomicU8 {}
impl Atomic for AtomicU64 {}
mod sealed {
    pub trait Sealed {}
    impl Sealed for std::sync::atomic::AtomicU8 {}
    impl Sealed for std::sync::atomic::AtomicU64 {}
}

impl Shared {
    /// Opens the file at `path`, creating it (zeroes) if needed and extending it to `len` bytes
    /// (what is there stays), and maps its first `len` bytes. A mapping that fails is logged at
    /// debug level and leaves [`Shared::mapped`] false; the caller falls back (`pread`, or
    /// going without).
    ///
    /// # Errors
    /// The file cannot be opened, read or extended.
    pub(crate) fn open(path: &Path, len: u64) -> std::io::Result<Shared> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        if file.metadata()?.len() < len {
            // Extends (zeroes after what is there); what is already written stays.
            file.set_len(len)?;
        }
        let map = usize::try_from(len)
            .ok()
            .and_then(|n| {
                memmap2::MmapOptions::new()
                    .len(n)
                    .map_raw(&file)
                    .inspect_err(|e| {
                        tracing::debug!(error = %e, file = %path.display(), "ddf: cannot map a shared file");
                    })
                    .ok()
            });
        Ok(Shared { file, map })
    }

    /// The file, for a `pread`/`pwrite` fallback.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file is mapped.
    pub(crate) fn mapped(&self) -> bool {
        self.map.is_some()
    }

    /// `n` atomics of type `T` from byte `offset` of the mapping; `None` when not mapped, or
    /// when they would not lie inside it or `offset` is not aligned for `T`.
    pub(crate) fn atomics<T: Atomic>(&self, offset: usize, n: usize) -> Option<&[T]> {
        let map = self.map.as_ref()?;
        let size = n.checked_mul(std::mem::size_of::<T>())?;
        if offset.checked_add(size)? > map.len() {
            return None;
        }
        let ptr = map.as_ptr().wrapping_add(offset);
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return None;
        }
        // SAFETY: `ptr .. ptr + size` lies inside the mapping (checked above), which lives as
        // long as `self` (the returned slice borrows it) and is never unmapped meanwhile; the
        // pointer is aligned for `T` (checked above); `T` is an atomic integer (sealed
        // `Atomic`), valid for any bit pattern, and every access through this slice is atomic.
        // Other processes only access these bytes atomically (this module) or with
        // pread/pwrite, which the kernel does not tear for an aligned byte or word. Users never
        // truncate the file (see the module's rules), so the pages stay backed.
        #[allow(unsafe_code)]
        let atomics = unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), n) };
        Some(atomics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_handles_of_one_file_share_its_atomics_and_bounds_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared");
        let a = Shared::open(&path, 64).unwrap();
        let b = Shared::open(&path, 64).unwrap();
        assert!(a.mapped() && b.mapped());
        let wa = a.atomics::<AtomicU64>(8, 7).unwrap();
        let wb = b.atomics::<AtomicU64>(8, 7).unwrap();
        wa[6].fetch_add(3, Ordering::SeqCst);
        assert_eq!(wb[6].load(Ordering::SeqCst), 3);
        assert!(a.atomics::<AtomicU64>(8, 8).is_none(), "past the end");
        assert!(a.atomics::<AtomicU64>(4, 1).is_none(), "misaligned");
        assert!(a.atomics::<AtomicU8>(63, 1).is_some());
        // Extending never loses what is there.
        drop((a, b));
        let c = Shared::open(&path, 128).unwrap();
        assert_eq!(
            c.atomics::<AtomicU64>(56, 1).unwrap()[0].load(Ordering::SeqCst),
            3
        );
    }
}

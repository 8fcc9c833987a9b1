//! Shared memory between the processes of one cache directory: a small file every process maps
//! (shared) and reads and writes with atomics, so that a check costs a load and no system call.
//! Used by the outage marker (`backend/resilience/journal.rs`: a byte and a change counter) and
//! the file backend's change counters (`near/file.rs`: the near cache's coherence check).
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
    /// Opens the file at `path`, creating it (zeroes, mode 0600, never through a symbolic
    /// link) if needed and extending it to `len` bytes (what is there stays), allocates its
    /// blocks, and maps its first `len` bytes. A mapping that fails, or a file whose blocks
    /// cannot be allocated (see [`allocate`]), is logged at debug level and leaves
    /// [`Shared::mapped`] false; the caller falls back (`pread`, or going without).
    ///
    /// # Errors
    /// The file cannot be opened, read or extended (a symbolic link, a full disk).
    pub(crate) fn open(path: &Path, len: u64) -> std::io::Result<Shared> {
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).truncate(false).read(true).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Private like the database; a link planted in the directory is refused (ELOOP),
            // not followed and extended.
            opts.mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits().cast_signed());
        }
        let file = opts.open(path)?;
        let allocated = allocate(&file, len)?;
        let map = usize::try_from(len)
            .ok()
            .filter(|_| allocated)
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
    #[cfg(test)]
    pub(crate) fn mapped(&self) -> bool {
        self.map.is_some()
    }

    /// The same file without its mapping: a process whose mapping failed.
    #[cfg(test)]
    pub(crate) fn without_mapping(self) -> Shared {
        Shared {
            file: self.file,
            map: None,
        }
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

/// Extends `file` to `len` bytes if shorter and allocates the blocks of its first `len` bytes
/// (never changing what is there), so that a store into the mapping never meets a full disk:
/// a page of a sparse file is allocated at its first store, and a full disk then kills the
/// process with `SIGBUS`. With the blocks allocated up front, a full disk is an error here.
/// `false` (logged): the file system cannot allocate (`posix_fallocate` unsupported): the
/// file must not be mapped. Writing zeroes instead would race another process's first stores
/// into a file it just created; a `pwrite` fallback returns the full disk as an error.
///
/// # Errors
/// The file cannot be read or extended, or the disk is full.
fn allocate(file: &File, len: u64) -> std::io::Result<bool> {
    let size = file.metadata()?.len();
    #[cfg(unix)]
    {
        // Never below the file's size (on Apple systems, a shorter range truncates).
        match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len.max(size)) {
            Ok(()) => Ok(true),
            Err(e)
                if e == rustix::io::Errno::OPNOTSUPP
                    || e == rustix::io::Errno::NOSYS
                    || e == rustix::io::Errno::INVAL =>
            {
                tracing::debug!(error = %e, "ddf: cannot allocate a shared file; not mapped");
                if size < len {
                    file.set_len(len)?;
                }
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(unix))]
    {
        if size < len {
            file.set_len(len)?;
        }
        Ok(true)
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

    /// The blocks are allocated (a store into the mapping never meets a full disk: SIGBUS),
    /// the file is private, and a symbolic link is refused, not followed.
    #[cfg(unix)]
    #[test]
    fn the_file_is_allocated_private_and_never_a_link() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared");
        let s = Shared::open(&path, 8256).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        // Every Linux file system a test runs on allocates (ext4, xfs, btrfs, tmpfs, overlay).
        #[cfg(target_os = "linux")]
        assert!(s.mapped());
        if s.mapped() {
            assert!(m.blocks() * 512 >= 8256, "sparse: {} blocks", m.blocks());
        }
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        let target = dir.path().join("target");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(Shared::open(&link, 64).is_err());
        assert_eq!(
            std::fs::metadata(&target).unwrap().len(),
            0,
            "the link's target is untouched"
        );
    }
}

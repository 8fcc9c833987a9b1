//! The file backend's settings (`backend = pickle`).

use std::path::PathBuf;

use crate::config::keys::CacheConfig;
use crate::error::Result;

/// The file backend's settings: its directory and namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileSettings {
    /// The cache directory ([`CacheConfig::pickle_dir`], resolved).
    pub(crate) dir: PathBuf,
    /// The namespace of this cache's entries.
    pub(crate) namespace: String,
}

impl CacheConfig {
    /// The file backend's settings.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error) for an unusable namespace.
    pub(crate) fn file_settings(&self) -> Result<FileSettings> {
        self.check_namespace()?;
        Ok(FileSettings {
            dir: self.pickle_dir(),
            namespace: self.namespace.clone(),
        })
    }
}

//! The free space of the archive's filesystem, against the configured reserve.
//!
//! Checked on demand (one `statvfs`, a few microseconds): by SMTP at each MAIL, by each collector
//! before a session and before each download, by `/readyz` and by `/metrics`. Each check sets the
//! `journal_gateway_archive_free_bytes` and `..._reserve_bytes` gauges and logs when the
//! filesystem goes below the reserve or comes back above it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::config::Reserve;

/// The archive filesystem's space at one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Space {
    /// Bytes available to the gateway (`f_bavail`).
    pub free: u64,
    /// The filesystem's size in bytes.
    pub total: u64,
    /// The reserve in bytes (see [`Reserve`]).
    pub reserve: u64,
}

impl Space {
    /// Below the reserve: no new mail is taken.
    #[must_use]
    pub fn low(&self) -> bool {
        self.free < self.reserve
    }
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the archive filesystem has {} bytes free, {} the reserve of {} bytes",
            self.free,
            if self.low() { "below" } else { "above" },
            self.reserve
        )
    }
}

/// Where the gauges go (set once the metrics exist).
struct Gauges {
    free: prometheus::IntGauge,
    reserve: prometheus::IntGauge,
}

/// The free-space check of one directory's filesystem.
pub struct FreeSpace {
    dir: PathBuf,
    reserve: Mutex<Reserve>,
    gauges: Mutex<Option<Gauges>>,
    /// Whether the last check was below the reserve (to log changes once).
    was_low: AtomicBool,
}

impl FreeSpace {
    /// The check of `dir`'s filesystem, with the default reserve.
    pub fn new(dir: &Path) -> FreeSpace {
        FreeSpace {
            dir: dir.to_path_buf(),
            reserve: Mutex::new(Reserve::Default),
            gauges: Mutex::new(None),
            was_low: AtomicBool::new(false),
        }
    }

    /// Sets the reserve and the gauges each check sets (at start).
    pub fn configure(
        &self,
        reserve: Reserve,
        free: prometheus::IntGauge,
        reserve_gauge: prometheus::IntGauge,
    ) {
        *self.reserve.lock().unwrap_or_else(PoisonError::into_inner) = reserve;
        *self.gauges.lock().unwrap_or_else(PoisonError::into_inner) = Some(Gauges {
            free,
            reserve: reserve_gauge,
        });
    }

    /// The space now (one `statvfs`). Sets the gauges; logs a change below or above the reserve.
    pub fn check(&self) -> io::Result<Space> {
        let (free_bytes, total_bytes) = statvfs(&self.dir)?;
        let reserve = *self.reserve.lock().unwrap_or_else(PoisonError::into_inner);
        let space = Space {
            free: free_bytes,
            total: total_bytes,
            reserve: reserve.bytes(total_bytes),
        };
        if let Some(g) = &*self.gauges.lock().unwrap_or_else(PoisonError::into_inner) {
            g.free.set(i64::try_from(free_bytes).unwrap_or(i64::MAX));
            g.reserve
                .set(i64::try_from(space.reserve).unwrap_or(i64::MAX));
        }
        let low = space.low();
        if self.was_low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!("{space}: new mail is refused (SMTP 452, collectors paused) until space returns");
            } else {
                tracing::info!("{space}: taking new mail again");
            }
        }
        Ok(space)
    }

    /// The space when it is below the reserve; None when above, or when it cannot be checked
    /// (the check's failure is logged: writing would fail and be answered as a storage error).
    pub fn low(&self) -> Option<Space> {
        match self.check() {
            Ok(space) => space.low().then_some(space),
            Err(e) => {
                tracing::warn!("checking the free space of {}: {e}", self.dir.display());
                None
            }
        }
    }
}

/// (available, total) bytes of the filesystem holding `dir`.
fn statvfs(dir: &Path) -> io::Result<(u64, u64)> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the path"))?;
    // SAFETY: an all-zero statvfs is a valid value of the plain C struct, which the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // fsblkcnt_t and c_ulong are u64 on 64-bit Linux, narrower elsewhere.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    let (avail, blocks, frsize) = (
        u64::from(st.f_bavail),
        u64::from(st.f_blocks),
        u64::from(st.f_frsize),
    );
    Ok((avail.saturating_mul(frsize), blocks.saturating_mul(frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_filesystem_and_compares_with_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FreeSpace::new(dir.path());
        let space = fs.check().unwrap();
        assert!(space.total > 0 && space.free <= space.total);
        let (free, reserve) = (
            prometheus::IntGauge::new("f", "f").unwrap(),
            prometheus::IntGauge::new("r", "r").unwrap(),
        );
        fs.configure(Reserve::Bytes(u64::MAX), free.clone(), reserve.clone());
        let low = fs.low().expect("nothing has u64::MAX bytes free");
        assert!(low.to_string().contains("below the reserve"), "{low}");
        assert!(free.get() > 0);
        assert_eq!(reserve.get(), i64::MAX);
        fs.configure(Reserve::Bytes(0), free, reserve.clone());
        assert_eq!(fs.low(), None);
        assert_eq!(reserve.get(), 0);
        assert!(FreeSpace::new(&dir.path().join("gone")).low().is_none());
    }
}

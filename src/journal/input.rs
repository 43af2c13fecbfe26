//! Random access to the bytes of one received message, wherever they are.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Random access to one received message's bytes: in memory (`[u8]`) or a spool file
/// ([`File`], read with positioned reads, so the file's cursor is not used).
pub trait Input {
    /// The number of bytes.
    fn size(&self) -> io::Result<u64>;
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 only at or past the end).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

impl Input for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl Input for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match FileExt::read_at(self, buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }
}

impl<T: Input + ?Sized> Input for &T {
    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        (**self).read_at(offset, buf)
    }
}

/// Reads all of `input` (at most `limit` bytes; more is an error).
pub(super) fn read_all(input: &(impl Input + ?Sized), limit: usize) -> io::Result<Vec<u8>> {
    let size = input.size()?;
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| s <= limit)
        .ok_or_else(|| io::Error::other("input larger than the in-memory limit"))?;
    let mut buf = vec![0u8; size];
    let mut filled = 0;
    while filled < size {
        let n = input.read_at(filled as u64, &mut buf[filled..])?;
        if n == 0 {
            break; // shrank under us: parse what is there
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}

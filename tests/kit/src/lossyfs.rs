//! `lossyfs`: an in-memory FUSE file system that keeps, across a simulated power cut, only what
//! was made durable (issue 16 part 2: a crash test that can lose directory entries, which a
//! SIGKILL cannot).
//!
//! Semantics (strict POSIX, the worst a real file system may do after a power cut):
//! - every file has a live content and a durable content: `fsync`/`fdatasync` makes the live
//!   content (and so its size) durable;
//! - every directory has live entries and durable entries (name -> inode): `fsync` of the
//!   directory makes its live entry list durable. A new file or directory, a rename (in both
//!   directories), an unlink, a link: each is durable only once the directory (directories)
//!   concerned were fsynced. A rename's two halves are durable each with its own directory's
//!   fsync ([`Renames::Independent`], the default) or, as journaling file systems do, both with
//!   either fsync ([`Renames::Atomic`]);
//! - [`LossyFs::crash`]: unmounts (the kernel's page cache and dentries go with the mount), makes
//!   the durable state the live state (a file reachable from no durable entry vanishes; a file
//!   whose name is durable but whose data was never synced is empty) and mounts again.
//!
//! Permissions, owners and times are not part of the simulation (they are kept as they were set).
//! Write-through (no writeback cache), so every write reaches the file system before the syscall
//! returns; locks (`flock`, `fcntl`) are the kernel's local locks (the file system does not
//! negotiate FUSE lock support); `sync_file_range` is handled by the kernel (a no-op here).
//!
//! Built on `fuser` 0.18 (by redb's author) with default features off: no libfuse, no
//! `libfuse-dev`. Run as root, `fuser` mounts through mount(2) itself, so neither `fusermount3`
//! nor Debian `fuse3` is needed; `/dev/fuse` must exist. [`LossyFs::mount`] says why when it
//! cannot mount, so a test can report it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request,
    TimeOrNow, WriteFlags,
};

/// How long the kernel may cache names and attributes: the mount is the only writer, and a crash
/// drops the mount (and the kernel's caches) anyway.
const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;

/// One inode: a file's contents or a directory's entries, each live and durable.
#[derive(Clone, Debug)]
enum Body {
    File {
        live: Vec<u8>,
        durable: Vec<u8>,
    },
    Dir {
        live: BTreeMap<OsString, u64>,
        durable: BTreeMap<OsString, u64>,
    },
}

#[derive(Clone, Debug)]
struct Inode {
    body: Body,
    perm: u16,
    mtime: SystemTime,
}

/// The whole file system: inodes by number.
#[derive(Debug)]
struct State {
    inodes: HashMap<u64, Inode>,
    next: u64,
    /// The renames whose directories were not both synced yet.
    renames: Vec<Rename>,
    atomic_renames: bool,
}

/// A rename not yet durable in both its directories.
#[derive(Debug)]
struct Rename {
    from: u64,
    name: OsString,
    to: u64,
    new: OsString,
    ino: u64,
    /// The source directory was synced since (the old name is durably gone).
    from_synced: bool,
    /// The destination directory was synced since (the new name is durable).
    to_synced: bool,
}

impl State {
    fn new(renames: Renames) -> State {
        let root = Inode {
            body: Body::Dir {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
            perm: 0o755,
            mtime: SystemTime::now(),
        };
        State {
            inodes: HashMap::from([(ROOT, root)]),
            next: ROOT + 1,
            renames: Vec::new(),
            atomic_renames: renames == Renames::Atomic,
        }
    }

    /// The power cut: every inode's durable state becomes its live state; what no durable entry
    /// reaches from the root is gone. Returns the torn renames that lost their file (`old ->
    /// new`: the source directory synced, the destination not).
    fn crash(&mut self) -> Vec<String> {
        let mut reachable = std::collections::HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if let Some(Inode {
                body: Body::Dir { durable, .. },
                ..
            }) = self.inodes.get(&ino)
            {
                for &child in durable.values() {
                    if reachable.insert(child) {
                        todo.push(child);
                    }
                }
            }
        }
        let torn = std::mem::take(&mut self.renames)
            .into_iter()
            .filter(|r| r.from_synced && !r.to_synced && !reachable.contains(&r.ino))
            .map(|r| {
                format!(
                    "{} -> {}",
                    r.name.to_string_lossy(),
                    r.new.to_string_lossy()
                )
            })
            .collect();
        self.inodes.retain(|ino, _| reachable.contains(ino));
        for inode in self.inodes.values_mut() {
            match &mut inode.body {
                Body::File { live, durable } => live.clone_from(durable),
                Body::Dir { live, durable } => live.clone_from(durable),
            }
        }
        torn
    }

    /// Live links to `ino` (a file's `nlink`).
    fn links(&self, ino: u64) -> u32 {
        let n = self
            .inodes
            .values()
            .filter_map(|i| match &i.body {
                Body::Dir { live, .. } => Some(live.values().filter(|&&c| c == ino).count()),
                Body::File { .. } => None,
            })
            .sum::<usize>();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let inode = self.inodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size, nlink) = match &inode.body {
            Body::File { live, .. } => (FileType::RegularFile, live.len() as u64, self.links(ino)),
            Body::Dir { .. } => (FileType::Directory, 0, 2),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: inode.mtime,
            mtime: inode.mtime,
            ctime: inode.mtime,
            crtime: inode.mtime,
            kind,
            perm: inode.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn dir(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.inodes.get_mut(&ino).map(|i| &mut i.body) {
            Some(Body::Dir { live, .. }) => Ok(live),
            Some(Body::File { .. }) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut Vec<u8>, Errno> {
        let inode = self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        inode.mtime = SystemTime::now();
        match &mut inode.body {
            Body::File { live, .. } => Ok(live),
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.dir(parent)?.get(name).copied().ok_or(Errno::ENOENT)
    }

    /// A new inode named `name` in `parent` (live only).
    fn add(&mut self, parent: u64, name: &OsStr, body: Body, mode: u32) -> Result<FileAttr, Errno> {
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next;
        self.next += 1;
        let perm = u16::try_from(mode & 0o7777).unwrap_or(0o644);
        self.inodes.insert(
            ino,
            Inode {
                body,
                perm,
                mtime: SystemTime::now(),
            },
        );
        self.dir(parent)?.insert(name.to_owned(), ino);
        self.attr(ino)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let ino = self.lookup(parent, name)?;
        match &self.inodes.get(&ino).ok_or(Errno::ENOENT)?.body {
            Body::Dir { live, .. } if want_dir && !live.is_empty() => return Err(Errno::ENOTEMPTY),
            Body::Dir { .. } if !want_dir => return Err(Errno::EISDIR),
            Body::File { .. } if want_dir => return Err(Errno::ENOTDIR),
            _ => {}
        }
        // The inode stays (open files may still use it; a crash drops what nothing reaches).
        self.dir(parent)?.remove(name);
        Ok(())
    }

    fn rename(&mut self, from: u64, name: &OsStr, to: u64, new: &OsStr) -> Result<(), Errno> {
        let ino = self.lookup(from, name)?;
        if let Ok(old) = self.lookup(to, new) {
            if let Some(Inode {
                body: Body::Dir { live, .. },
                ..
            }) = self.inodes.get(&old)
            {
                if !live.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        self.dir(to)?;
        self.dir(from)?.remove(name);
        self.dir(to)?.insert(new.to_owned(), ino);
        self.renames.push(Rename {
            from,
            name: name.to_owned(),
            to,
            new: new.to_owned(),
            ino,
            from_synced: false,
            to_synced: false,
        });
        Ok(())
    }

    /// `fsync`: a file's content or a directory's entries become durable.
    fn sync(&mut self, ino: u64) -> Result<(), Errno> {
        match &mut self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)?.body {
            Body::File { live, durable } => durable.clone_from(live),
            Body::Dir { live, durable } => durable.clone_from(live),
        }
        let mut renames = std::mem::take(&mut self.renames);
        for r in renames.iter_mut().filter(|r| r.from == ino || r.to == ino) {
            r.from_synced |= r.from == ino;
            r.to_synced |= r.to == ino;
            if self.atomic_renames {
                // Both halves durable at once (as one journal transaction of ext4 or XFS
                // holds both).
                if let Some(durable) = self.durable(r.to) {
                    durable.insert(r.new.clone(), r.ino);
                }
                if let Some(durable) = self.durable(r.from) {
                    if durable.get(&r.name) == Some(&r.ino) {
                        durable.remove(&r.name);
                    }
                }
                (r.from_synced, r.to_synced) = (true, true);
            }
        }
        renames.retain(|r| !(r.from_synced && r.to_synced));
        self.renames = renames;
        Ok(())
    }

    /// A directory's durable entries.
    fn durable(&mut self, ino: u64) -> Option<&mut BTreeMap<OsString, u64>> {
        match &mut self.inodes.get_mut(&ino)?.body {
            Body::Dir { durable, .. } => Some(durable),
            Body::File { .. } => None,
        }
    }
}

/// The `fuser` side: every request locks the state.
struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        let r = s.lookup(parent.0, name).and_then(|ino| s.attr(ino));
        entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.state().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.state();
        let r = (|| {
            if let Some(size) = size {
                let len = usize::try_from(size).map_err(|_| Errno::EFBIG)?;
                s.file(ino.0)?.resize(len, 0);
            }
            if let Some(mode) = mode {
                let inode = s.inodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?;
                inode.perm = u16::try_from(mode & 0o7777).unwrap_or(inode.perm);
            }
            s.attr(ino.0)
        })();
        match r {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let body = Body::Dir {
            live: BTreeMap::new(),
            durable: BTreeMap::new(),
        };
        entry(reply, self.state().add(parent.0, name, body, mode & !umask));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.state().remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.state().remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            reply.error(Errno::EINVAL);
            return;
        }
        empty(
            reply,
            self.state().rename(parent.0, name, newparent.0, newname),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut s = self.state();
        let r = (|| {
            s.file(ino.0)?;
            let dir = s.dir(newparent.0)?;
            if dir.contains_key(newname) {
                return Err(Errno::EEXIST);
            }
            dir.insert(newname.to_owned(), ino.0);
            s.attr(ino.0)
        })();
        entry(reply, r);
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.state();
        match s.file(ino.0) {
            Ok(data) => {
                let start = usize::try_from(offset)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                let end = start.saturating_add(size as usize).min(data.len());
                reply.data(&data[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        let r = (|| {
            let file = s.file(ino.0)?;
            let start = usize::try_from(offset).map_err(|_| Errno::EFBIG)?;
            let end = start.checked_add(data.len()).ok_or(Errno::EFBIG)?;
            if file.len() < end {
                file.resize(end, 0);
            }
            file[start..end].copy_from_slice(data);
            u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
        })();
        match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        empty(reply, self.state().sync(ino.0));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.state();
        let entries: Vec<(OsString, u64)> = match s.dir(ino.0) {
            Ok(live) => live.iter().map(|(n, &i)| (n.clone(), i)).collect(),
            Err(e) => return reply.error(e),
        };
        let all = [(OsString::from("."), ino.0), (OsString::from(".."), ROOT)]
            .into_iter()
            .chain(entries);
        for (i, (name, child)) in all.enumerate().skip(usize::try_from(offset).unwrap_or(0)) {
            let kind = match s.inodes.get(&child).map(|n| &n.body) {
                Some(Body::File { .. }) => FileType::RegularFile,
                _ => FileType::Directory,
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.state().sync(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Plenty of space: 1 TiB in 4 KiB blocks, all free.
        let blocks = 1 << 28;
        reply.statfs(blocks, blocks, blocks, 1 << 32, 1 << 32, 4096, 255, 4096);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        let r = match s.lookup(parent.0, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(Errno::EEXIST),
            Ok(ino) => s.file(ino).map(|_| ()).and_then(|()| s.attr(ino)),
            Err(_) => {
                let body = Body::File {
                    live: Vec::new(),
                    durable: Vec::new(),
                };
                s.add(parent.0, name, body, mode & !umask)
            }
        };
        match r {
            Ok(attr) => {
                reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                );
            }
            Err(e) => reply.error(e),
        }
    }
}

/// How a rename between two directories becomes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renames {
    /// Strict POSIX: each directory's half on its own, with that directory's fsync. Syncing
    /// only the source loses the file under both names.
    Independent,
    /// As on journaling file systems (ext4, XFS, btrfs): both halves at once, with the fsync of
    /// either directory. The file is never lost, under the old name or the new one.
    Atomic,
}

/// A mounted lossyfs (unmounted on drop).
pub struct LossyFs {
    state: Arc<Mutex<State>>,
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl LossyFs {
    /// Mounts an empty lossyfs on the existing directory `mountpoint`, with strict semantics
    /// ([`Renames::Independent`]).
    pub fn mount(mountpoint: &Path) -> std::io::Result<LossyFs> {
        LossyFs::mount_with(mountpoint, Renames::Independent)
    }

    /// Mounts an empty lossyfs on the existing directory `mountpoint`, renames made durable as
    /// `renames` says.
    pub fn mount_with(mountpoint: &Path, renames: Renames) -> std::io::Result<LossyFs> {
        let mut fs = LossyFs {
            state: Arc::new(Mutex::new(State::new(renames))),
            mountpoint: mountpoint.to_owned(),
            session: None,
        };
        fs.remount()?;
        Ok(fs)
    }

    /// Where it is mounted.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn remount(&mut self) -> std::io::Result<()> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("lossyfs".into())];
        let session = fuser::spawn_mount(Fs(self.state.clone()), &self.mountpoint, &config)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("mounting lossyfs on {}: {e}", self.mountpoint.display()),
                )
            })?;
        self.session = Some(session);
        Ok(())
    }

    fn unmount(&mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }

    /// The power cut: unmounts (no process may use the mount any more), keeps only the durable
    /// state and mounts it again on the same directory. Returns the renames torn by the crash
    /// that lost their file (`old -> new`: the source directory was synced after the rename, the
    /// destination not; only with [`Renames::Independent`]), for the test's diagnostics.
    pub fn crash(&mut self) -> std::io::Result<Vec<String>> {
        self.unmount()?;
        let torn = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .crash();
        self.remount()?;
        Ok(torn)
    }
}

impl Drop for LossyFs {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            // Still in use (a test failed with a process inside): detach it lazily, so no mount
            // outlives the test.
            eprintln!(
                "lossyfs: unmounting {}: {e}; detaching it",
                self.mountpoint.display()
            );
            if let Ok(path) = std::ffi::CString::new(self.mountpoint.as_os_str().as_encoded_bytes())
            {
                // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LossyFs;
    use std::fs::{self, File};
    use std::io::Write;

    fn sync_dir(p: &std::path::Path) {
        File::open(p).unwrap().sync_all().unwrap();
    }

    fn write(p: &std::path::Path, bytes: &[u8], sync: bool) {
        let mut f = File::create(p).unwrap();
        f.write_all(bytes).unwrap();
        if sync {
            f.sync_all().unwrap();
        }
    }

    #[test]
    fn keeps_only_what_was_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = LossyFs::mount(dir.path()).expect("mounting lossyfs (needs /dev/fuse, root)");
        let m = fs.path().to_owned();
        fs::create_dir(m.join("d")).unwrap();
        sync_dir(&m);
        // Named durably but its data never synced: empty after the crash.
        write(&m.join("d/unsynced"), b"lost", false);
        // Both data and name synced: there.
        write(&m.join("d/both"), b"kept", true);
        sync_dir(&m.join("d"));
        // Data synced, its name not (`d` not synced again): gone.
        write(&m.join("d/nameless"), b"lost too", true);
        // A file written without any fsync, in a durable directory never synced again: gone.
        write(&m.join("d/never"), b"never", false);
        // Renamed (the file and the source directory synced, but not the destination
        // directory): under neither name after the crash.
        fs::create_dir(m.join("src")).unwrap();
        fs::create_dir(m.join("e")).unwrap();
        sync_dir(&m);
        sync_dir(&m.join("e"));
        write(&m.join("src/moved"), b"moved", true);
        sync_dir(&m.join("src"));
        fs::rename(m.join("src/moved"), m.join("e/moved")).unwrap();
        sync_dir(&m.join("src"));
        // Unsynced content after synced content: the synced content.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("d/both"))
            .unwrap();
        f.write_all(b" and more").unwrap();
        drop(f);
        assert_eq!(fs::read(m.join("d/both")).unwrap(), b"kept and more");
        // A directory created without fsyncing its parent: gone with everything in it.
        fs::create_dir(m.join("nodir")).unwrap();
        write(&m.join("nodir/f"), b"f", true);
        sync_dir(&m.join("nodir"));

        // The torn rename (source synced, destination not) is reported.
        assert_eq!(fs.crash().unwrap(), ["moved -> moved"]);
        assert_eq!(fs::read(m.join("d/unsynced")).unwrap(), b"");
        assert!(!m.join("d/nameless").exists());
        assert!(!m.join("d/never").exists());
        assert_eq!(fs::read(m.join("d/both")).unwrap(), b"kept");
        assert!(
            !m.join("e/moved").exists(),
            "the destination directory was not synced"
        );
        assert!(
            !m.join("src/moved").exists(),
            "the source directory was synced after the rename"
        );
        assert!(!m.join("nodir").exists());
        let mut names: Vec<_> = fs::read_dir(m.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["both", "unsynced"]);
    }

    /// A mount with durable `tmp/` and `new/`, and durable files `tmp/a` and `tmp/b`.
    fn two_files_in_tmp(
        renames: super::Renames,
    ) -> (tempfile::TempDir, LossyFs, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let fs = LossyFs::mount_with(dir.path(), renames)
            .expect("mounting lossyfs (needs /dev/fuse, root)");
        let m = fs.path().to_owned();
        fs::create_dir(m.join("tmp")).unwrap();
        fs::create_dir(m.join("new")).unwrap();
        sync_dir(&m);
        write(&m.join("tmp/a"), b"a", true);
        write(&m.join("tmp/b"), b"b", true);
        sync_dir(&m.join("tmp"));
        (dir, fs, m)
    }

    #[test]
    fn an_atomic_rename_is_durable_with_either_directory() {
        let (_dir, mut fs, m) = two_files_in_tmp(super::Renames::Atomic);
        fs::rename(m.join("tmp/a"), m.join("new/a")).unwrap();
        // Only the source synced: the new name (the strict file system loses the file).
        sync_dir(&m.join("tmp"));
        fs::rename(m.join("tmp/b"), m.join("new/b")).unwrap();
        fs.crash().unwrap();
        assert_eq!(fs::read(m.join("new/a")).unwrap(), b"a");
        assert!(!m.join("tmp/a").exists());
        // Neither synced: the old name.
        assert_eq!(fs::read(m.join("tmp/b")).unwrap(), b"b");
        assert!(!m.join("new/b").exists());
    }

    #[test]
    fn a_rename_is_durable_only_once_its_directories_are_synced() {
        let (_dir, mut fs, m) = two_files_in_tmp(super::Renames::Independent);
        fs::rename(m.join("tmp/a"), m.join("new/a")).unwrap();
        fs::rename(m.join("tmp/b"), m.join("new/b")).unwrap();
        fs.crash().unwrap();
        // Nothing synced after the renames: the old names.
        assert_eq!(fs::read(m.join("tmp/a")).unwrap(), b"a");
        assert!(!m.join("new/a").exists());
        fs::rename(m.join("tmp/a"), m.join("new/a")).unwrap();
        sync_dir(&m.join("new"));
        fs.crash().unwrap();
        // The destination synced: the new name (and the old one, its directory unsynced).
        assert_eq!(fs::read(m.join("new/a")).unwrap(), b"a");
        assert_eq!(fs::read(m.join("tmp/a")).unwrap(), b"a");
        // Unlink and truncate, neither made durable: undone.
        fs::remove_file(m.join("tmp/b")).unwrap();
        File::options()
            .write(true)
            .open(m.join("new/a"))
            .unwrap()
            .set_len(0)
            .unwrap();
        fs.crash().unwrap();
        assert_eq!(fs::read(m.join("tmp/b")).unwrap(), b"b");
        assert_eq!(fs::read(m.join("new/a")).unwrap(), b"a");
    }
}

//! Syncing many files at once: a small pool of threads that keeps every fsync of a batch in
//! flight together, so the block layer merges their cache flushes (one or two device flushes for
//! the whole batch instead of one per file).

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex, OnceLock, PoisonError};

/// fsyncs in flight at most (threads of the pool, started on first use).
const WORKERS: usize = 32;

/// What to make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// A file's data (and the metadata needed to read it: `fdatasync`).
    File(PathBuf),
    /// A directory's entries (`fsync` of the directory).
    Dir(PathBuf),
    /// A new file: created with these bytes, then its data made durable (`fdatasync`); removed
    /// again when that fails. Its name is durable only with its directory's sync, after this.
    Write(PathBuf, Arc<Vec<u8>>),
}

impl Target {
    fn sync(&self) -> io::Result<()> {
        let result = match self {
            Target::File(path) => File::open(path).and_then(|f| f.sync_data()),
            Target::Dir(path) => File::open(path).and_then(|f| f.sync_all()),
            Target::Write(path, bytes) => {
                let written = File::create(path).and_then(|mut f| {
                    f.write_all(bytes)?;
                    f.sync_data()
                });
                if written.is_err() {
                    let _ = std::fs::remove_file(path);
                }
                written
            }
        };
        result.map_err(|e| {
            let path = match self {
                Target::File(p) | Target::Dir(p) | Target::Write(p, _) => p,
            };
            io::Error::new(e.kind(), format!("syncing {}: {e}", path.display()))
        })
    }
}

type Job = (Target, mpsc::Sender<io::Result<()>>);

/// The pool: jobs go to whichever worker is free.
#[derive(Default)]
pub(super) struct SyncPool {
    jobs: OnceLock<Option<mpsc::Sender<Job>>>,
}

impl SyncPool {
    /// Starts syncing every target at once; [`InFlight::wait`] gives the first error, if any.
    pub(super) fn start(&self, targets: Vec<Target>) -> InFlight {
        let (reply, replies) = mpsc::channel();
        let mut in_flight = InFlight {
            reply,
            replies,
            outstanding: 0,
        };
        self.add(&mut in_flight, targets);
        in_flight
    }

    /// Adds `targets` to syncs already under way: [`InFlight::wait`] waits for them too.
    pub(super) fn add(&self, in_flight: &mut InFlight, targets: Vec<Target>) {
        let reply = &in_flight.reply;
        for target in targets {
            match self.sender() {
                Some(jobs) => {
                    if let Err(mpsc::SendError((target, reply))) =
                        jobs.send((target, reply.clone()))
                    {
                        // No worker left: sync it here.
                        let _ = reply.send(target.sync());
                    }
                }
                None => {
                    let _ = reply.send(target.sync());
                }
            }
            in_flight.outstanding += 1;
        }
    }

    /// The pool's queue, its workers started on first use; None when no thread could be started
    /// (then the caller syncs in its own thread).
    fn sender(&self) -> Option<&mpsc::Sender<Job>> {
        self.jobs
            .get_or_init(|| {
                let (tx, rx) = mpsc::channel::<Job>();
                let rx = Arc::new(Mutex::new(rx));
                let mut started = 0;
                for i in 0..WORKERS {
                    let rx = rx.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("archive-sync-{i}"))
                        .spawn(move || loop {
                            let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                            let Ok((target, reply)) = job else { break };
                            let _ = reply.send(target.sync());
                        });
                    if spawned.is_ok() {
                        started += 1;
                    }
                }
                (started > 0).then_some(tx)
            })
            .as_ref()
    }
}

/// The syncs of one batch, under way.
pub(super) struct InFlight {
    reply: mpsc::Sender<io::Result<()>>,
    replies: mpsc::Receiver<io::Result<()>>,
    outstanding: usize,
}

impl InFlight {
    /// Waits for every sync; the first failure, if any.
    pub(super) fn wait(self) -> io::Result<()> {
        let InFlight {
            reply,
            replies,
            outstanding,
        } = self;
        // Only the jobs' own senders are left: a worker that died answers with an error.
        drop(reply);
        let mut result = Ok(());
        for _ in 0..outstanding {
            let r = replies
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("an archive sync thread stopped")));
            result = result.and(r);
        }
        result
    }
}

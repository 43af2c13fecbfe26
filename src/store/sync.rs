//! Syncing many files at once: a small pool of threads that keeps every fsync of a batch in
//! flight together, so the block layer merges their cache flushes (one or two device flushes for
//! the whole batch instead of one per file).

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};

/// fsyncs in flight at most (threads of the pool, started on first use).
const WORKERS: usize = 32;

/// What to make durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// A file's data (and the metadata needed to read it: `fdatasync`).
    File(PathBuf),
    /// A directory's entries (`fsync` of the directory).
    Dir(PathBuf),
    /// Not a sync: a name to remove, off the caller's path ([`SyncPool::detach`]).
    Remove(PathBuf),
}

impl Target {
    fn sync(&self) -> io::Result<()> {
        let result = match self {
            Target::File(path) => File::open(path).and_then(|f| f.sync_data()),
            Target::Dir(path) => File::open(path).and_then(|f| f.sync_all()),
            Target::Remove(path) => match std::fs::remove_file(path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            },
        };
        result.map_err(|e| {
            let (what, path) = match self {
                Target::File(p) | Target::Dir(p) => ("syncing", p),
                Target::Remove(p) => ("removing", p),
            };
            io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
        })
    }
}

type Job = (Target, Ticket);

/// What a batch's syncs report to: how many are outstanding and the first failure. The waiter
/// is woken once, by the last of them (not once per sync).
#[derive(Default)]
struct Latch {
    state: Mutex<(usize, Option<io::Error>)>,
    done: Condvar,
}

impl Latch {
    fn lock(&self) -> MutexGuard<'_, (usize, Option<io::Error>)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One sync's share of a [`Latch`]: counted down when answered, or with an error when dropped
/// unanswered (its worker died).
struct Ticket {
    latch: Option<Arc<Latch>>,
}

impl Ticket {
    fn new(latch: &Arc<Latch>) -> Ticket {
        latch.lock().0 += 1;
        Ticket {
            latch: Some(latch.clone()),
        }
    }

    fn answer(mut self, result: io::Result<()>) {
        if let Some(latch) = self.latch.take() {
            let mut state = latch.lock();
            state.0 -= 1;
            if let Err(e) = result {
                state.1.get_or_insert(e);
            }
            if state.0 == 0 {
                latch.done.notify_one();
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.latch.is_some() {
            let ticket = Ticket {
                latch: self.latch.take(),
            };
            ticket.answer(Err(io::Error::other("an archive sync thread stopped")));
        }
    }
}

/// The pool: jobs go to whichever worker is free.
#[derive(Default)]
pub(super) struct SyncPool {
    jobs: OnceLock<Option<mpsc::Sender<Job>>>,
}

impl SyncPool {
    /// Starts syncing every target at once; [`InFlight::wait`] gives the first error, if any.
    pub(super) fn start(&self, targets: Vec<Target>) -> InFlight {
        let latch = Arc::default();
        for target in targets {
            let ticket = Ticket::new(&latch);
            match self.sender() {
                Some(jobs) => {
                    if let Err(mpsc::SendError((target, ticket))) = jobs.send((target, ticket)) {
                        // No worker left: sync it here.
                        ticket.answer(target.sync());
                    }
                }
                None => ticket.answer(target.sync()),
            }
        }
        InFlight { latch }
    }

    /// Runs `targets` in the pool without anyone waiting for them (a failure is logged).
    pub(super) fn detach(&self, targets: Vec<Target>) {
        for target in targets {
            let ticket = Ticket { latch: None };
            match self.sender() {
                Some(jobs) => {
                    if let Err(mpsc::SendError((target, _))) = jobs.send((target, ticket)) {
                        log_detached(target.sync());
                    }
                }
                None => log_detached(target.sync()),
            }
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
                            let Ok((target, ticket)) = job else { break };
                            let result = target.sync();
                            if ticket.latch.is_none() {
                                log_detached(result);
                            } else {
                                ticket.answer(result);
                            }
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

/// What became of a detached job: nothing waits for it, so a failure is only logged (a `tmp/`
/// name left behind is removed at the next start).
fn log_detached(result: io::Result<()>) {
    if let Err(e) = result {
        tracing::warn!("{e} (left for the next start)");
    }
}

/// The syncs of one batch, under way.
pub(super) struct InFlight {
    latch: Arc<Latch>,
}

impl InFlight {
    /// Waits for every sync; the first failure, if any.
    pub(super) fn wait(self) -> io::Result<()> {
        let mut state = self.latch.lock();
        while state.0 > 0 {
            state = self
                .latch
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.1.take().map_or(Ok(()), Err)
    }
}

//! Running the gateway binary as a CLI (`journal-gateway VERB ... --config FILE`) with a bounded
//! wait: a CLI that hangs fails the test (killed, with what it printed so far), it never hangs CI.
//!
//! The binary's path is known to the test crate only (`env!("CARGO_BIN_EXE_journal-gateway")`),
//! so a test starts from [`Cli::new`] with it:
//!
//! ```no_run
//! # use journal_gateway_testkit::cli::Cli;
//! # let bin = std::path::Path::new("journal-gateway");
//! let stdout = Cli::new(bin).args(["check-config", "--config", "gw.toml"]).run();
//! let failed = Cli::new(bin).args(["status", "--server", "http://127.0.0.1:1"]).fail();
//! assert!(failed.stderr.contains("is the gateway running"));
//! ```

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a CLI run may take before it is killed and the test fails.
pub const TIMEOUT: Duration = Duration::from_mins(2);

/// One CLI run being set up: the binary, its arguments and environment, what it reads on stdin.
#[must_use = "a CLI run does nothing until `output`, `run` or `fail`"]
pub struct Cli {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

/// How a CLI run ended: its exit status and what it printed.
#[derive(Debug)]
pub struct Outcome {
    /// The exit status.
    pub status: ExitStatus,
    /// Its standard output (lossy UTF-8).
    pub stdout: String,
    /// Its standard error (lossy UTF-8).
    pub stderr: String,
}

impl Outcome {
    /// Whether it exited 0.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// (success, stdout, stderr).
    #[must_use]
    pub fn parts(self) -> (bool, String, String) {
        (self.status.success(), self.stdout, self.stderr)
    }
}

impl Cli {
    /// A run of `program` (the gateway binary) without arguments, with [`TIMEOUT`].
    pub fn new(program: impl AsRef<OsStr>) -> Cli {
        Cli {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout: TIMEOUT,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cli {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Cli
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Adds `--config <path>`.
    pub fn config(self, path: impl AsRef<Path>) -> Cli {
        self.arg("--config").arg(path.as_ref())
    }

    /// Sets an environment variable for the run.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cli {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// What the run reads on stdin (without it: nothing, stdin is closed).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Cli {
        self.stdin = Some(input.into());
        self
    }

    /// Another limit than [`TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Cli {
        self.timeout = timeout;
        self
    }

    /// The command line, for messages.
    fn describe(&self) -> String {
        let mut line = Path::new(&self.program)
            .file_name()
            .unwrap_or(&self.program)
            .to_string_lossy()
            .into_owned();
        for a in &self.args {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        line
    }

    /// Runs it to its end and returns how it ended, whatever its exit status.
    ///
    /// # Panics
    /// When it cannot be started, or has not exited within its timeout (it is killed first;
    /// the message holds what it printed until then).
    #[must_use]
    pub fn output(self) -> Outcome {
        let line = self.describe();
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running `{line}`: {e}"));
        if let (Some(input), Some(mut pipe)) = (self.stdin, child.stdin.take()) {
            // A thread: a CLI that does not read its stdin must not block the wait below.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let (tx, rx) = mpsc::channel();
        let drain = |pipe: Option<Box<dyn Read + Send>>, which: u8| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                let _ = tx.send((which, bytes));
            });
        };
        drain(child.stdout.take().map(|p| Box::new(p) as _), 1);
        drain(child.stderr.take().map(|p| Box::new(p) as _), 2);
        drop(tx);
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("waiting for `{line}`: {e}"),
            }
        };
        // The pipes close when it exits (or was killed); a bounded wait all the same.
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let pipes_deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..2 {
            let left = pipes_deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((1, bytes)) => stdout = bytes,
                Ok((_, bytes)) => stderr = bytes,
                Err(_) => break,
            }
        }
        let (stdout, stderr) = (
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        );
        let Some(status) = status else {
            panic!(
                "`{line}` did not exit within {:?}: killed\nstdout:\n{stdout}\nstderr:\n{stderr}",
                self.timeout
            );
        };
        Outcome {
            status,
            stdout,
            stderr,
        }
    }

    /// Runs it, asserts it exited 0 (else fails the test with its status, stdout and stderr)
    /// and returns its stdout.
    ///
    /// # Panics
    /// As [`Cli::output`], and when it did not exit 0.
    #[allow(clippy::must_use_candidate)] // often called for its assertion alone
    pub fn run(self) -> String {
        let line = self.describe();
        let out = self.output();
        assert!(
            out.ok(),
            "`{line}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// Runs it, asserts it did not exit 0 (else fails the test with its stdout and stderr) and
    /// returns how it ended.
    ///
    /// # Panics
    /// As [`Cli::output`], and when it exited 0.
    #[must_use]
    pub fn fail(self) -> Outcome {
        let line = self.describe();
        let out = self.output();
        assert!(
            !out.ok(),
            "`{line}` succeeded, a failure was expected:\nstdout:\n{}\nstderr:\n{}",
            out.stdout,
            out.stderr
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use std::time::{Duration, Instant};

    #[test]
    fn output_stdin_env_and_the_exit_status_come_back() {
        let out = Cli::new("/bin/sh")
            .args([
                "-c",
                "read line; echo \"out $line $X\"; echo err >&2; exit 3",
            ])
            .env("X", "x")
            .stdin("in\n")
            .fail();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, "out in x\n");
        assert_eq!(out.stderr, "err\n");
        assert_eq!(
            Cli::new("/bin/sh").args(["-c", "echo fine"]).run(),
            "fine\n"
        );
    }

    #[test]
    fn a_run_that_hangs_is_killed_and_fails_the_test() {
        let started = Instant::now();
        let hung = std::panic::catch_unwind(|| {
            Cli::new("/bin/sh")
                .args(["-c", "echo started; exec sleep 60"])
                .timeout(Duration::from_millis(300))
                .output()
        });
        let message = *hung
            .expect_err("a hanging run fails")
            .downcast::<String>()
            .expect("a message");
        assert!(
            message.contains("did not exit within 300ms: killed") && message.contains("started"),
            "{message}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "not killed");
    }

    #[test]
    #[should_panic(expected = "failed (exit status: 1)")]
    fn run_fails_the_test_on_a_failure() {
        let _ = Cli::new("/bin/sh").args(["-c", "exit 1"]).run();
    }
}

//! Entry points for the coverage-guided fuzz targets (`fuzz/`, `cargo afl`) and the property
//! tests: thin drivers over the journal parser, the SMTP session and the POP3 client, each
//! checking its invariants and panicking when one fails (a fuzzer records the input as a crash).
//!
//! Compiled only for the crate's own tests and with the `fuzzing` feature (which the fuzz crate
//! turns on); the product never contains it. No behaviour of the gateway changes: the drivers use
//! the same types the gateway does, with an in-memory sink (SMTP) and a loopback server (POP3).
//!
//! Invariants (docs/reliability.md, "Fuzzing"):
//! - no panic inside the code under test, including the panics the parsers catch themselves
//!   (the fuzz targets abort on any panic; the property tests count them, see [`panics`]);
//! - bounded memory (the fuzzer's memory limit) and time (its timeout);
//! - byte-exact: what the SMTP session answered `250` to is exactly the bytes it handed to the
//!   sink; what the POP3 client hands on from a `RETR` is exactly the dot-unstuffed body.

mod journal;
mod pop3;
mod smtp;

use std::cell::Cell;
use std::sync::Once;

pub use journal::journal;
pub use pop3::pop3_client;
pub use smtp::smtp_session;

thread_local! {
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

/// Where a known, benign panic of a dependency is raised (docs/reliability.md, "Fuzzing"):
/// mail-parser 0.11.9 subtracts with overflow in its quoted-printable decoder when a boundary
/// follows at once. Only builds with overflow checks panic there (the tests, the fuzz targets);
/// the product's release build wraps and goes on. Not counted by [`panics`].
const KNOWN_BENIGN: [(&str, u32); 1] = [("decoders/quoted_printable.rs", 138)];

/// How many panics this thread has seen (caught or not) since [`count_panics`] was first
/// called, but for the known benign ones of dependencies: the parsers catch their own panics
/// and fall back, which would hide them from a test.
#[must_use]
pub fn panics() -> u64 {
    PANICS.with(Cell::get)
}

/// Installs (once) a panic hook that counts each panic on its thread for [`panics`], then
/// calls the hook that was there before.
pub fn count_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let known = info.location().is_some_and(|l| {
                l.file().contains("mail-parser")
                    && KNOWN_BENIGN
                        .iter()
                        .any(|(file, line)| l.file().ends_with(file) && l.line() == *line)
            });
            if !known {
                PANICS.with(|p| p.set(p.get() + 1));
                previous(info);
            }
        }));
    });
}

/// A small reader of fuzz input: bytes, numbers and length-prefixed slices, giving zeros and
/// empty slices once the input is used up.
struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    fn new(data: &'a [u8]) -> Bytes<'a> {
        Bytes { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A slice whose length is the next two bytes (little-endian), at most `max`.
    fn slice(&mut self, max: usize) -> &'a [u8] {
        let n = usize::from(u16::from_le_bytes([self.byte(), self.byte()]));
        self.take(n.min(max))
    }

    /// A short slice whose length is the next byte.
    fn short(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte());
        self.take(n)
    }
}

/// A current-thread tokio runtime for the drivers, one per thread, reused by every input.
fn runtime() -> &'static tokio::runtime::Runtime {
    thread_local! {
        static RUNTIME: &'static tokio::runtime::Runtime = Box::leak(Box::new(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime"),
        ));
    }
    RUNTIME.with(|rt| *rt)
}

#[cfg(test)]
mod tests;

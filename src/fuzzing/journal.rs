//! The journal parser: the in-memory parse, the windowed parse over an [`Input`] at a window the
//! input chooses, and the NDR inspection (with the returned report parsed in turn).

use crate::journal::{self, dsn, Input, MIN_WINDOW};

/// Parses `data` every way the ingest path can: [`journal::parse`], [`journal::parse_windowed`]
/// at [`MIN_WINDOW`] and at a window chosen by the input's last byte, and
/// [`dsn::inspect`]; a recoverable NDR's returned report is copied out and parsed too.
///
/// Panics (an invariant broken) when: anything panicked inside, even where a parser caught it
/// (counted by the hook of [`super::count_panics`], which this installs), but for the known
/// benign panic of mail-parser ([`super::panics`]); a key is empty; the report returned from an
/// NDR is longer than the NDR.
pub fn journal(data: &[u8]) {
    super::count_panics();
    let before = super::panics();
    let whole = journal::parse(data);
    check(&whole, "parse");
    let window = MIN_WINDOW + usize::from(data.last().copied().unwrap_or(0)) * 7;
    for window in [MIN_WINDOW, window] {
        let windowed = journal::parse_windowed(data, window).expect("reading memory cannot fail");
        check(&windowed, "parse_windowed");
    }
    let ndr = dsn::inspect(data).expect("reading memory cannot fail");
    if let Some(ndr) = ndr {
        let mut returned = Vec::new();
        ndr.copy_returned(data, |chunk| {
            returned.extend_from_slice(chunk);
            Ok(())
        })
        .expect("copying into memory cannot fail");
        assert!(
            ndr.recoverable() || returned.is_empty(),
            "an unrecoverable NDR returned {} bytes",
            returned.len()
        );
        assert!(
            returned.len() <= data.len(),
            "the report returned from an NDR ({} bytes) is longer than the NDR ({} bytes)",
            returned.len(),
            data.len()
        );
        if ndr.recoverable() {
            check(&journal::parse(&returned), "parse of an NDR's report");
            let input: &[u8] = &returned;
            check(
                &journal::parse_windowed(input, MIN_WINDOW).expect("memory"),
                "parse_windowed of an NDR's report",
            );
        }
    }
    // The size an Input reports is the one the parsers went by.
    assert_eq!(data.size().ok(), Some(data.len() as u64));
    assert_eq!(
        super::panics(),
        before,
        "a panic was caught inside the parsers"
    );
}

fn check(report: &journal::Report, what: &str) {
    assert!(!report.key.is_empty(), "{what} gave an empty key");
}

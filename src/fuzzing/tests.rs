//! The committed seed corpus and regressions (`fuzz/corpus/<target>/`, `fuzz/regressions/`)
//! replayed through the fuzz drivers, and property tests of the same invariants.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::{count_panics, journal, panics, pop3_client, smtp_session};

/// Runs `driver` on `data` and fails if anything panicked inside, even where it was caught.
fn no_panic(driver: fn(&[u8]), data: &[u8]) {
    count_panics();
    let before = panics();
    driver(data);
    assert_eq!(panics(), before, "a panic was caught inside");
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.expect("a directory entry").path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The seed corpus and the regressions of `target`, through its driver; there must be seeds.
fn replay(target: &str, driver: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = files(&fuzz.join("corpus").join(target));
    assert!(
        seeds.len() >= 3,
        "fuzz/corpus/{target} has {} seeds",
        seeds.len()
    );
    for file in seeds
        .iter()
        .chain(&files(&fuzz.join("regressions").join(target)))
    {
        let data = std::fs::read(file).expect("a corpus file");
        let run = std::panic::catch_unwind(|| no_panic(driver, &data));
        assert!(run.is_ok(), "{} fails", file.display());
    }
}

#[test]
fn journal_corpus_and_regressions_pass() {
    replay("journal", journal);
}

#[test]
fn smtp_corpus_and_regressions_pass() {
    replay("smtp", smtp_session);
}

#[test]
fn pop3_corpus_and_regressions_pass() {
    replay("pop3", pop3_client);
}

/// Bytes rich in what the parsers and unstuffers branch on.
fn tricky(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(b'.'),
            Just(b'\r'),
            Just(b'\n'),
            Just(b'a'),
            Just(b':'),
            Just(b'-'),
            any::<u8>(),
        ],
        0..max,
    )
}

/// A scripted SMTP input (see `smtp.rs`): EHLO, then the given transactions.
fn smtp_script(transactions: &[(bool, u8, Vec<u8>)]) -> Vec<u8> {
    let mut script = vec![1, 0];
    for (bdat, to, body) in transactions {
        let len = u16::try_from(body.len()).expect("short").to_le_bytes();
        if *bdat {
            // BDAT: recipient, one chunk.
            script.extend_from_slice(&[5, *to, 0, len[0], len[1]]);
        } else {
            script.extend_from_slice(&[3, 0, *to, len[0], len[1]]);
        }
        script.extend_from_slice(body);
    }
    script
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        // Deterministic: the same cases on every run (a fuzzer explores; a test repeats).
        rng_seed: prop::test_runner::RngSeed::Fixed(0x5EED_F022),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_journal_parsers_take_any_bytes(data in tricky(1500)) {
        no_panic(journal, &data);
    }

    #[test]
    fn mutated_seeds_never_panic_the_journal_parsers(
        seed in 0usize..64, at in any::<prop::sample::Index>(), cut in 0usize..400,
        insert in tricky(64),
    ) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/journal");
        let seeds = files(&dir);
        let mut data = std::fs::read(&seeds[seed % seeds.len()]).expect("a seed");
        let at = at.index(data.len() + 1);
        let end = (at + cut).min(data.len());
        data.splice(at..end, insert);
        no_panic(journal, &data);
    }

    #[test]
    fn smtp_stores_exactly_what_it_accepted(
        transactions in prop::collection::vec((any::<bool>(), 0u8..4, tricky(600)), 1..4),
    ) {
        no_panic(smtp_session, &smtp_script(&transactions));
    }

    #[test]
    fn smtp_survives_any_client_bytes(data in tricky(1000)) {
        let mut raw = vec![0];
        raw.extend_from_slice(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<journal@journal.test>\r\n");
        raw.extend_from_slice(&data);
        no_panic(smtp_session, &raw);
    }

    #[test]
    fn pop3_retr_gives_exactly_the_unstuffed_body(body in tricky(1000)) {
        let mut input = vec![0];
        input.extend_from_slice(&body);
        no_panic(pop3_client, &input);
        input.extend_from_slice(b"\r\n.\r\n");
        no_panic(pop3_client, &input);
    }

    #[test]
    fn the_pop3_client_survives_any_server_bytes(data in tricky(1000)) {
        let mut input = vec![1];
        input.extend_from_slice(b"+OK hi\r\n+OK\r\nUSER\r\n.\r\n+OK\r\n+OK\r\n+OK 1 2\r\n");
        input.extend_from_slice(&data);
        no_panic(pop3_client, &input);
    }
}

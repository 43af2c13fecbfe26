//! The offline archive commands: `verify` (the archive against its index), `reindex` (the
//! index rebuilt from the Maildir) and `ledger head --offline` / `ledger verify` (the ingest
//! ledger). The server must be stopped (the index is opened by one process at a time); a
//! running server verifies through its admin API (`POST /api/v1/verify`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use journal_gateway::archive::{Archive, ArchiveError};
use journal_gateway::config::Config;
use journal_gateway::index::{IndexError, LedgerHead};
use journal_gateway::reindex::LedgerCarry;
use journal_gateway::verify;

/// Opens the archive of a stopped gateway; a running one gets a hint to use the API.
fn open_offline(config: &Config) -> anyhow::Result<Archive> {
    Archive::open_with_cache(&config.data_dir, config.index_cache_bytes())
        .map_err(|e| {
            let in_use = matches!(
                &e,
                ArchiveError::OpenIndex {
                    source: IndexError::Database(redb::Error::DatabaseAlreadyOpen),
                    ..
                }
            );
            let e = anyhow::Error::from(e);
            if in_use {
                e.context("the gateway (or another command) has the index open: stop it to verify offline, or ask the running gateway to verify in the background (POST /api/v1/verify)")
            } else {
                e
            }
        })
}

/// `journal-gateway verify`: checks every archived file against its record, prints each problem
/// and a summary; fails when any problem was found.
pub fn verify(config: Option<&PathBuf>) -> anyhow::Result<()> {
    let config = crate::load(config)?;
    let archive = open_offline(&config)?;
    let started = Instant::now();
    let progress = verify::verify(&archive, &|| false, &mut |_, problems| {
        for p in problems {
            println!("{p}");
        }
    })?;
    let elapsed = started.elapsed();
    let (per_sec, bytes_per_sec) = verify::rate(&progress, elapsed);
    println!(
        "checked {} messages ({} bytes), {} files and {} ledger entries in {:.1} s ({per_sec:.0} messages/s, {:.1} MB/s): {} problem(s)",
        progress.checked,
        progress.bytes,
        progress.files,
        progress.ledger_entries,
        elapsed.as_secs_f64(),
        bytes_per_sec / 1e6,
        progress.problems.len()
    );
    print_head(progress.ledger_head);
    if !progress.problems.is_empty() {
        bail!(
            "the archive in {} does not match its index: {} problem(s), listed above",
            config.data_dir.display(),
            progress.problems.len()
        );
    }
    Ok(())
}

/// `journal-gateway reindex`: rebuilds the index from the Maildir and says what it could not
/// bring back; fails when a file could not be read.
pub fn reindex(config: Option<&PathBuf>) -> anyhow::Result<()> {
    let config = crate::load(config)?;
    let started = Instant::now();
    let r = journal_gateway::reindex::reindex(&config.data_dir, config.index_cache_bytes())?;
    for file in &r.duplicates {
        println!("DUPLICATE FILE {file}: holds a message another file holds; left unindexed");
    }
    for (file, error) in &r.unreadable {
        println!("UNREADABLE {file}: {error}");
    }
    println!(
        "rebuilt {} from {} files in {:.1} s: {} indexed ({} variants), {} duplicate, {} unreadable",
        config.data_dir.join("index.redb").display(),
        r.files,
        started.elapsed().as_secs_f64(),
        r.indexed,
        r.variants,
        r.duplicates.len(),
        r.unreadable.len()
    );
    if let Some(old) = &r.old_index {
        println!("the old index is kept as {}", old.display());
    }
    match &r.ledger {
        LedgerCarry::Kept { entries, head } => println!(
            "the ledger is kept ({entries} entries, head {head}); {} records took their key and arrivals (sources, times) from it",
            r.from_ledger
        ),
        LedgerCarry::None => println!("the old index had no ledger entries"),
        LedgerCarry::Lost(why) => println!(
            "LEDGER LOST: the old index database does not open ({why}); the next arrival begins a new chain (heads recorded before cannot be checked against it)"
        ),
    }
    println!(
        "not recoverable from the files: envelopes, UIDLs and NDR details of each arrival (and its source and time where the ledger does not give them), recipients only later reports carried, per-source counters, collector state and history"
    );
    if !r.unreadable.is_empty() {
        bail!(
            "{} file(s) could not be read and are not indexed (listed above)",
            r.unreadable.len()
        );
    }
    Ok(())
}

fn print_head(head: Option<LedgerHead>) {
    match head {
        Some(head) => println!("ledger head: {head}"),
        None => println!("ledger head: none (no arrival since the ledger began)"),
    }
}

/// `journal-gateway ledger head --offline`: the head of a stopped gateway's ledger.
pub fn ledger_head(config: Option<&PathBuf>) -> anyhow::Result<()> {
    let config = crate::load(config)?;
    let status = open_offline(&config)?.index().ledger_status()?;
    match status.head {
        Some(head) => println!("{head}"),
        None => println!("none"),
    }
    println!(
        "{} ledger entries; the index holds {} records",
        status.entries, status.records
    );
    Ok(())
}

/// `journal-gateway ledger verify [--head SEQ:HASH]`: checks the ledger's chain against the
/// index (and the recorded head), prints each problem; fails when any was found.
pub fn ledger_verify(config: Option<&PathBuf>, head: Option<&str>) -> anyhow::Result<()> {
    let recorded = head
        .map(str::parse::<LedgerHead>)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--head: {e}"))?;
    let config = crate::load(config)?;
    let archive = open_offline(&config)?;
    let progress =
        verify::verify_ledger(archive.index(), recorded, &|| false, &mut |_, problems| {
            for p in problems {
                println!("{p}");
            }
        })?;
    println!(
        "checked {} ledger entries: {} problem(s)",
        progress.ledger_entries,
        progress.problems.len()
    );
    print_head(progress.ledger_head);
    if let (Some(r), true) = (recorded, progress.problems.is_empty()) {
        println!(
            "the recorded head {r} is in the chain: nothing before it was removed or rewritten"
        );
    }
    if !progress.problems.is_empty() {
        bail!(
            "the ledger in {} does not verify: {} problem(s), listed above",
            config.data_dir.display(),
            progress.problems.len()
        );
    }
    Ok(())
}

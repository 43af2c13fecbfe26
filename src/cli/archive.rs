//! The offline archive commands: `verify` (the archive against its index) and `reindex` (the
//! index rebuilt from the Maildir). The server must be stopped (the index is opened by one
//! process at a time); a running server verifies through its admin API (`POST /api/v1/verify`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use journal_gateway::archive::{Archive, ArchiveError};
use journal_gateway::index::IndexError;
use journal_gateway::verify;

/// `journal-gateway verify`: checks every archived file against its record, prints each problem
/// and a summary; fails when any problem was found.
pub fn verify(config: Option<&PathBuf>) -> anyhow::Result<()> {
    let config = crate::load(config)?;
    let archive = Archive::open_with_cache(&config.data_dir, config.index_cache_bytes())
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
        })?;
    let started = Instant::now();
    let progress = verify::verify(&archive, &|| false, &mut |_, problems| {
        for p in problems {
            println!("{p}");
        }
    })?;
    let elapsed = started.elapsed();
    let (per_sec, bytes_per_sec) = verify::rate(&progress, elapsed);
    println!(
        "checked {} messages ({} bytes) and {} files in {:.1} s ({per_sec:.0} messages/s, {:.1} MB/s): {} problem(s)",
        progress.checked,
        progress.bytes,
        progress.files,
        elapsed.as_secs_f64(),
        bytes_per_sec / 1e6,
        progress.problems.len()
    );
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
    println!(
        "not recoverable from the files: arrival history (sources, times, envelopes, UIDLs), recipients only later reports carried, per-source counters, collector state and history"
    );
    if !r.unreadable.is_empty() {
        bail!(
            "{} file(s) could not be read and are not indexed (listed above)",
            r.unreadable.len()
        );
    }
    Ok(())
}

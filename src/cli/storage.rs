//! `journal-gateway storage copy` (an archive moved between redb + Maildir and PostgreSQL + S3)
//! and `journal-gateway storage sweep` (the shared store's orphan objects removed); see
//! `docs/scale-out.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use journal_gateway::storage_copy::{self, CopyReport};
use journal_gateway::sweep::{self, SweepOptions, SweepOutcome, Sweeper};

/// `journal-gateway storage ...`.
#[derive(Subcommand)]
pub enum StorageCommand {
    /// Copy an archive between redb + Maildir and PostgreSQL + S3 (either way): every record as
    /// it is, every message's SHA-256 verified, counts compared at the end. Resumable: run it
    /// again after an interruption and it goes on (what the target holds with the same SHA-256
    /// is skipped). A redb side must not be in use by a running gateway; no node may ingest
    /// into the target meanwhile.
    Copy {
        /// The configuration of the archive to copy (its `[index]`, `[store]` and `data_dir`).
        #[arg(long)]
        from: PathBuf,
        /// The configuration of the archive to copy into.
        #[arg(long)]
        to: PathBuf,
    },
    /// Remove the shared store's objects no record references (a crash between an object's
    /// PUT and its index commit), once older than the grace period by the store's clock. One
    /// node at a time (a lease in PostgreSQL); another node sweeping makes this a no-op.
    Sweep {
        /// Keep objects younger than this (`24h`, `90m`, `2d`, `30s`). Default 24h.
        #[arg(long, value_parser = parse_duration, default_value = "24h")]
        grace: Duration,
        /// Only count what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// The configuration of a node of the shared archive.
        #[arg(long, short)]
        config: PathBuf,
    },
}

/// Runs a `storage` verb.
pub fn run(command: StorageCommand) -> anyhow::Result<()> {
    match command {
        StorageCommand::Copy { from, to } => copy(&from, &to),
        StorageCommand::Sweep {
            grace,
            dry_run,
            config,
        } => sweep(grace, dry_run, &config),
    }
}

fn copy(from: &PathBuf, to: &PathBuf) -> anyhow::Result<()> {
    let from = crate::load(Some(from))?;
    let to = crate::load(Some(to))?;
    let started = Instant::now();
    let mut last = Instant::now();
    let report =
        crate::runtime()?.block_on(storage_copy::copy(&from, &to, &mut |r: &CopyReport| {
            if last.elapsed() >= storage_copy::PROGRESS_EVERY {
                last = Instant::now();
                println!(
                    "read {} records: {} copied ({} bytes), {} there already",
                    r.read, r.copied, r.bytes, r.skipped
                );
            }
        }))?;
    println!(
        "copied {} records ({} bytes, every SHA-256 verified; {} objects found stored by an interrupted run), skipped {} the target held already, in {:.1} s",
        report.copied,
        report.bytes,
        report.objects_found,
        report.skipped,
        started.elapsed().as_secs_f64()
    );
    println!(
        "records: source {}, target {}",
        report.source_records, report.target_records
    );
    if report.target_records > report.source_records {
        println!(
            "the target holds {} records the source does not",
            report.target_records - report.source_records
        );
    }
    Ok(())
}

fn sweep(grace: Duration, dry_run: bool, config: &PathBuf) -> anyhow::Result<()> {
    let config = crate::load(Some(config))?;
    let mut options = SweepOptions::new(config.index.node_name());
    options.grace = grace;
    options.dry_run = dry_run;
    if grace < Duration::from_hours(2) && !dry_run {
        eprintln!(
            "warning: a grace period of {}s is short: an object a node stored moments ago and has not committed yet could be removed (default {}h)",
            grace.as_secs(),
            sweep::DEFAULT_GRACE.as_secs() / 3600
        );
    }
    let outcome = crate::runtime()?.block_on(async {
        let sweeper = Sweeper::open(&config).await?;
        sweeper.run_once(&options).await
    })?;
    match outcome {
        SweepOutcome::Busy { holder } => {
            println!("node {holder:?} is sweeping (it holds the sweeper's lease): nothing done");
        }
        SweepOutcome::Swept(r) => {
            let verb = if r.dry_run { "would remove" } else { "removed" };
            println!(
                "{} objects: {} younger than {}s (kept), {} referenced (kept), {verb} {} orphans ({} bytes)",
                r.listed,
                r.young,
                grace.as_secs(),
                r.referenced,
                r.orphans,
                r.orphan_bytes
            );
        }
    }
    Ok(())
}

/// `90s`, `30m`, `24h`, `2d`, or a number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: a number with s, m, h or d"))?;
    let secs = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_hours(24)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_mins(90)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_hours(48)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}

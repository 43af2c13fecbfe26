//! The `journal-gateway` command line. Each verb is a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use journal_gateway::config::Config;

#[derive(Parser)]
#[command(
    name = "journal-gateway",
    version,
    about = "Archives Exchange journal reports received over SMTP and POP3S"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: SMTP listener, POP3 collectors, HTTP metrics and admin API.
    Serve {
        /// Configuration file (default: an embedded configuration for a local trial).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and print what it would do.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Copy every archived message into a Maildir, with an index.tsv of keys, recipients and
    /// sources. Offline: stop the server first.
    Export {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Destination directory (created; must be empty or new).
        #[arg(long)]
        out: PathBuf,
    },
    /// POP3 collectors.
    Collector {
        #[command(subcommand)]
        action: CollectorCommand,
    },
    /// Write sample Exchange 2007 journal reports into a Maildir (for trials and benchmarks).
    #[command(hide = true)]
    Sample {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        count: u64,
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Approximate size of each report in bytes.
        #[arg(long, default_value_t = 9000)]
        size: usize,
    },
    /// Ingest sample reports in a loop, printing each key once its ingest returned (crash tests).
    #[command(hide = true)]
    IngestLoop {
        #[arg(long)]
        data_dir: PathBuf,
        /// First message number.
        #[arg(long, default_value_t = 0)]
        start: u64,
        #[arg(long, default_value_t = 8)]
        tasks: u64,
    },
}

#[derive(Subcommand)]
enum CollectorCommand {
    /// Test collection, run directly (offline: stop the server first): fetch and archive up to
    /// N messages, delete nothing. Works on an inactive collector.
    Test {
        /// The collector's name (`[[collector]] name`).
        name: String,
        /// Messages to fetch (default: the collector's `test_limit`, 200).
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JOURNAL_GATEWAY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    match config {
        Some(path) => Config::load(path),
        None => Ok(Config::embedded_default()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config } => {
            if config.is_none() {
                tracing::info!("no --config given: using the embedded default (data in ./data)");
            }
            let config = load(config.as_ref())?;
            runtime()?.block_on(journal_gateway::server::serve(config))
        }
        Command::CheckConfig { config } => {
            let config = load(config.as_ref())?;
            print!("{}", journal_gateway::server::describe(&config));
            println!("configuration OK");
            Ok(())
        }
        Command::Export { config, out } => {
            let config = load(config.as_ref())?;
            let archive = journal_gateway::archive::Archive::open(&config.data_dir)?;
            let n = archive.export(&out)?;
            println!("exported {n} messages to {}", out.display());
            Ok(())
        }
        Command::Collector {
            action:
                CollectorCommand::Test {
                    name,
                    limit,
                    config,
                },
        } => {
            let config = load(config.as_ref())?;
            let Some(cfg) = config.collector(&name).cloned() else {
                anyhow::bail!("no [[collector]] named {name:?} in the configuration");
            };
            let limit = limit.unwrap_or(cfg.test_limit);
            let gateway = journal_gateway::server::Gateway::open(config)?;
            runtime()?.block_on(async move {
                let collector = journal_gateway::pop3::Collector::new(&cfg, gateway.clone())?;
                let result = collector.collect(journal_gateway::pop3::RunKind::Test { limit }).await;
                gateway.ingest.close().await;
                let summary = match &result {
                    Ok(s) => s,
                    Err(f) => &f.summary,
                };
                println!(
                    "test collection {name}: {} on server, {} retrieved, {} archived, {} duplicates, {} bytes, nothing deleted",
                    summary.on_server.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
                    summary.retrieved,
                    summary.archived,
                    summary.duplicates,
                    summary.bytes
                );
                result.map(|_| ()).map_err(|f| anyhow::anyhow!(f.error))
            })
        }
        Command::Sample {
            out,
            count,
            start,
            size,
        } => {
            journal_gateway::journal::sample::write_maildir(&out, start..start + count, size)
                .with_context(|| format!("writing samples into {}", out.display()))?;
            println!("wrote {count} journal reports into {}/new", out.display());
            Ok(())
        }
        Command::IngestLoop {
            data_dir,
            start,
            tasks,
        } => runtime()?.block_on(ingest_loop(data_dir, start, tasks)),
    }
}

/// Ingests numbered sample reports from `tasks` concurrent tasks until killed; every fifth is a
/// second report (other recipients) of an earlier original. Prints `acked <key>` after each
/// ingest returned.
async fn ingest_loop(data_dir: PathBuf, start: u64, tasks: u64) -> anyhow::Result<()> {
    use journal_gateway::ingest::{Delivery, Ingest};
    use journal_gateway::journal::{sample, Recipient, RecipientKind};
    use std::io::Write;
    let archive = std::sync::Arc::new(journal_gateway::archive::Archive::open(&data_dir)?);
    let ingest = Ingest::new(archive, journal_gateway::metrics::Metrics::new());
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let ingest = ingest.clone();
        set.spawn(async move {
            let mut n = 0u64;
            loop {
                let i = start + t + n * tasks;
                let report = if n % 5 == 4 {
                    let extra = Recipient {
                        address: format!("auditor-{i}@example.com"),
                        kind: RecipientKind::Bcc,
                        expanded: None,
                        forwarded: None,
                    };
                    sample::report_2007(&sample::numbered(i - tasks, 2000), &[extra])
                } else {
                    sample::report_2007(&sample::numbered(i, 2000), &[])
                };
                let outcome = ingest
                    .ingest_bytes(Delivery::smtp(String::new(), vec![]), &report)
                    .await?;
                let mut out = std::io::stdout().lock();
                writeln!(out, "acked {}", outcome.key())?;
                out.flush()?;
                n += 1;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

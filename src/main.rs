//! The `journal-gateway` command line. Each verb is a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use journal_gateway::config::Config;

#[derive(Parser)]
#[command(name = "journal-gateway", version, about = "Archives Exchange journal reports received over SMTP and POP3S")]
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
    /// Manage the SMTP TLS certificate.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
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
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Generate a self-signed certificate (cert.pem, key.pem) and print its SHA-256 fingerprint.
    Generate {
        /// DNS name or IP address to put in the certificate (repeat for more; the first is the CN).
        #[arg(long = "hostname", required = true)]
        hostnames: Vec<String>,
        /// Directory for cert.pem and key.pem (created if needed).
        #[arg(long, default_value = "certs")]
        out: PathBuf,
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
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the tokio runtime")
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
        Command::Certs { command: CertsCommand::Generate { hostnames, out } } => {
            let g = journal_gateway::tls::generate(&hostnames, &out)?;
            println!("certificate: {}", g.cert_path.display());
            println!("private key: {}", g.key_path.display());
            println!("SHA-256 fingerprint: {}", g.fingerprint);
            Ok(())
        }
        Command::Export { config, out } => {
            let config = load(config.as_ref())?;
            let archive = journal_gateway::archive::Archive::open(&config.data_dir)?;
            let n = archive.export(&out)?;
            println!("exported {n} messages to {}", out.display());
            Ok(())
        }
    }
}

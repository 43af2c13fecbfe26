//! The `journal-gateway` command line. Each verb is a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
mod cli;

use cli::client::{Remote, Verb};
use cli::{offline_run, Offline};
use journal_gateway::config::{Config, LogFormat};

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
    /// Check every archived file against its index entry (SHA-256, size), and find files
    /// without entries and entries without files. Offline: stop the server first (a running
    /// server verifies with `POST /api/v1/verify`). Exits non-zero naming each problem.
    Verify {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Rebuild the index (index.redb) from the Maildir, when it is damaged or lost. Offline:
    /// stop the server first. The old index is kept beside it.
    Reindex {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The tamper-evident ingest ledger: print its head (to record elsewhere), check the chain
    /// against a head recorded earlier.
    Ledger {
        #[command(subcommand)]
        action: LedgerCommand,
    },
    /// The admin API token.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Totals per source, "collected since", collectors (asks the running server).
    Status {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// POP3 collectors: list, history, test collection, activate, deactivate, retire.
    Collector {
        #[command(subcommand)]
        action: CollectorCommand,
    },
    /// The POP3 -> SMTP cutover.
    Migration {
        #[command(subcommand)]
        action: MigrationCommand,
    },
    /// Ask the running server to read its configuration file again (as SIGHUP does) and print
    /// what it applied and what needs a restart. An invalid file is refused whole.
    Reload {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Ask the running server for a consistent online copy of its archive (index snapshot and
    /// message files) into DIR, a new or empty directory on the server's host.
    Backup {
        /// Destination directory (created; must be empty or new).
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Restore a backup into the configuration's data directory, which must be empty or absent (the
    /// gateway must not be running on it); every message is checked byte-exact.
    Restore {
        /// The backup directory (written by `backup`).
        #[arg(long)]
        from: PathBuf,
        /// Configuration file (its data directory receives the backup).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// SMTP AUTH users (`[smtp] users_file`): add, remove, list. A running gateway picks the
    /// changes up by itself.
    SmtpUser {
        #[command(subcommand)]
        action: SmtpUserCommand,
    },
    /// Forwarding to downstream archives (`[[forward]]`): queues, failures, retry, backfill.
    Forward {
        #[command(subcommand)]
        action: ForwardCommand,
    },
    /// The storage engines (docs/scale-out.md): copy an archive between redb + Maildir and
    /// PostgreSQL + S3, sweep the shared store's orphan objects.
    Storage {
        #[command(subcommand)]
        action: cli::storage::StorageCommand,
    },
}

#[derive(Subcommand)]
enum SmtpUserCommand {
    /// Add a user, or set a new password for one; the password is read from standard input
    /// (its first line).
    Add {
        /// The user name (letters, digits, `.-_@+`).
        name: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Remove a user.
    Remove {
        name: String,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The user names.
    List {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum LedgerCommand {
    /// Print the ledger's head as SEQ:HASH, to record elsewhere: a later `ledger verify --head`
    /// proves nothing recorded up to it was removed or rewritten. Asks the running server;
    /// --offline reads the index of a stopped gateway.
    Head {
        /// Read the index directly (the gateway stopped) instead of asking the server.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Check the ledger's chain (every link and hash, every entry against its record, the
    /// count) and, with --head, that a head recorded earlier is still in it. Offline: stop the
    /// server first (a running server checks with `POST /api/v1/verify?head=SEQ:HASH`). Exits
    /// non-zero naming each problem.
    Verify {
        /// A head recorded earlier (SEQ:HASH, as `ledger head` printed it).
        #[arg(long)]
        head: Option<String>,
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ForwardCommand {
    /// Forward targets with their queue depth, oldest entry and last error.
    List {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// One target: its queue, last error and failed entries (with the downstream's reply).
    Show {
        /// The target's name (`[[forward]] name`).
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Make the target's failed (and deferred) entries due now.
    Retry {
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Queue already-archived messages for the target (bringing a new downstream online);
    /// messages it already had (queued now, forwarded live, or backfilled before) are skipped.
    Backfill {
        name: String,
        /// Only messages first seen at or after this date (2026-01-31, UTC) or RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
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

#[derive(Subcommand)]
enum TokenCommand {
    /// Replace the admin token with a new random one (in the configured admin token file, or
    /// admin.token in the data directory) and have the running gateway take it: no restart; the
    /// old token is refused from then on.
    Rotate {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Admin API URL of the running gateway (default: http://<[http] listen>).
        #[arg(long)]
        server: Option<String>,
    },
}

/// How the CLI reaches the running server's admin API.
#[derive(clap::Args, Debug, Clone)]
struct RemoteArgs {
    /// Admin API URL (default: http://<[http] listen of the configuration>).
    #[arg(long)]
    server: Option<String>,
    /// Configuration file (for the default server URL and the admin token file).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum CollectorCommand {
    /// Collectors with their state, queue depth and last success.
    List {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The last collection runs of a collector, newest first.
    History {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Test collection: fetch and archive up to N messages, delete nothing. Works on an inactive
    /// collector.
    Test {
        /// The collector's name (`[[collector]] name`).
        name: String,
        /// Messages to fetch, at least 1 (default: the collector's `test_limit`, 200).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// Run it in this process instead of asking the server (stop the server first).
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Collect now (a normal run, deleting what is archived when `delete = true`).
    Collect {
        name: String,
        /// Run it in this process instead of asking the server (stop the server first): drains
        /// the mailbox and exits.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Make the collector poll (overrides the configuration's `active`).
    Activate {
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Stop the collector polling (test collections still work).
    Deactivate {
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Retire the collector for good once the cutover verdict says it is safe.
    Retire {
        name: String,
        /// Retire even though the verdict says not safe (logged by the server).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Subcommand)]
enum MigrationCommand {
    /// The cutover verdict per collector, each check with its figures.
    Status {
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config.as_ref()),
        command => {
            init_logging(LogFormat::Text);
            run(command)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr in `format`, filtered by `JOURNAL_GATEWAY_LOG` (default `info`).
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("JOURNAL_GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (none is made) would keep the first logger.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// `serve`: the configuration is read before logging starts, since it chooses the log format (an
/// unreadable configuration is reported as plain text by `main`).
fn serve(config: Option<&PathBuf>) -> anyhow::Result<()> {
    let loaded = load(config);
    init_logging(loaded.as_ref().map_or(LogFormat::Text, |c| c.log_format));
    let loaded = loaded?;
    if config.is_none() {
        tracing::info!("no --config given: using the embedded default (data in ./data)");
    }
    runtime()?.block_on(journal_gateway::server::serve(loaded))
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

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => serve(config.as_ref()),
        Command::CheckConfig { config } => {
            let config = load(config.as_ref())?;
            print!("{}", journal_gateway::server::describe(&config));
            let refusals = journal_gateway::server::shared_refusals(&config);
            if !refusals.is_empty() {
                anyhow::bail!(
                    "a node of a shared archive (PostgreSQL + S3) cannot serve this configuration yet (see docs/scale-out.md):\n  - {}",
                    refusals.join("\n  - ")
                );
            }
            println!("configuration OK");
            Ok(())
        }
        Command::Certs {
            command: CertsCommand::Generate { hostnames, out },
        } => {
            let g = journal_gateway::tls::generate(&hostnames, &out)?;
            println!("certificate: {}", g.cert_path.display());
            println!("private key: {}", g.key_path.display());
            println!("SHA-256 fingerprint: {}", g.fingerprint);
            Ok(())
        }
        Command::Export { config, out } => {
            let config = load(config.as_ref())?;
            local_only(&config, "export")?;
            let archive = journal_gateway::archive::Archive::open(&config.data_dir)?;
            let n = archive.export(&out)?;
            println!("exported {n} messages to {}", out.display());
            Ok(())
        }
        Command::SmtpUser { action } => smtp_user(action),
        Command::Storage { action } => cli::storage::run(action),
        Command::Verify { config } => {
            local_only(&load(config.as_ref())?, "verify")?;
            cli::archive::verify(config.as_ref())
        }
        Command::Reindex { config } => {
            local_only(&load(config.as_ref())?, "reindex")?;
            cli::archive::reindex(config.as_ref())
        }
        Command::Ledger {
            action: LedgerCommand::Head { offline, remote },
        } => {
            if offline {
                local_only(&load(remote.config.as_ref())?, "ledger head --offline")?;
                cli::archive::ledger_head(remote.config.as_ref())
            } else {
                remote_verb(remote, Verb::LedgerHead)
            }
        }
        Command::Ledger {
            action: LedgerCommand::Verify { head, config },
        } => {
            local_only(&load(config.as_ref())?, "ledger verify")?;
            cli::archive::ledger_verify(config.as_ref(), head.as_deref())
        }
        Command::Token {
            command: TokenCommand::Rotate { config, server },
        } => cli::token::rotate(config.as_ref(), server),
        Command::Status { remote } => remote_verb(remote, Verb::Status),
        Command::Reload { remote } => remote_verb(remote, Verb::Reload),
        Command::Backup { to, remote } => {
            // The server writes the directory: it needs an absolute path.
            let to = std::path::absolute(&to).with_context(|| format!("--to {}", to.display()))?;
            remote_verb(remote, Verb::Backup { to })
        }
        Command::Restore { from, config } => {
            let config = Config::load(&config)?;
            local_only(&config, "restore")?;
            let restored = journal_gateway::archive::restore(&from, &config.data_dir)?;
            println!(
                "restored {} messages ({} bytes) from {} into {}; every file checked against its record",
                restored.messages,
                restored.bytes,
                from.display(),
                config.data_dir.display()
            );
            Ok(())
        }
        Command::Forward { action } => {
            let (remote, verb) = match action {
                ForwardCommand::List { remote } => (remote, Verb::ForwardList),
                ForwardCommand::Show { name, remote } => (remote, Verb::ForwardShow { name }),
                ForwardCommand::Retry { name, remote } => (remote, Verb::ForwardRetry { name }),
                ForwardCommand::Backfill {
                    name,
                    since,
                    remote,
                } => {
                    if let Some(s) = &since {
                        journal_gateway::forward::parse_since(s)
                            .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
                    }
                    (remote, Verb::ForwardBackfill { name, since })
                }
            };
            remote_verb(remote, verb)
        }
        Command::Migration {
            action: MigrationCommand::Status { remote },
        } => remote_verb(remote, Verb::MigrationStatus),
        Command::Collector {
            action:
                CollectorCommand::Test {
                    name,
                    limit,
                    offline: true,
                    remote,
                },
        } => offline_run(remote.config.as_ref(), name, Offline::Test { limit }),
        Command::Collector {
            action:
                CollectorCommand::Collect {
                    name,
                    offline: true,
                    remote,
                },
        } => offline_run(remote.config.as_ref(), name, Offline::Collect),
        Command::Collector { action } => {
            let (remote, verb) = match action {
                CollectorCommand::List { remote } => (remote, Verb::CollectorList),
                CollectorCommand::History {
                    name,
                    limit,
                    remote,
                } => (remote, Verb::CollectorHistory { name, limit }),
                CollectorCommand::Test {
                    name,
                    limit,
                    remote,
                    ..
                } => (remote, Verb::CollectorTest { name, limit }),
                CollectorCommand::Collect { name, remote, .. } => {
                    (remote, Verb::CollectorCollect { name })
                }
                CollectorCommand::Activate { name, remote } => {
                    (remote, Verb::CollectorActivate { name })
                }
                CollectorCommand::Deactivate { name, remote } => {
                    (remote, Verb::CollectorDeactivate { name })
                }
                CollectorCommand::Retire {
                    name,
                    force,
                    remote,
                } => (remote, Verb::CollectorRetire { name, force }),
            };
            remote_verb(remote, verb)
        }
    }
}

/// Refuses an offline command that works on the node's own redb + Maildir when the
/// configuration is a node of a shared archive (PostgreSQL + S3): its data directory holds no
/// archive, and the command would answer about an empty one.
fn local_only(config: &Config, command: &str) -> anyhow::Result<()> {
    if journal_gateway::server::is_shared(config) {
        anyhow::bail!(
            "`{command}` works on a single node's archive (redb + Maildir); it is not available on a node of a shared archive (PostgreSQL + S3) yet: see docs/scale-out.md"
        );
    }
    Ok(())
}

/// `smtp-user add|remove|list`: edits the users file of the configuration.
fn smtp_user(action: SmtpUserCommand) -> anyhow::Result<()> {
    use journal_gateway::smtp_users;
    match action {
        SmtpUserCommand::Add { name, config } => {
            let path = load(config.as_ref())?.smtp_users_file();
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.strip_suffix('\n').unwrap_or(&line);
            let password = password.strip_suffix('\r').unwrap_or(password);
            let existed = smtp_users::add(&path, &name, password)?;
            let what = if existed { "password changed" } else { "added" };
            println!("user {name} {what} in {}", path.display());
        }
        SmtpUserCommand::Remove { name, config } => {
            let path = load(config.as_ref())?.smtp_users_file();
            if !smtp_users::remove(&path, &name)? {
                anyhow::bail!("no user {name} in {}", path.display());
            }
            println!("user {name} removed from {}", path.display());
        }
        SmtpUserCommand::List { config } => {
            let path = load(config.as_ref())?.smtp_users_file();
            for name in smtp_users::list(&path)? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

/// Runs a verb against the running server's admin API and prints the answer.
fn remote_verb(args: RemoteArgs, verb: Verb) -> anyhow::Result<()> {
    let config = load(args.config.as_ref())?;
    let remote = Remote::from_config(&config, args.server, args.json);
    let out = runtime()?.block_on(cli::client::run(&remote, verb))?;
    print!("{out}");
    Ok(())
}

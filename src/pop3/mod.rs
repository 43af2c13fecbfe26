//! POP3S journal-mailbox collection.
//!
//! - `client`: a POP3 client (CAPA, STLS, USER/PASS, SASL PLAIN, APOP, UIDL, LIST, pipelined
//!   RETR streamed with dot-unstuffing, DELE, QUIT).
//! - `trust`: which server certificates are accepted (pin, CA file, system roots).
//! - [`credentials`] and [`token`]: the login of a collector: a password, or an `OAuth2` access
//!   token (a token file, or the client-credentials grant) for XOAUTH2 / OAUTHBEARER.
//! - `collector`: one [`Collector`] per `[[collector]]`: polls, drains into the ingest path,
//!   deletes only what is durably archived, records history ([`crate::index::CollectorStore`]).
//! - [`Collectors`]: every configured collector by name, their polling tasks, and what a reload
//!   changes in them ([`CollectorChanges`]).

pub(crate) mod client;
mod collector;
mod collectors;
pub mod credentials;
mod error;
pub mod token;
pub(crate) mod trust;

pub use collector::{Collector, CollectorContext, Progress, RunFailure, RunKind, RunSummary};
pub(crate) use collectors::Prepared;
pub use collectors::{CollectorChanges, Collectors};
pub use error::{ErrorKind, Pop3Error};

//! journal-gateway: archives Exchange journal reports received over SMTP and collected over POP3S.
//!
//! Data flows one way: a listener ([`smtp`]) or collector ([`pop3`]) hands raw bytes to the one
//! ingest path ([`ingest`]), which parses them ([`journal`]), deduplicates and stores them durably
//! ([`archive`]) and only then lets the caller acknowledge.

pub mod archive;
pub mod client;
pub mod config;
pub mod history;
pub mod http;
pub mod ingest;
pub mod journal;
pub mod metrics;
pub mod migration;
pub mod net;
pub mod pop3;
pub mod server;
pub mod smtp;
pub mod systemd;
pub mod tls;

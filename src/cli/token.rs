//! `token rotate`: a new admin token, taken by the running gateway without a restart.

use std::path::PathBuf;

use anyhow::bail;
use hyper::Method;
use journal_gateway::http::auth;

use super::client::{request, Remote};

/// Writes a new random token into the token file, then asks the running gateway (at `--server`
/// or `[http] listen`) to reload it with the old token. No gateway answering is fine: it reads
/// the new token when it starts.
pub fn rotate(config: Option<&PathBuf>, server: Option<String>) -> anyhow::Result<()> {
    let config = crate::load(config)?;
    let path = auth::token_path(&config);
    let old = auth::read_token(&path).ok();
    auth::rotate(&path)?;
    println!("a new admin token is in {} (mode 0600)", path.display());
    let remote = Remote::from_config(&config, server, false);
    let Some(old) = old else {
        println!("there was no token before: a gateway reads this one when it starts");
        return Ok(());
    };
    let reply = crate::runtime()?.block_on(request(
        &remote.server,
        Method::POST,
        "/api/v1/token/reload",
        Some(&old),
    ));
    match reply {
        Err(e) => {
            println!(
                "no gateway answered at {} ({e:#}): it reads the new token when it starts",
                remote.server
            );
            Ok(())
        }
        Ok(r) if r.ok() => {
            println!(
                "the gateway at {} uses the new token now and refuses the old one",
                remote.server
            );
            Ok(())
        }
        Ok(r) => bail!(
            "the gateway at {} did not take the new token ({}: {}); it accepts the old one until it reloads or restarts",
            remote.server,
            r.status,
            r.error_message()
        ),
    }
}

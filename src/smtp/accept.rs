//! The accept policy of `RCPT TO`: which journal addresses and domains this endpoint takes mail
//! for, and what a sender must show for each (`require`). Everything else is refused with 550
//! (the gateway is not a relay).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{AcceptEntry, Requirement};

/// What a session has shown about its sender, checked against an address's requirements.
#[derive(Debug, Clone, Copy)]
pub struct Credentials {
    /// The client's address.
    pub peer: IpAddr,
    /// AUTH succeeded.
    pub authenticated: bool,
    /// An accepted client certificate was presented.
    pub client_cert: bool,
}

/// One accepted address or domain with its requirements.
#[derive(Debug, Clone)]
pub struct Rule {
    require: Vec<Requirement>,
    networks: Vec<IpNet>,
}

impl Rule {
    /// The requirements `who` does not meet (empty: accepted).
    pub fn unmet(&self, who: &Credentials) -> Vec<Requirement> {
        self.require
            .iter()
            .copied()
            .filter(|r| match r {
                Requirement::Networks => !self
                    .networks
                    .iter()
                    .any(|n| n.contains(&who.peer.to_canonical())),
                Requirement::Auth => !who.authenticated,
                Requirement::ClientCert => !who.client_cert,
            })
            .collect()
    }
}

/// The journal addresses and domains RCPT TO accepts (`smtp.accept`).
#[derive(Debug, Clone)]
pub struct AcceptList {
    /// Whole addresses, lower-cased.
    addresses: Vec<(String, Rule)>,
    /// Domains accepted for any local part, lower-cased, without the `@`.
    domains: Vec<(String, Rule)>,
}

impl AcceptList {
    /// From `smtp.accept`: `local@domain` or `@domain` entries with their requirements.
    pub fn new(accept: &[AcceptEntry]) -> AcceptList {
        let mut r = AcceptList {
            addresses: Vec::new(),
            domains: Vec::new(),
        };
        for a in accept {
            let rule = Rule {
                require: a.require.clone(),
                networks: a.networks.clone(),
            };
            match a.address.strip_prefix('@') {
                Some(domain) => r.domains.push((domain.to_lowercase(), rule)),
                None => r.addresses.push((a.address.to_lowercase(), rule)),
            }
        }
        r
    }

    /// Whether mail to `address` is accepted (by someone). Domains compare case-insensitively;
    /// so do local parts, so that a journal report addressed `Journal@...` is not bounced.
    #[cfg(test)]
    pub fn accepts(&self, address: &str) -> bool {
        self.rule(address).is_some()
    }

    /// The rule for `address`: its own entry, else its domain's; None when not accepted.
    pub fn rule(&self, address: &str) -> Option<&Rule> {
        let (local, domain) = address.rsplit_once('@')?;
        if local.is_empty() || domain.is_empty() {
            return None;
        }
        let domain = domain.to_lowercase();
        let full = format!("{}@{domain}", local.to_lowercase());
        self.addresses
            .iter()
            .find(|(a, _)| *a == full)
            .or_else(|| self.domains.iter().find(|(d, _)| *d == domain))
            .map(|(_, rule)| rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_domains_compare_case_insensitively() {
        let list = AcceptList::new(&[
            AcceptEntry::open("Journal@Corp.test"),
            AcceptEntry::open("@archive.test"),
        ]);
        assert!(list.accepts("journal@corp.test"));
        assert!(list.accepts("JOURNAL@CORP.TEST"));
        assert!(list.accepts("anyone@Archive.Test"));
        assert!(!list.accepts("other@corp.test"));
        assert!(!list.accepts("journal@corp.test.evil"));
        assert!(!list.accepts("@archive.test"));
        assert!(!list.accepts("journal@"));
        assert!(!list.accepts("no-at-sign"));
    }

    #[test]
    fn rules_say_what_is_missing() {
        let list = AcceptList::new(&[
            AcceptEntry {
                address: "onprem@j.test".into(),
                require: vec![Requirement::Auth, Requirement::ClientCert],
                networks: vec![],
            },
            AcceptEntry {
                address: "@j.test".into(),
                require: vec![Requirement::Networks],
                networks: vec!["10.0.0.0/8".parse().unwrap()],
            },
        ]);
        let who = Credentials {
            peer: "10.1.2.3".parse().unwrap(),
            authenticated: true,
            client_cert: false,
        };
        // The address's own entry wins over its domain's.
        let onprem = list.rule("OnPrem@J.test").unwrap();
        assert_eq!(onprem.unmet(&who), vec![Requirement::ClientCert]);
        let cloud = list.rule("cloud@j.test").unwrap();
        assert!(cloud.unmet(&who).is_empty());
        let outside = Credentials {
            peer: "::ffff:192.0.2.1".parse().unwrap(),
            ..who
        };
        assert_eq!(cloud.unmet(&outside), vec![Requirement::Networks]);
        let mapped = Credentials {
            peer: "::ffff:10.0.0.1".parse().unwrap(),
            ..who
        };
        assert!(cloud.unmet(&mapped).is_empty());
        assert!(list.rule("x@other.test").is_none());
    }
}

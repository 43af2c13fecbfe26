//! The accept policy of `RCPT TO`: which journal addresses and domains this endpoint takes mail
//! for. Everything else is refused with 550 (the gateway is not a relay).

/// The journal addresses and domains RCPT TO accepts (`smtp.accept`).
#[derive(Debug, Clone)]
pub struct AcceptList {
    /// Whole addresses, lower-cased.
    addresses: Vec<String>,
    /// Domains accepted for any local part, lower-cased, without the `@`.
    domains: Vec<String>,
}

impl AcceptList {
    /// From `smtp.accept`: `local@domain` or `@domain` entries.
    pub fn new(accept: &[String]) -> AcceptList {
        let mut r = AcceptList {
            addresses: Vec::new(),
            domains: Vec::new(),
        };
        for a in accept {
            match a.strip_prefix('@') {
                Some(domain) => r.domains.push(domain.to_lowercase()),
                None => r.addresses.push(a.to_lowercase()),
            }
        }
        r
    }

    /// Whether mail to `address` is accepted. Domains compare case-insensitively; so do local
    /// parts, so that a journal report addressed `Journal@...` is not bounced.
    pub fn accepts(&self, address: &str) -> bool {
        let Some((local, domain)) = address.rsplit_once('@') else {
            return false;
        };
        if local.is_empty() || domain.is_empty() {
            return false;
        }
        let domain = domain.to_lowercase();
        if self.domains.contains(&domain) {
            return true;
        }
        let full = format!("{}@{domain}", local.to_lowercase());
        self.addresses.contains(&full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_domains_compare_case_insensitively() {
        let list = AcceptList::new(&["Journal@Corp.test".into(), "@archive.test".into()]);
        assert!(list.accepts("journal@corp.test"));
        assert!(list.accepts("JOURNAL@CORP.TEST"));
        assert!(list.accepts("anyone@Archive.Test"));
        assert!(!list.accepts("other@corp.test"));
        assert!(!list.accepts("journal@corp.test.evil"));
        assert!(!list.accepts("@archive.test"));
        assert!(!list.accepts("journal@"));
        assert!(!list.accepts("no-at-sign"));
    }
}

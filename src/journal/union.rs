//! Recipient union of two arrivals of the same original.

use std::collections::HashSet;

use super::Recipient;

/// Adds to `into` every recipient of `new` it does not hold yet (same address, kind, expansion
/// and forwarding), in `new`'s order after the existing ones; duplicates within `new` are added
/// once. Returns how many were added.
///
/// O(n + m) time with a set of borrowed entries (no recipient is cloned except those added).
pub fn union_recipients(into: &mut Vec<Recipient>, new: &[Recipient]) -> usize {
    let mut seen: HashSet<&Recipient> = into.iter().collect();
    let added: Vec<&Recipient> = new.iter().filter(|r| seen.insert(r)).collect();
    let count = added.len();
    let added: Vec<Recipient> = added.into_iter().cloned().collect();
    drop(seen);
    into.extend(added);
    count
}

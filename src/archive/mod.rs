//! Maildir archive + redb index

/// The Maildir archive and its redb index.
pub struct Archive {}

//! Maildir archive + redb index

/// The Maildir archive and its redb index.
pub struct Archive {}

impl Archive {
    /// Opens (creating if needed) `<data_dir>/archive/{tmp,new,cur}` and `<data_dir>/index.redb`,
    /// finishing or discarding whatever an interrupted previous run left in `tmp/`.
    pub fn open(data_dir: &std::path::Path) -> anyhow::Result<Archive> {
        let _ = data_dir;
        todo!()
    }

    /// Copies every archived message into a Maildir at `out`, with `index.tsv`. Returns the count.
    pub fn export(&self, out: &std::path::Path) -> anyhow::Result<u64> {
        let _ = out;
        todo!()
    }
}

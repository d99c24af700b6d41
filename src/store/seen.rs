//! Platform event ids already handled, so each event is handled at most once even when a
//! platform delivers it again (gateway resumes, sync replays).

use super::{Store, StoreError};

impl Store {
    /// Records `event` as handled at `now_ms`; `false` if it was handled before.
    pub fn mark_seen(&self, event: &str, now_ms: i64) -> Result<bool, StoreError> {
        let previous = self.seen.compare_and_swap(
            event,
            None as Option<&[u8]>,
            Some(&now_ms.to_be_bytes()),
        )?;
        Ok(previous.is_ok())
    }

    /// Forgets events handled before `cutoff_ms`; returns how many.
    pub fn prune_seen_before(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for item in self.seen.iter() {
            let (key, value) = item?;
            let at = value
                .as_ref()
                .try_into()
                .map(i64::from_be_bytes)
                .unwrap_or(i64::MIN);
            if at < cutoff_ms {
                self.seen.remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_new_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.mark_seen("discord:1", 10).unwrap());
        assert!(!store.mark_seen("discord:1", 20).unwrap());
        assert!(store.mark_seen("discord:2", 30).unwrap());
        assert_eq!(store.prune_seen_before(20).unwrap(), 1);
        assert!(store.mark_seen("discord:1", 40).unwrap());
    }
}

//! Per-user flood control: each person may have a few questions waiting or being answered
//! at once (`chat.max_questions_per_user`); more get one note until one of theirs is
//! answered, so a single person cannot fill every reply slot. Nothing is charged for a
//! question turned away here, and Poe never hears of it. The bot's own admins are exempt.

use std::collections::HashMap;
use std::sync::Mutex;

/// Why a question was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flooded {
    /// The first question over the limit: tell the person.
    Tell,
    /// They were told already; stay quiet rather than add to the flood.
    Quiet,
}

#[derive(Debug, Default)]
struct Pending {
    count: usize,
    told: bool,
}

/// Each person's questions in the bot's hands (`platform:user id` → count).
#[derive(Debug)]
pub struct FloodControl {
    limit: usize,
    people: Mutex<HashMap<String, Pending>>,
}

impl FloodControl {
    /// `limit` 0: no limit.
    pub fn new(limit: usize) -> FloodControl {
        FloodControl {
            limit,
            people: Mutex::new(HashMap::new()),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes one more question from `person`, unless they are at the limit. A taken question
    /// must be given back with [`FloodControl::release`].
    pub fn take(&self, person: &str) -> Result<(), Flooded> {
        let mut people = self.lock();
        let pending = people.entry(person.to_owned()).or_default();
        if self.limit > 0 && pending.count >= self.limit {
            let first = !pending.told;
            pending.told = true;
            return Err(if first { Flooded::Tell } else { Flooded::Quiet });
        }
        pending.count += 1;
        Ok(())
    }

    /// One of `person`'s questions is finished (answered, refused, or dropped).
    pub fn release(&self, person: &str) {
        let mut people = self.lock();
        let Some(pending) = people.get_mut(person) else {
            return;
        };
        pending.count = pending.count.saturating_sub(1);
        pending.told = false;
        if pending.count == 0 {
            people.remove(person);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.people
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_person_gets_the_limit_then_one_note_then_silence() {
        let flood = FloodControl::new(3);
        for _ in 0..3 {
            assert_eq!(flood.take("discord:1"), Ok(()));
        }
        assert_eq!(flood.take("discord:1"), Err(Flooded::Tell));
        assert_eq!(flood.take("discord:1"), Err(Flooded::Quiet));
        assert_eq!(flood.take("discord:1"), Err(Flooded::Quiet));
        // Others are not held up by one person.
        assert_eq!(flood.take("discord:2"), Ok(()));
        // One answered: one more may wait, and a new flood is told again.
        flood.release("discord:1");
        assert_eq!(flood.take("discord:1"), Ok(()));
        assert_eq!(flood.take("discord:1"), Err(Flooded::Tell));
    }

    #[test]
    fn everyone_released_leaves_nothing_behind_and_zero_means_no_limit() {
        let flood = FloodControl::new(2);
        flood.take("a").unwrap();
        flood.take("a").unwrap();
        flood.release("a");
        flood.release("a");
        flood.release("a");
        assert!(flood.lock().is_empty());
        let open = FloodControl::new(0);
        for _ in 0..1000 {
            assert_eq!(open.take("a"), Ok(()));
        }
    }
}

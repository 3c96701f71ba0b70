//! Registry images whose pull failed, tried again with backoff: at boot
//! the network may not be up yet when keel-init prepares its containers,
//! and a registry may be down for a minute. (A path image that fails
//! fails for a reason a retry does not change: a person fixes the file
//! and applies the config again.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_formats::hostconfig::types::UserContainer;

const FIRST: Duration = Duration::from_secs(5);
const MAX: Duration = Duration::from_secs(300);

/// The wait before try `failures` + 1: 5 s, 10 s, 20 s, … at most 5 min.
pub(super) fn backoff(failures: u32) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    FIRST.saturating_mul(factor).min(MAX)
}

#[derive(Debug)]
pub(super) struct Waiting {
    /// The entry that failed: a retry for an entry since changed is moot.
    pub uc: UserContainer,
    pub failures: u32,
    pub at: Instant,
}

/// Containers waiting for another try, by name.
#[derive(Debug, Default)]
pub(super) struct Retries(BTreeMap<String, Waiting>);

impl Retries {
    /// `name`'s preparation from `uc` failed (again): when it is tried next.
    pub fn failed(&mut self, name: &str, uc: &UserContainer, now: Instant) -> Instant {
        let failures = match self.0.get(name) {
            Some(w) if w.uc == *uc => w.failures.saturating_add(1),
            _ => 1,
        };
        let at = now.checked_add(backoff(failures)).unwrap_or(now);
        self.0.insert(
            name.to_string(),
            Waiting {
                uc: uc.clone(),
                failures,
                at,
            },
        );
        at
    }

    /// `name` is prepared, or its entry changed or went: no retry.
    pub fn forget(&mut self, name: &str) {
        self.0.remove(name);
    }

    pub fn next(&self) -> Option<Instant> {
        self.0.values().map(|w| w.at).min()
    }

    /// The entries due at `now`, still as `current` has them; those that
    /// changed or went are dropped. The failure counts are kept until
    /// [`Retries::forget`], so a retry that fails waits longer.
    pub fn due(
        &mut self,
        now: Instant,
        current: &BTreeMap<String, UserContainer>,
    ) -> Vec<(String, UserContainer)> {
        self.0
            .retain(|name, w| current.get(name).is_some_and(|uc| *uc == w.uc));
        let mut due = Vec::new();
        for (name, w) in self.0.iter_mut() {
            if w.at <= now {
                // Not due again until this try fails and says when.
                w.at = now.checked_add(MAX).unwrap_or(now);
                due.push((name.clone(), w.uc.clone()));
            }
        }
        due
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn uc(image: &str) -> UserContainer {
        toml::from_str(&format!("image = \"{image}\"")).unwrap()
    }

    #[test]
    fn the_wait_doubles_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn a_failure_waits_and_a_changed_entry_is_not_retried() {
        let now = Instant::now();
        let mut r = Retries::default();
        let a = uc("r.example/a:1");
        assert_eq!(r.failed("a", &a, now), now + Duration::from_secs(5));
        let mut current = BTreeMap::from([("a".to_string(), a.clone())]);
        assert!(r.due(now, &current).is_empty());
        let later = now + Duration::from_secs(5);
        assert_eq!(r.due(later, &current), [("a".to_string(), a.clone())]);
        // Taken: not due again until it fails again, and then later.
        assert!(r.due(later, &current).is_empty());
        assert_eq!(r.failed("a", &a, later), later + Duration::from_secs(10));
        current.insert("a".into(), uc("r.example/a:2"));
        assert!(r.due(later + Duration::from_secs(60), &current).is_empty());
        assert_eq!(r.next(), None);
    }
}

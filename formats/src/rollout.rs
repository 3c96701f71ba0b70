//! Staged rollouts, as Bottlerocket's waves: a channel's entry in the
//! signed index may say when its release opens to which share of the
//! hosts. Each host has a stable place in every rollout, from 0 to
//! [`PLACES`] - 1, from a seed of its own; wave `i` opens `after` seconds
//! past `start` to the hosts whose place is below `percent` % of the
//! places. A publisher pauses or stops a rollout by publishing an index
//! whose waves open later or to fewer hosts.

use serde::{Deserialize, Serialize};

use crate::hostconfig::units::parse_duration;

/// Places in a rollout: a host's share is known to 0.01 %.
pub const PLACES: u32 = 10_000;
/// Waves in one rollout at most.
pub const WAVES_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Seconds after the rollout's start.
    pub after: u64,
    /// The share of hosts it opens to, with those of the waves before.
    pub percent: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Seconds since the epoch.
    pub start: u64,
    pub waves: Vec<Wave>,
}

/// Where a host stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Its wave (from 1) opens at this time (seconds since the epoch);
    /// it may be past.
    Wave { wave: usize, opens: u64 },
    /// No wave of this rollout reaches it (yet).
    NotYet,
}

/// A host's place, from its seed.
pub fn place(seed: u64) -> u32 {
    // seed % PLACES < PLACES: the cast keeps every bit.
    (seed % u64::from(PLACES)) as u32
}

impl Rollout {
    /// The waves from a publisher's `1%@1h,10%@4h,100%@1d`: shares that
    /// grow, at times that do not go back.
    pub fn parse_waves(spec: &str) -> Result<Vec<Wave>, String> {
        let waves = spec
            .split(',')
            .map(|w| {
                let (p, t) = w
                    .trim()
                    .split_once('@')
                    .ok_or_else(|| format!("wave {w:?} is not PERCENT%@DURATION (10%@4h)"))?;
                let percent = p
                    .strip_suffix('%')
                    .and_then(|p| p.parse::<u8>().ok())
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| format!("wave {w:?}: {p:?} is not a share 0%..=100%"))?;
                let after = parse_duration(t).map_err(|e| format!("wave {w:?}: {e}"))?;
                Ok(Wave { after, percent })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let r = Rollout { start: 0, waves };
        r.check()?;
        Ok(r.waves)
    }

    /// Whether the waves make a rollout: 1 to [`WAVES_MAX`] of them, each
    /// opening no earlier and to no fewer hosts than the one before.
    pub fn check(&self) -> Result<(), String> {
        if self.waves.is_empty() || self.waves.len() > WAVES_MAX {
            return Err(format!("a rollout has 1 to {WAVES_MAX} waves"));
        }
        if self.waves.iter().any(|w| w.percent > 100) {
            return Err("a wave opens to at most 100% of the hosts".into());
        }
        for pair in self.waves.windows(2) {
            if let [a, b] = pair {
                if b.after < a.after || b.percent < a.percent {
                    return Err(format!(
                        "wave {}%@{}s comes after {}%@{}s: waves open later and to more hosts",
                        b.percent, b.after, a.percent, a.after
                    ));
                }
            }
        }
        Ok(())
    }

    /// The turn of the host at `place`.
    pub fn turn(&self, place: u32) -> Turn {
        for (i, w) in self.waves.iter().enumerate() {
            // percent <= 100: at most PLACES.
            let reach = u32::from(w.percent).saturating_mul(PLACES / 100);
            if place < reach {
                return Turn::Wave {
                    wave: i.saturating_add(1),
                    opens: self.start.saturating_add(w.after),
                };
            }
        }
        Turn::NotYet
    }

    /// Whether the host at `place` may install at `now`.
    pub fn open_to(&self, place: u32, now: u64) -> bool {
        matches!(self.turn(place), Turn::Wave { opens, .. } if opens <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_parse_as_a_publisher_writes_them() {
        let w = Rollout::parse_waves("1%@1h, 10%@4h,100%@1d").unwrap();
        assert_eq!(
            w,
            [
                Wave {
                    after: 3600,
                    percent: 1
                },
                Wave {
                    after: 14400,
                    percent: 10
                },
                Wave {
                    after: 86400,
                    percent: 100
                }
            ]
        );
        assert_eq!(Rollout::parse_waves("0%@0s").unwrap()[0].percent, 0);
        for bad in [
            "",
            "10%",
            "101%@1h",
            "10@1h",
            "10%@soon",
            "50%@1h,10%@2h",
            "10%@2h,50%@1h",
        ] {
            assert!(Rollout::parse_waves(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_waits_for_its_wave() {
        let r = Rollout {
            start: 1000,
            waves: Rollout::parse_waves("1%@1h,10%@4h,100%@1d").unwrap(),
        };
        assert_eq!(
            r.turn(0),
            Turn::Wave {
                wave: 1,
                opens: 4600
            }
        );
        assert_eq!(
            r.turn(99),
            Turn::Wave {
                wave: 1,
                opens: 4600
            }
        );
        assert_eq!(
            r.turn(100),
            Turn::Wave {
                wave: 2,
                opens: 15400
            }
        );
        assert_eq!(
            r.turn(9999),
            Turn::Wave {
                wave: 3,
                opens: 87400
            }
        );
        assert!(!r.open_to(100, 15399) && r.open_to(100, 15400));
        // Stopped at 10 %: the rest never opens.
        let stopped = Rollout {
            start: 1000,
            waves: Rollout::parse_waves("1%@1h,10%@4h").unwrap(),
        };
        assert_eq!(stopped.turn(5000), Turn::NotYet);
        assert!(!stopped.open_to(5000, u64::MAX));
        // A first wave of 0 % opens to nobody.
        let none = Rollout {
            start: 0,
            waves: vec![Wave {
                after: 0,
                percent: 0,
            }],
        };
        assert!(!none.open_to(0, u64::MAX));
        assert_eq!(place(123_456_789), 6789);
    }
}

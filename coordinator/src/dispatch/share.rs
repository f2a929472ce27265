//! How the workers are shared between running experiments: by weight, in lease time.
//!
//! Each experiment is charged, per lease, the chunks' measured cost divided by its weight; a
//! worker asking for work gets chunks of the round whose experiment has been charged least.
//! Over time each experiment's share of the workers' time follows its weight, as long as it
//! has work waiting (a round finishes, the coordinator updates, the next round starts: while
//! an experiment has nothing to lease, the others take every worker).

use std::collections::HashMap;
use std::time::Duration;

/// What a chunk is charged before any chunk of its kind was measured.
pub(super) const UNMEASURED_CHUNK: Duration = Duration::from_millis(10);

/// Lease time per unit of weight each running experiment has had.
#[derive(Debug, Default)]
pub(super) struct Shares {
    used: HashMap<String, f64>,
}

impl Shares {
    /// An experiment starting a round. One new to the workers starts level with the least
    /// served of the others: it neither waits for them to catch up with it nor holds every
    /// worker until it has caught up with them.
    /// Returns whether the experiment is new (starting, or running again).
    pub(super) fn join(&mut self, experiment: &str) -> bool {
        if self.used.contains_key(experiment) {
            return false;
        }
        let least = self.used.values().copied().fold(f64::INFINITY, f64::min);
        let start = if least.is_finite() { least } else { 0.0 };
        self.used.insert(experiment.to_string(), start);
        true
    }

    /// An experiment that has ended.
    pub(super) fn leave(&mut self, experiment: &str) {
        self.used.remove(experiment);
    }

    /// Charges `experiment` for a lease that costs `cost`.
    pub(super) fn charge(&mut self, experiment: &str, cost: Duration, weight: f64) {
        let used = self.used.entry(experiment.to_string()).or_insert(0.0);
        *used += cost.as_secs_f64() / weight;
    }

    /// The keys of `rounds` (key, experiment), the least served experiment's first; among
    /// equals, the older round (the smaller key) first.
    pub(super) fn order<'a>(&self, rounds: impl Iterator<Item = (u64, &'a str)>) -> Vec<u64> {
        let mut order: Vec<(f64, u64)> = rounds
            .map(|(key, experiment)| (self.used.get(experiment).copied().unwrap_or(0.0), key))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        order.into_iter().map(|(_, key)| key).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_served_experiment_comes_first_and_weights_divide_the_charge() {
        let mut shares = Shares::default();
        shares.join("a");
        shares.join("b");
        let rounds = [(10, "a"), (20, "b")];
        assert_eq!(
            shares.order(rounds.into_iter()),
            [10, 20],
            "equal: older first"
        );
        shares.charge("a", Duration::from_secs(3), 3.0);
        shares.charge("b", Duration::from_secs(2), 1.0);
        // a: 3 s / 3 = 1, b: 2 s / 1 = 2.
        assert_eq!(shares.order(rounds.into_iter()), [10, 20]);
        shares.charge("a", Duration::from_secs(6), 3.0);
        assert_eq!(shares.order(rounds.into_iter()), [20, 10]);
    }

    #[test]
    fn a_newcomer_starts_level_with_the_least_served() {
        let mut shares = Shares::default();
        shares.join("a");
        shares.join("b");
        shares.charge("a", Duration::from_secs(5), 1.0);
        shares.charge("b", Duration::from_secs(7), 1.0);
        shares.join("c");
        shares.charge("c", Duration::from_millis(1), 1.0);
        // c starts at 5 (a's): after a tiny charge it is behind b but not a.
        assert_eq!(
            shares.order([(1, "a"), (2, "b"), (3, "c")].into_iter()),
            [1, 3, 2]
        );
        // Joining again (its next round) changes nothing; leaving forgets it.
        shares.join("a");
        assert_eq!(shares.order([(1, "a"), (3, "c")].into_iter()), [1, 3]);
        shares.leave("a");
        shares.join("a");
        // Back level with c (the least served), not with its old 5.
        assert_eq!(shares.order([(1, "a"), (3, "c")].into_iter()), [1, 3]);
        shares.charge("a", Duration::from_millis(1), 1.0);
        assert_eq!(shares.order([(1, "a"), (3, "c")].into_iter()), [3, 1]);
    }
}

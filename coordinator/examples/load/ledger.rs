//! The two checks of a run: no chunk lost and none counted twice, from what the workers were told against what the coordinator's experiments needed.

use crate::experiments::Outcome;
use crate::worker::Tally;

/// The workers' accounts put together.
#[derive(Debug)]
pub struct Ledger {
    /// Chunks the finished experiments' rounds dispatched.
    pub expected: u64,
    /// The sum over workers of `CompleteReply.accepted`.
    pub accepted: u64,
    pub results_sent: u64,
    /// Distinct chunk ids leased to any worker.
    pub distinct_leased: u64,
    /// Chunk ids that two calls each had every result accepted for.
    pub accepted_twice: u64,
    pub partly_accepted_calls: u64,
    /// Whether every experiment finished: else `expected` is not known.
    pub complete: bool,
}

impl Ledger {
    pub fn new(outcome: &Outcome, tallies: &[Tally]) -> Self {
        let mut leased: Vec<u64> = tallies
            .iter()
            .flat_map(|t| &t.leased_ids)
            .copied()
            .collect();
        leased.sort_unstable();
        leased.dedup();
        let mut accepted_ids: Vec<u64> = tallies
            .iter()
            .flat_map(|t| &t.accepted_ids)
            .copied()
            .collect();
        accepted_ids.sort_unstable();
        let accepted_twice = accepted_ids.windows(2).filter(|w| w[0] == w[1]).count() as u64;
        Ledger {
            expected: outcome.chunks,
            accepted: tallies.iter().map(|t| t.accepted).sum(),
            results_sent: tallies.iter().map(|t| t.results_sent).sum(),
            distinct_leased: leased.len() as u64,
            accepted_twice,
            partly_accepted_calls: tallies.iter().map(|t| t.partly_accepted_calls).sum(),
            complete: outcome.all_finished,
        }
    }

    /// Chunks whose rounds needed a result that no worker had accepted; `None` when an
    /// experiment did not finish (its rounds did not all complete: chunks were lost or stuck).
    pub fn lost(&self) -> Option<u64> {
        self.complete
            .then(|| self.expected.saturating_sub(self.accepted))
    }

    /// Results counted beyond one per chunk: an id accepted in two calls, or more accepted
    /// than the rounds had chunks.
    pub fn counted_twice(&self) -> Option<u64> {
        self.complete
            .then(|| self.accepted_twice + self.accepted.saturating_sub(self.expected))
    }

    /// What is wrong, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(lost @ 1..) = self.lost() {
            problems.push(format!(
                "{lost} chunks lost: the finished experiments dispatched {} chunks, workers had {} results accepted",
                self.expected, self.accepted
            ));
        }
        if let Some(twice @ 1..) = self.counted_twice() {
            problems.push(format!(
                "{twice} chunks counted twice ({} ids accepted in two calls; {} accepted for {} chunks)",
                self.accepted_twice, self.accepted, self.expected
            ));
        }
        if self.complete && self.distinct_leased != self.expected {
            problems.push(format!(
                "{} distinct chunk ids were leased for {} chunks dispatched",
                self.distinct_leased, self.expected
            ));
        }
        problems
    }
}

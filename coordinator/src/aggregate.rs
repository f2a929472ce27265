//! Chunk-ordered aggregation of a meta-batch: the sum never depends on who answered or when.

use outerloop_proto::v1::ChunkResult;

/// The reduced results of one round of chunks.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundTotals {
    /// Sum of the chunks' meta-gradient sums, in chunk order (empty at evaluation).
    pub grad_sum: Vec<f32>,
    /// Per-task losses before and after adaptation, in task order.
    pub loss_before: Vec<f32>,
    pub loss_after: Vec<f32>,
    /// Per-task query accuracies before and after adaptation, in task order (classification
    /// only; empty otherwise).
    pub accuracy_before: Vec<f32>,
    pub accuracy_after: Vec<f32>,
    /// Worker compute time over all chunks.
    pub compute_seconds: f64,
}

/// Why a round's results could not be reduced.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AggregateError {
    #[error("chunk {index}: gradient has {got} bytes, expected {expected} (4 per parameter)")]
    GradientSize {
        index: usize,
        got: usize,
        expected: usize,
    },
    #[error("chunk {index}: {got} losses for {expected} tasks")]
    LossCount {
        index: usize,
        got: usize,
        expected: usize,
    },
    #[error("chunk {index}: {got} accuracies for {expected} tasks")]
    AccuracyCount {
        index: usize,
        got: usize,
        expected: usize,
    },
    #[error("chunk {index}: {problem}")]
    Malformed { index: usize, problem: String },
}

/// Adds chunk results in chunk-index order. Floating-point addition is not associative, so the
/// order is fixed here, not by arrival: the same seed gives bit-identical parameters with any
/// number of workers.
pub fn reduce(
    results: &[ChunkResult],
    tasks_per_chunk: &[usize],
    param_count: Option<usize>,
) -> Result<RoundTotals, AggregateError> {
    let mut totals = RoundTotals {
        grad_sum: vec![0.0; param_count.unwrap_or(0)],
        loss_before: Vec::new(),
        loss_after: Vec::new(),
        accuracy_before: Vec::new(),
        accuracy_after: Vec::new(),
        compute_seconds: 0.0,
    };
    for (index, (result, &tasks)) in results.iter().zip(tasks_per_chunk).enumerate() {
        check_sizes(index, result, tasks, param_count)?;
        if param_count.is_some() {
            for (total, bytes) in totals
                .grad_sum
                .iter_mut()
                .zip(result.grad_sum.chunks_exact(4))
            {
                *total += f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
        totals.loss_before.extend_from_slice(&result.loss_before);
        totals.loss_after.extend_from_slice(&result.loss_after);
        totals
            .accuracy_before
            .extend_from_slice(&result.accuracy_before);
        totals
            .accuracy_after
            .extend_from_slice(&result.accuracy_after);
        totals.compute_seconds += result.compute_seconds;
    }
    Ok(totals)
}

/// Refuses a chunk's result of the wrong sizes: a gradient of `param_count` values (when
/// training), and a loss (and for classification an accuracy) per task of the chunk.
fn check_sizes(
    index: usize,
    result: &ChunkResult,
    tasks: usize,
    param_count: Option<usize>,
) -> Result<(), AggregateError> {
    if let Some(count) = param_count {
        if result.grad_sum.len() != 4 * count {
            return Err(AggregateError::GradientSize {
                index,
                got: result.grad_sum.len(),
                expected: 4 * count,
            });
        }
    }
    for losses in [&result.loss_before, &result.loss_after] {
        if losses.len() != tasks {
            return Err(AggregateError::LossCount {
                index,
                got: losses.len(),
                expected: tasks,
            });
        }
    }
    for accuracies in [&result.accuracy_before, &result.accuracy_after] {
        // Regression reports no accuracy at all; classification one per task.
        if !accuracies.is_empty() && accuracies.len() != tasks {
            return Err(AggregateError::AccuracyCount {
                index,
                got: accuracies.len(),
                expected: tasks,
            });
        }
    }
    Ok(())
}

/// What a chunk's result must be before it may count (checked as it arrives): the sizes
/// [`reduce`] needs, and finite losses and gradient.
pub fn check_chunk(
    index: usize,
    result: &ChunkResult,
    tasks: usize,
    param_count: Option<usize>,
) -> Result<(), AggregateError> {
    check_sizes(index, result, tasks, param_count)?;
    let losses = result.loss_before.iter().chain(&result.loss_after);
    let bad = if !losses.clone().all(|l| l.is_finite()) {
        Some("a task's loss")
    } else if !crate::finite::all_finite_bytes(&result.grad_sum) {
        Some("the gradient")
    } else {
        None
    };
    match bad {
        Some(what) => Err(AggregateError::Malformed {
            index,
            problem: format!("{what} is not finite"),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outerloop_proto::f32s_to_bytes;

    fn chunk(grad: &[f32], before: &[f32], after: &[f32]) -> ChunkResult {
        ChunkResult {
            grad_sum: f32s_to_bytes(grad),
            loss_before: before.to_vec(),
            loss_after: after.to_vec(),
            compute_seconds: 0.5,
            ..Default::default()
        }
    }

    #[test]
    fn sums_gradients_and_concatenates_losses_in_chunk_order() {
        let results = [
            chunk(&[1.0, 2.0], &[5.0], &[1.0]),
            chunk(&[0.5, -1.0], &[6.0, 7.0], &[2.0, 3.0]),
        ];
        let totals = reduce(&results, &[1, 2], Some(2)).unwrap();
        assert_eq!(totals.grad_sum, vec![1.5, 1.0]);
        assert_eq!(totals.loss_before, vec![5.0, 6.0, 7.0]);
        assert_eq!(totals.loss_after, vec![1.0, 2.0, 3.0]);
        assert_eq!(totals.compute_seconds, 1.0);
    }

    #[test]
    fn the_order_is_the_chunk_order_even_where_float_addition_is_not_associative() {
        // (1e8 + -1e8) + 1 = 1, but 1e8 + (-1e8 + 1) = 0 in f32.
        let results = [
            chunk(&[1e8], &[0.0], &[0.0]),
            chunk(&[-1e8], &[0.0], &[0.0]),
            chunk(&[1.0], &[0.0], &[0.0]),
        ];
        assert_eq!(
            reduce(&results, &[1, 1, 1], Some(1)).unwrap().grad_sum,
            vec![1.0]
        );
    }

    #[test]
    fn malformed_results_are_refused() {
        let results = [chunk(&[1.0], &[0.0], &[0.0])];
        assert_eq!(
            reduce(&results, &[1], Some(2)),
            Err(AggregateError::GradientSize {
                index: 0,
                got: 4,
                expected: 8
            })
        );
        assert_eq!(
            reduce(&results, &[2], Some(1)),
            Err(AggregateError::LossCount {
                index: 0,
                got: 1,
                expected: 2
            })
        );
        // Both phases report the loss before adaptation for every task.
        let missing = [chunk(&[1.0], &[], &[0.5])];
        assert_eq!(
            reduce(&missing, &[1], Some(1)),
            Err(AggregateError::LossCount {
                index: 0,
                got: 0,
                expected: 1
            })
        );
    }

    #[test]
    fn a_chunk_with_a_non_finite_loss_or_gradient_is_refused_as_it_arrives() {
        let good = chunk(&[1.0, 2.0], &[5.0], &[1.0]);
        assert_eq!(check_chunk(0, &good, 1, Some(2)), Ok(()));
        let cases = [
            (
                chunk(&[1.0, f32::NAN], &[5.0], &[1.0]),
                "chunk 3: the gradient is not finite",
            ),
            (
                chunk(&[1.0, 2.0], &[5.0], &[f32::INFINITY]),
                "chunk 3: a task's loss is not finite",
            ),
        ];
        for (bad, says) in cases {
            assert_eq!(
                check_chunk(3, &bad, 1, Some(2)).unwrap_err().to_string(),
                says
            );
        }
        // Sizes come first: what `reduce` relies on.
        assert!(matches!(
            check_chunk(0, &good, 1, Some(3)),
            Err(AggregateError::GradientSize { .. })
        ));
    }
}

//! Chunk-ordered reduction of a multi-task round: per task, the chunks' loss and metric sums and gradients, added in chunk order so the result never depends on who answered.

use outerloop_proto::v1::ChunkResult;

use crate::aggregate::AggregateError;

/// One task's totals over a round's rows.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSums {
    pub loss_sum: f64,
    pub metric_sum: f64,
    /// Gradients of `loss_sum` with respect to the shared layers and to the task's head
    /// (empty at evaluation).
    pub shared_grad: Vec<f32>,
    pub head_grad: Vec<f32>,
}

/// What every chunk of a round must hold: one entry per task, in task order, with gradients
/// of these sizes when training.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    pub shared_len: usize,
    /// The values of each task's head, in task order.
    pub head_lens: &'a [usize],
    pub train: bool,
}

/// Adds each task's chunk totals in chunk order; refuses a chunk whose entries are missing,
/// out of order or of the wrong size, naming the chunk and the task.
pub fn reduce_tasks(
    results: &[ChunkResult],
    expected: Expected,
) -> Result<Vec<TaskSums>, AggregateError> {
    let grad_len = |len: usize| if expected.train { len } else { 0 };
    let mut sums: Vec<TaskSums> = expected
        .head_lens
        .iter()
        .map(|&head| TaskSums {
            loss_sum: 0.0,
            metric_sum: 0.0,
            shared_grad: vec![0.0; grad_len(expected.shared_len)],
            head_grad: vec![0.0; grad_len(head)],
        })
        .collect();
    for (index, result) in results.iter().enumerate() {
        let malformed = |problem: String| AggregateError::Malformed { index, problem };
        if result.task_totals.len() != sums.len() {
            return Err(malformed(format!(
                "{} task totals for {} tasks",
                result.task_totals.len(),
                sums.len()
            )));
        }
        for (task, (totals, sum)) in result.task_totals.iter().zip(&mut sums).enumerate() {
            if totals.task as usize != task {
                return Err(malformed(format!(
                    "entry {task} is for task {}, expected task {task}",
                    totals.task
                )));
            }
            for (what, bytes, into) in [
                ("shared", &totals.shared_grad, &mut sum.shared_grad),
                ("head", &totals.head_grad, &mut sum.head_grad),
            ] {
                if bytes.len() != 4 * into.len() {
                    return Err(malformed(format!(
                        "task {task}: {what} gradient has {} bytes, expected {}",
                        bytes.len(),
                        4 * into.len()
                    )));
                }
                for (total, b) in into.iter_mut().zip(bytes.chunks_exact(4)) {
                    *total += f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            sum.loss_sum += totals.loss_sum;
            sum.metric_sum += totals.metric_sum;
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outerloop_proto::f32s_to_bytes;
    use outerloop_proto::v1::TaskTotals;

    fn totals(task: u32, loss: f64, shared: &[f32], head: &[f32]) -> TaskTotals {
        TaskTotals {
            task,
            loss_sum: loss,
            metric_sum: 2.0 * loss,
            shared_grad: f32s_to_bytes(shared),
            head_grad: f32s_to_bytes(head),
        }
    }

    fn chunk(entries: Vec<TaskTotals>) -> ChunkResult {
        ChunkResult {
            task_totals: entries,
            ..Default::default()
        }
    }

    const TRAIN: Expected = Expected {
        shared_len: 1,
        head_lens: &[1, 2],
        train: true,
    };

    #[test]
    fn each_task_is_summed_in_chunk_order() {
        // (1e8 + -1e8) + 1 = 1 but 1e8 + (-1e8 + 1) = 0 in f32: the order is the chunks'.
        let results = [
            chunk(vec![
                totals(0, 1.0, &[1e8], &[1.0]),
                totals(1, 3.0, &[2.0], &[1.0, 2.0]),
            ]),
            chunk(vec![
                totals(0, 0.5, &[-1e8], &[1.0]),
                totals(1, 1.0, &[0.5], &[0.0, 1.0]),
            ]),
            chunk(vec![
                totals(0, 0.25, &[1.0], &[1.0]),
                totals(1, 0.0, &[0.0], &[0.0, 0.0]),
            ]),
        ];
        let sums = reduce_tasks(&results, TRAIN).unwrap();
        assert_eq!(sums[0].shared_grad, vec![1.0]);
        assert_eq!(sums[0].head_grad, vec![3.0]);
        assert_eq!((sums[0].loss_sum, sums[0].metric_sum), (1.75, 3.5));
        assert_eq!(sums[1].shared_grad, vec![2.5]);
        assert_eq!(sums[1].head_grad, vec![1.0, 3.0]);
    }

    #[test]
    fn evaluation_rounds_carry_no_gradients() {
        let results = [chunk(vec![
            totals(0, 1.0, &[], &[]),
            totals(1, 2.0, &[], &[]),
        ])];
        let eval = Expected {
            train: false,
            ..TRAIN
        };
        let sums = reduce_tasks(&results, eval).unwrap();
        assert!(sums
            .iter()
            .all(|s| s.shared_grad.is_empty() && s.head_grad.is_empty()));
        assert_eq!(sums[1].loss_sum, 2.0);
    }

    #[test]
    fn malformed_chunks_are_refused_with_the_chunk_and_task() {
        let good = || {
            chunk(vec![
                totals(0, 1.0, &[1.0], &[1.0]),
                totals(1, 1.0, &[1.0], &[1.0, 1.0]),
            ])
        };
        let cases = [
            (
                chunk(vec![totals(0, 1.0, &[1.0], &[1.0])]),
                "1 task totals for 2 tasks",
            ),
            (
                chunk(vec![
                    totals(1, 1.0, &[1.0], &[1.0, 1.0]),
                    totals(0, 1.0, &[1.0], &[1.0]),
                ]),
                "entry 0 is for task 1, expected task 0",
            ),
            (
                chunk(vec![
                    totals(0, 1.0, &[1.0], &[1.0]),
                    totals(1, 1.0, &[1.0, 2.0], &[1.0, 1.0]),
                ]),
                "task 1: shared gradient has 8 bytes, expected 4",
            ),
        ];
        for (bad, expected) in cases {
            let error = reduce_tasks(&[good(), bad], TRAIN).unwrap_err();
            assert_eq!(
                error,
                AggregateError::Malformed {
                    index: 1,
                    problem: expected.into()
                }
            );
        }
    }
}

//! Chunk-ordered reduction of a multi-task round: per task, the chunks' loss and metric sums and gradients, added in chunk order so the result never depends on who answered.

use outerloop_proto::v1::ChunkResult;

use crate::aggregate::AggregateError;
use crate::finite::all_finite_bytes;
use crate::mtl::factored::FactoredGradients;

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
    /// Multiplies each task's summed shared-layer gradient once added (1 leaves it the sum):
    /// the mean over a batch is taken in the same pass as the last chunk's addition.
    pub shared_scale: f32,
    /// Training with the shared layers' gradients factored: what each chunk's inputs and
    /// deltas must hold (and `shared_grad` is then empty).
    pub factored: Option<Factoring<'a>>,
    /// Each task's name, for messages; a task past the list is named by its number.
    pub task_names: &'a [String],
}

impl Expected<'_> {
    /// How messages name task `task`: `` `name` ``, or `task N` where it has no name.
    fn task(&self, task: usize) -> String {
        match self.task_names.get(task) {
            Some(name) => format!("task `{name}`"),
            None => format!("task {task}"),
        }
    }
}

/// The shapes of a factored round: the shared MLP's layers and each chunk's rows.
#[derive(Clone, Copy, Debug)]
pub struct Factoring<'a> {
    /// Each Linear layer's (inputs, outputs), in order.
    pub layers: &'a [(usize, usize)],
    /// Rows of each chunk, in chunk order.
    pub chunk_rows: &'a [usize],
}

impl Factoring<'_> {
    /// Values of chunk `index`'s inputs (every layer's) and of each task's deltas; `None` for
    /// a chunk the round does not have.
    fn values(&self, index: usize) -> Option<(usize, usize)> {
        let rows = *self.chunk_rows.get(index)?;
        let inputs: usize = self.layers.iter().map(|l| l.0).sum();
        let outputs: usize = self.layers.iter().map(|l| l.1).sum();
        Some((rows * inputs, rows * outputs))
    }
}

/// Adds each task's chunk totals in chunk order; refuses a chunk whose entries are missing,
/// out of order or of the wrong size, naming the chunk and the task. Every result is checked
/// before any addition; then the tasks, independent of each other, are summed in parallel.
pub fn reduce_tasks(
    results: &[ChunkResult],
    expected: Expected,
) -> Result<Vec<TaskSums>, AggregateError> {
    let tasks = expected.head_lens.len();
    for (index, result) in results.iter().enumerate() {
        check_sizes(index, result, &expected)?;
    }
    let mut sums: Vec<TaskSums> = (0..tasks)
        .map(|_| TaskSums {
            loss_sum: 0.0,
            metric_sum: 0.0,
            shared_grad: Vec::new(),
            head_grad: Vec::new(),
        })
        .collect();
    let values = if expected.train {
        results.len() * expected.shared_len * tasks
    } else {
        0
    };
    crate::parallel::for_each_mut(&mut sums, crate::parallel::worth_it(values), |task, sum| {
        let entries = || results.iter().map(|r| &r.task_totals[task]);
        sum.shared_grad =
            add_in_order(entries().map(|t| &t.shared_grad[..]), expected.shared_scale);
        sum.head_grad = add_in_order(entries().map(|t| &t.head_grad[..]), 1.0);
        for totals in entries() {
            sum.loss_sum += totals.loss_sum;
            sum.metric_sum += totals.metric_sum;
        }
    });
    Ok(sums)
}

/// Refuses a chunk's result whose entries are missing, out of order or of the wrong size.
fn check_sizes(
    index: usize,
    result: &ChunkResult,
    expected: &Expected,
) -> Result<(), AggregateError> {
    let grad_len = |len: usize| if expected.train { len } else { 0 };
    let tasks = expected.head_lens.len();
    let malformed = |problem: String| AggregateError::Malformed { index, problem };
    let factored = match expected.factored.filter(|_| expected.train) {
        Some(factoring) => Some(
            factoring
                .values(index)
                .ok_or_else(|| malformed("the round has no such chunk".into()))?,
        ),
        None => None,
    };
    let (shared_len, delta_len, input_len) = match factored {
        Some((inputs, deltas)) => (0, deltas, inputs),
        None => (grad_len(expected.shared_len), 0, 0),
    };
    if result.shared_inputs.len() != 4 * input_len {
        return Err(malformed(format!(
            "shared-layer inputs have {} bytes, expected {}",
            result.shared_inputs.len(),
            4 * input_len
        )));
    }
    if result.task_totals.len() != tasks {
        return Err(malformed(format!(
            "{} task totals for {tasks} tasks",
            result.task_totals.len(),
        )));
    }
    for (task, totals) in result.task_totals.iter().enumerate() {
        if totals.task as usize != task {
            return Err(malformed(format!(
                "entry {task} is for task {}, expected task {task}",
                totals.task
            )));
        }
        for (what, bytes, len) in [
            ("shared", &totals.shared_grad, shared_len),
            ("shared-layer output", &totals.shared_deltas, delta_len),
            (
                "head",
                &totals.head_grad,
                grad_len(expected.head_lens[task]),
            ),
        ] {
            if bytes.len() != 4 * len {
                return Err(malformed(format!(
                    "{}: {what} gradient has {} bytes, expected {}",
                    expected.task(task),
                    bytes.len(),
                    4 * len
                )));
            }
        }
    }
    Ok(())
}

/// What a chunk's result must be before it may count (checked as it arrives): the sizes
/// [`reduce_tasks`] needs, and finite sums and gradients for every task.
pub fn check_chunk(
    index: usize,
    result: &ChunkResult,
    expected: &Expected,
) -> Result<(), AggregateError> {
    check_sizes(index, result, expected)?;
    for (task, totals) in result.task_totals.iter().enumerate() {
        let bad = if !(totals.loss_sum.is_finite() && totals.metric_sum.is_finite()) {
            Some("loss or metric sum")
        } else if !(all_finite_bytes(&totals.shared_grad)
            && all_finite_bytes(&totals.shared_deltas))
        {
            Some("shared-layer gradient")
        } else if !all_finite_bytes(&totals.head_grad) {
            Some("head gradient")
        } else {
            None
        };
        if let Some(what) = bad {
            return Err(AggregateError::Malformed {
                index,
                problem: format!("{}: {what} is not finite", expected.task(task)),
            });
        }
    }
    if !all_finite_bytes(&result.shared_inputs) {
        return Err(AggregateError::Malformed {
            index,
            problem: "shared-layer inputs are not finite".into(),
        });
    }
    Ok(())
}

/// Every task's shared-layer gradient of a factored training round, from its chunks (checked
/// by [`check_chunk`] against `factoring`): each layer's inputs and each task's deltas, the
/// chunks' rows one after the other in chunk order, the deltas times `scale` (the mean over
/// the batch, as [`Expected::shared_scale`] for dense gradients).
pub fn factored_gradients(
    results: &[ChunkResult],
    factoring: Factoring,
    scale: f32,
) -> Result<FactoredGradients, AggregateError> {
    let layers = factoring.layers;
    let tasks = results.first().map_or(0, |r| r.task_totals.len());
    let rows: usize = factoring.chunk_rows.iter().sum();
    let mut inputs: Vec<Vec<f32>> = layers
        .iter()
        .map(|l| Vec::with_capacity(rows * l.0))
        .collect();
    let mut deltas: Vec<Vec<Vec<f32>>> = (0..tasks)
        .map(|_| {
            layers
                .iter()
                .map(|l| Vec::with_capacity(rows * l.1))
                .collect()
        })
        .collect();
    for (result, &chunk_rows) in results.iter().zip(factoring.chunk_rows) {
        let mut at = 0;
        for (layer, &(width, _)) in layers.iter().enumerate() {
            let end = at + 4 * chunk_rows * width;
            extend_scaled(&mut inputs[layer], &result.shared_inputs[at..end], 1.0);
            at = end;
        }
        for (task, totals) in result.task_totals.iter().enumerate() {
            let mut at = 0;
            for (layer, &(_, width)) in layers.iter().enumerate() {
                let end = at + 4 * chunk_rows * width;
                extend_scaled(
                    &mut deltas[task][layer],
                    &totals.shared_deltas[at..end],
                    scale,
                );
                at = end;
            }
        }
    }
    let gradients = FactoredGradients::new(layers.to_vec(), rows, inputs, deltas)
        .map_err(|problem| AggregateError::Malformed { index: 0, problem })?;
    // Every chunk's values were checked finite as it arrived, and a scale of at most one (a
    // mean's) keeps them so: the weighting's own check need not read them again.
    Ok(if scale.abs() <= 1.0 {
        gradients.known_finite()
    } else {
        gradients
    })
}

/// Appends little-endian `f32` `bytes`, each value times `scale`.
fn extend_scaled(out: &mut Vec<f32>, bytes: &[u8], scale: f32) {
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|v| f32::from_le_bytes(v.try_into().expect("four bytes")) * scale),
    );
}

/// The sum of little-endian `f32` vectors (all of one length, checked) added in the order
/// given, times `scale` after the last addition.
fn add_in_order<'a>(parts: impl Iterator<Item = &'a [u8]>, scale: f32) -> Vec<f32> {
    let parts: Vec<&[u8]> = parts.collect();
    add_blocks(&parts, scale)
}

/// Values summed at once by [`add_blocks`]: 16 KiB, in the first level of cache.
const ADD_BLOCK: usize = 4096;

crate::simd::with_avx2! {
    /// [`add_in_order`] in one pass: each block of the sum is the first part's block, the
    /// others added to it in order while it stays in cache, then appended to the result. Every
    /// value sees the same additions in the same order as a part-by-part sum, without writing
    /// and rereading the whole total once per part.
    fn add_blocks(parts: &[&[u8]], scale: f32) -> Vec<f32> {
        let Some((first, rest)) = parts.split_first() else {
            return Vec::new();
        };
        let len = first.len() / 4;
        let mut total = Vec::with_capacity(len);
        let mut block = [0.0f32; ADD_BLOCK];
        for start in (0..len).step_by(ADD_BLOCK) {
            let end = (start + ADD_BLOCK).min(len);
            let block = &mut block[..end - start];
            for (b, v) in block.iter_mut().zip(first[4 * start..4 * end].chunks_exact(4)) {
                *b = f32::from_le_bytes(v.try_into().expect("four bytes"));
            }
            if rest.is_empty() {
                block.iter_mut().for_each(|b| *b *= scale);
            }
            for (index, part) in rest.iter().enumerate() {
                let factor = if index + 1 == rest.len() { scale } else { 1.0 };
                for (b, v) in block.iter_mut().zip(part[4 * start..4 * end].chunks_exact(4)) {
                    *b = (*b + f32::from_le_bytes(v.try_into().expect("four bytes"))) * factor;
                }
            }
            total.extend_from_slice(block);
        }
        total
    }
}

// Bytes are read as native `f32`: the wire's little-endian order is the machines'.
const _: () = assert!(cfg!(target_endian = "little"));

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
            shared_deltas: Default::default(),
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
        shared_scale: 1.0,
        factored: None,
        task_names: &[],
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
        // The scale applies to the shared sum once complete, never to the head's.
        let halved = Expected {
            shared_scale: 0.5,
            ..TRAIN
        };
        let sums = reduce_tasks(&results, halved).unwrap();
        assert_eq!(sums[0].shared_grad, vec![0.5]);
        assert_eq!(sums[1].shared_grad, vec![1.25]);
        assert_eq!(sums[1].head_grad, vec![1.0, 3.0]);
        let one = reduce_tasks(&results[..1], halved).unwrap();
        assert_eq!(one[0].shared_grad, vec![5e7]);
    }

    #[test]
    fn long_sums_match_a_part_by_part_sum_bit_for_bit_across_block_edges() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for (len, parts) in [(0, 2), (1, 1), (ADD_BLOCK + 3, 1), (3 * ADD_BLOCK + 5, 3)] {
            let values: Vec<Vec<f32>> = (0..parts)
                .map(|_| (0..len).map(|_| rng.random_range(-1e4..1e4)).collect())
                .collect();
            // One byte of offset: received bytes need not be aligned for f32.
            let shifted: Vec<Vec<u8>> = values
                .iter()
                .map(|v| [&[0u8][..], &f32s_to_bytes(v)].concat())
                .collect();
            let scale = 0.37f32;
            let mut expected = values[0].clone();
            for (index, part) in values.iter().enumerate().skip(1) {
                let factor = if index + 1 == parts { scale } else { 1.0 };
                for (e, &v) in expected.iter_mut().zip(part) {
                    *e = (*e + v) * factor;
                }
            }
            if parts == 1 {
                expected.iter_mut().for_each(|e| *e *= scale);
            }
            let total = add_in_order(shifted.iter().map(|s| &s[1..]), scale);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&total), bits(&expected), "{len} values, {parts} parts");
        }
    }

    /// A factored chunk of one layer (2 inputs -> 1 output) and two tasks with no heads.
    fn factored_chunk(inputs: &[f32], deltas: [&[f32]; 2]) -> ChunkResult {
        let entry = |task: u32, delta: &[f32]| TaskTotals {
            task,
            loss_sum: 1.0,
            metric_sum: 1.0,
            shared_deltas: f32s_to_bytes(delta),
            ..Default::default()
        };
        ChunkResult {
            task_totals: vec![entry(0, deltas[0]), entry(1, deltas[1])],
            shared_inputs: f32s_to_bytes(inputs),
            ..Default::default()
        }
    }

    #[test]
    fn a_factored_round_joins_its_chunks_rows_in_chunk_order_and_scales_the_deltas() {
        let (layers, chunk_rows) = ([(2, 1)], [1, 2]);
        let factoring = Factoring {
            layers: &layers,
            chunk_rows: &chunk_rows,
        };
        let expected = Expected {
            shared_len: 3,
            head_lens: &[0, 0],
            train: true,
            shared_scale: 0.5,
            factored: Some(factoring),
            task_names: &[],
        };
        // Rows (1, 2), (3, 4), (5, 6); task 0's deltas 1, 2, 3 and task 1's 0, 1, 0.
        let results = [
            factored_chunk(&[1.0, 2.0], [&[1.0], &[0.0]]),
            factored_chunk(&[3.0, 4.0, 5.0, 6.0], [&[2.0, 3.0], &[1.0, 0.0]]),
        ];
        for (index, result) in results.iter().enumerate() {
            assert_eq!(check_chunk(index, result, &expected), Ok(()));
        }
        let sums = reduce_tasks(&results, expected).unwrap();
        assert!(sums.iter().all(|s| s.shared_grad.is_empty()));
        let gradients = factored_gradients(&results, factoring, 0.5).unwrap();
        // Task 0: ½ (1·(1, 2) + 2·(3, 4) + 3·(5, 6)) = (11, 14), bias ½ (1 + 2 + 3) = 3.
        assert_eq!(gradients.materialize(0), vec![11.0, 14.0, 3.0]);
        // Task 1: ½ (3, 4) and bias ½.
        assert_eq!(gradients.materialize(1), vec![1.5, 2.0, 0.5]);
        // A chunk whose inputs or deltas do not fit its rows, or that the round lacks.
        let short = factored_chunk(&[1.0], [&[1.0], &[0.0]]);
        let error = check_chunk(0, &short, &expected).unwrap_err().to_string();
        assert_eq!(
            error,
            "chunk 0: shared-layer inputs have 4 bytes, expected 8"
        );
        let few_deltas = factored_chunk(&[3.0, 4.0, 5.0, 6.0], [&[2.0, 3.0], &[1.0]]);
        let error = check_chunk(1, &few_deltas, &expected)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "chunk 1: task 1: shared-layer output gradient has 4 bytes, expected 8"
        );
        let error = check_chunk(2, &results[0], &expected)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "chunk 2: the round has no such chunk");
        let nan = factored_chunk(&[f32::NAN, 2.0], [&[1.0], &[0.0]]);
        let error = check_chunk(0, &nan, &expected).unwrap_err().to_string();
        assert_eq!(error, "chunk 0: shared-layer inputs are not finite");
        // A dense gradient where deltas are expected is refused too.
        let mut dense = results[0].clone();
        dense.task_totals[1].shared_grad = f32s_to_bytes(&[1.0, 2.0, 3.0]);
        let error = check_chunk(0, &dense, &expected).unwrap_err().to_string();
        assert_eq!(
            error,
            "chunk 0: task 1: shared gradient has 12 bytes, expected 0"
        );
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

    #[test]
    fn a_chunk_with_a_non_finite_value_is_refused_naming_the_task() {
        let good = || {
            chunk(vec![
                totals(0, 1.0, &[1.0], &[1.0]),
                totals(1, 1.0, &[1.0], &[1.0, 1.0]),
            ])
        };
        assert_eq!(check_chunk(0, &good(), &TRAIN), Ok(()));
        let cases = [
            (
                totals(1, f64::NAN, &[1.0], &[1.0, 1.0]),
                "task 1: loss or metric sum is not finite",
            ),
            (
                totals(1, 1.0, &[f32::INFINITY], &[1.0, 1.0]),
                "task 1: shared-layer gradient is not finite",
            ),
            (
                totals(1, 1.0, &[1.0], &[1.0, f32::NAN]),
                "task 1: head gradient is not finite",
            ),
        ];
        for (bad, says) in cases {
            let mut result = good();
            result.task_totals[1] = bad;
            let error = check_chunk(2, &result, &TRAIN).unwrap_err().to_string();
            assert_eq!(error, format!("chunk 2: {says}"));
        }
        // With the spec's names, the task is named as the user wrote it.
        let names = ["height".to_string(), "width".to_string()];
        let named = Expected {
            task_names: &names,
            ..TRAIN
        };
        let mut result = good();
        result.task_totals[1] = totals(1, f64::INFINITY, &[1.0], &[1.0, 1.0]);
        assert_eq!(
            check_chunk(0, &result, &named).unwrap_err().to_string(),
            "chunk 0: task `width`: loss or metric sum is not finite"
        );
    }
}

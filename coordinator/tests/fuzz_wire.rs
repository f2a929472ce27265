//! Property tests of what the coordinator reads from workers and from disk: arbitrary chunk results are checked before they count (and what passes can be reduced), and arbitrary bytes are refused as safetensors files, never panicking.

mod fuzz_config;

use std::collections::BTreeMap;

use outerloop_coordinator::aggregate::{self, AggregateError};
use outerloop_coordinator::mtl::reduce::{self as mtl_reduce, Expected, Factoring};
use outerloop_coordinator::safetensors_file::{self, NamedTensor};
use outerloop_proto::v1::{ChunkResult, TaskTotals};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use prost::Message;

/// Values as they may come back from a worker: ordinary, extreme, or any bit pattern.
fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -10f32..10.0,
        1 => select(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN, -0.0][..]),
        1 => any::<u32>().prop_map(f32::from_bits),
    ]
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => -10f64..10.0,
        1 => any::<u64>().prop_map(f64::from_bits),
    ]
}

/// A length near `expected`: right most of the time, else one off, four off, or unrelated.
fn near(expected: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => Just(expected),
        1 => Just(expected + 1),
        1 => Just(expected.saturating_sub(1)),
        1 => Just(expected + 4),
        1 => Just(expected.saturating_sub(4)),
        1 => 0usize..40,
    ]
}

/// `len` bytes of little-endian floats (a ragged tail when `len` is not a multiple of four).
fn gradient_bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(float(), len.div_ceil(4)).prop_map(move |values| {
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes.truncate(len);
        bytes
    })
}

fn floats(len: usize) -> impl Strategy<Value = Vec<f32>> {
    near(len).prop_flat_map(|len| prop::collection::vec(float(), len))
}

/// A meta-learning chunk's result for `tasks` tasks and (when training) `params` parameters.
fn meta_result(tasks: usize, params: Option<usize>) -> impl Strategy<Value = ChunkResult> {
    let grad = near(4 * params.unwrap_or(0)).prop_flat_map(gradient_bytes);
    let accuracies = prop_oneof![Just(0), Just(tasks), 0usize..6]
        .prop_flat_map(|len| prop::collection::vec(float(), len));
    (
        grad,
        floats(tasks),
        floats(tasks),
        accuracies.clone(),
        accuracies,
        double(),
    )
        .prop_map(
            |(grad_sum, loss_before, loss_after, accuracy_before, accuracy_after, seconds)| {
                ChunkResult {
                    grad_sum: grad_sum.into(),
                    loss_before,
                    loss_after,
                    accuracy_before,
                    accuracy_after,
                    compute_seconds: seconds,
                    ..Default::default()
                }
            },
        )
}

/// A round's shape and a few results for it, each right or slightly wrong.
fn meta_round() -> impl Strategy<Value = (usize, Option<usize>, Vec<ChunkResult>)> {
    (0usize..5, prop::option::of(0usize..9)).prop_flat_map(|(tasks, params)| {
        (
            Just(tasks),
            Just(params),
            prop::collection::vec(meta_result(tasks, params), 1..4),
        )
    })
}

/// What a multi-task round expects: the shared and head lengths, training or not.
#[derive(Clone, Debug)]
struct MtlShape {
    shared_len: usize,
    head_lens: Vec<usize>,
    train: bool,
    shared_scale: f32,
}

impl MtlShape {
    fn expected(&self) -> Expected<'_> {
        Expected {
            shared_len: self.shared_len,
            head_lens: &self.head_lens,
            train: self.train,
            shared_scale: self.shared_scale,
            factored: None,
            task_names: &[],
        }
    }
}

fn mtl_shape() -> impl Strategy<Value = MtlShape> {
    (
        0usize..7,
        prop::collection::vec(0usize..7, 0..4),
        any::<bool>(),
        float(),
    )
        .prop_map(|(shared_len, head_lens, train, shared_scale)| MtlShape {
            shared_len,
            head_lens,
            train,
            shared_scale,
        })
}

fn task_totals(task: usize, shape: &MtlShape) -> impl Strategy<Value = TaskTotals> {
    let grad_len = |len: usize| if shape.train { 4 * len } else { 0 };
    let head_len = shape.head_lens.get(task).copied().unwrap_or(3);
    (
        prop_oneof![8 => Just(task as u32), 1 => any::<u32>(), 1 => 0u32..5],
        double(),
        double(),
        near(grad_len(shape.shared_len)).prop_flat_map(gradient_bytes),
        near(grad_len(head_len)).prop_flat_map(gradient_bytes),
    )
        .prop_map(
            |(task, loss_sum, metric_sum, shared_grad, head_grad)| TaskTotals {
                task,
                loss_sum,
                metric_sum,
                shared_grad: shared_grad.into(),
                head_grad: head_grad.into(),
                shared_deltas: Default::default(),
            },
        )
}

fn mtl_result(shape: &MtlShape) -> impl Strategy<Value = ChunkResult> {
    let shape = shape.clone();
    near(shape.head_lens.len()).prop_flat_map(move |entries| {
        let totals: Vec<_> = (0..entries).map(|t| task_totals(t, &shape)).collect();
        totals.prop_map(|task_totals| ChunkResult {
            task_totals,
            ..Default::default()
        })
    })
}

fn mtl_round() -> impl Strategy<Value = (MtlShape, Vec<ChunkResult>)> {
    mtl_shape().prop_flat_map(|shape| {
        let results = prop::collection::vec(mtl_result(&shape), 1..4);
        (Just(shape), results)
    })
}

/// A factored training round: the shared layers (inputs, outputs), each chunk's rows, the
/// task count, and one result per chunk whose inputs and deltas are near their sizes.
type FactoredRound = (Vec<(usize, usize)>, Vec<usize>, usize, Vec<ChunkResult>);

fn factored_round() -> impl Strategy<Value = FactoredRound> {
    (
        prop::collection::vec((1usize..4, 1usize..4), 1..3),
        prop::collection::vec(1usize..4, 1..4),
        1usize..4,
    )
        .prop_flat_map(|(layers, chunk_rows, tasks)| {
            let inputs: usize = layers.iter().map(|l| l.0).sum();
            let outputs: usize = layers.iter().map(|l| l.1).sum();
            let results: Vec<_> = chunk_rows
                .iter()
                .map(|&rows| {
                    let deltas = near(4 * rows * outputs).prop_flat_map(gradient_bytes);
                    (
                        near(4 * rows * inputs).prop_flat_map(gradient_bytes),
                        prop::collection::vec(deltas, tasks),
                    )
                        .prop_map(|(inputs, deltas)| ChunkResult {
                            shared_inputs: inputs.into(),
                            task_totals: deltas
                                .into_iter()
                                .enumerate()
                                .map(|(task, deltas)| TaskTotals {
                                    task: task as u32,
                                    shared_deltas: deltas.into(),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        })
                })
                .collect();
            (Just(layers), Just(chunk_rows), Just(tasks), results)
        })
}

/// A refusal names its chunk and says something.
fn check_refusal(index: usize, error: &AggregateError) -> Result<(), TestCaseError> {
    let shown = error.to_string();
    prop_assert!(shown.starts_with(&format!("chunk {index}: ")), "{}", shown);
    prop_assert!(shown.len() > "chunk 0: ".len() + 4, "{}", shown);
    Ok(())
}

/// One edit of an encoded file.
#[derive(Clone, Debug)]
enum ByteMutation {
    Flip { at: Index, bit: u8 },
    Set { at: Index, value: u8 },
    Truncate { at: Index },
    Insert { at: Index, bytes: Vec<u8> },
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    let inserted = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        select(
            &[
                "\"",
                "{",
                "}",
                "[",
                "]",
                ",",
                ":",
                "-1",
                "18446744073709551615",
                "1e999",
                "\"F64\"",
                "\"__metadata__\""
            ][..]
        )
        .prop_map(|s| s.as_bytes().to_vec()),
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| ByteMutation::Flip { at, bit }),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, value)| ByteMutation::Set { at, value }),
        1 => any::<Index>().prop_map(|at| ByteMutation::Truncate { at }),
        2 => (any::<Index>(), inserted).prop_map(|(at, bytes)| ByteMutation::Insert { at, bytes }),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[ByteMutation]) -> Vec<u8> {
    for mutation in mutations {
        match mutation {
            ByteMutation::Flip { at, bit } if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            ByteMutation::Set { at, value } if !bytes.is_empty() => {
                let i = at.index(bytes.len());
                bytes[i] = *value;
            }
            ByteMutation::Truncate { at } => bytes.truncate(at.index(bytes.len() + 1)),
            ByteMutation::Insert {
                at,
                bytes: inserted,
            } => {
                let i = at.index(bytes.len() + 1);
                bytes.splice(i..i, inserted.iter().copied());
            }
            _ => {}
        }
    }
    bytes
}

/// Tensors by name, each its shape and values.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Tensors as a layout names them, with any values, and metadata.
fn tensors() -> impl Strategy<Value = (Tensors, BTreeMap<String, String>)> {
    let shape = prop::collection::vec(0usize..4, 0..3);
    let tensor = shape.prop_flat_map(|shape| {
        let len: usize = shape.iter().product();
        (Just(shape), prop::collection::vec(float(), len))
    });
    (
        prop::collection::btree_map("[a-z0-9_]{1,6}(\\.[a-z0-9_]{1,6}){0,2}", tensor, 0..5),
        prop::collection::btree_map(".{0,8}", ".{0,12}", 0..3),
    )
}

fn encode(tensors: &Tensors, metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let named: Vec<NamedTensor> = tensors
        .iter()
        .map(|(name, (shape, values))| NamedTensor {
            name: name.clone(),
            shape: shape.clone(),
            values,
        })
        .collect();
    safetensors_file::encode(&named, metadata)
}

/// Decodes a file, which may be anything: a refusal says why.
fn decode_anything(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Err(why) = safetensors_file::decode(bytes) {
        prop_assert!(!why.trim().is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(fuzz_config::config(1000))]

    #[test]
    fn meta_results_that_pass_the_check_reduce(
        (tasks, params, results) in meta_round(),
    ) {
        let mut counted = Vec::new();
        for (index, result) in results.iter().enumerate() {
            match aggregate::check_chunk(index, result, tasks, params) {
                Ok(()) => counted.push(result.clone()),
                Err(e) => check_refusal(index, &e)?,
            }
        }
        // The check is what `reduce` relies on: whatever passes it can be added up.
        let totals = aggregate::reduce(&counted, &vec![tasks; counted.len()], params);
        prop_assert!(totals.is_ok(), "{:?}", totals);
        let totals = totals.unwrap();
        prop_assert_eq!(totals.grad_sum.len(), params.unwrap_or(0));
        prop_assert_eq!(totals.loss_before.len(), tasks * counted.len());
        prop_assert_eq!(totals.loss_after.len(), tasks * counted.len());
        // Unchecked results are refused by `reduce` itself, not by a panic.
        let _ = aggregate::reduce(&results, &vec![tasks; results.len()], params);
    }

    #[test]
    fn multi_task_results_that_pass_the_check_reduce((shape, results) in mtl_round()) {
        let expected = shape.expected();
        let mut counted = Vec::new();
        for (index, result) in results.iter().enumerate() {
            match mtl_reduce::check_chunk(index, result, &expected) {
                Ok(()) => counted.push(result.clone()),
                Err(e) => check_refusal(index, &e)?,
            }
        }
        let sums = mtl_reduce::reduce_tasks(&counted, expected);
        prop_assert!(sums.is_ok(), "{:?}", sums);
        let sums = sums.unwrap();
        prop_assert_eq!(sums.len(), shape.head_lens.len());
        if shape.train && !counted.is_empty() {
            for (task, sum) in sums.iter().enumerate() {
                prop_assert_eq!(sum.shared_grad.len(), shape.shared_len);
                prop_assert_eq!(sum.head_grad.len(), shape.head_lens[task]);
            }
        }
        if let Err(e) = mtl_reduce::reduce_tasks(&results, expected) {
            prop_assert!(matches!(e, AggregateError::Malformed { .. }), "{:?}", e);
        }
    }

    #[test]
    fn factored_results_that_pass_the_check_join_into_every_tasks_gradient(
        (layers, chunk_rows, tasks, results) in factored_round()
    ) {
        let factoring = Factoring { layers: &layers, chunk_rows: &chunk_rows };
        let head_lens = vec![0; tasks];
        let expected = Expected {
            shared_len: layers.iter().map(|(i, o)| (i + 1) * o).sum(),
            head_lens: &head_lens,
            train: true,
            shared_scale: 0.5,
            factored: Some(factoring),
            task_names: &[],
        };
        let mut refused = false;
        for (index, result) in results.iter().enumerate() {
            if let Err(e) = mtl_reduce::check_chunk(index, result, &expected) {
                check_refusal(index, &e)?;
                refused = true;
            }
        }
        if !refused {
            let gradients = mtl_reduce::factored_gradients(&results, factoring, 0.5);
            prop_assert!(gradients.is_ok(), "{:?}", gradients.err());
            let gradients = gradients.unwrap();
            prop_assert_eq!(gradients.tasks(), tasks);
            prop_assert_eq!(gradients.gram().len(), tasks);
            prop_assert_eq!(gradients.combine(&vec![1.0; tasks]).len(), expected.shared_len);
        }
    }

    #[test]
    fn results_from_random_bytes_are_checked_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        tasks in 0usize..4,
        params in prop::option::of(0usize..8),
        shape in mtl_shape(),
    ) {
        if let Ok(result) = ChunkResult::decode(&bytes[..]) {
            if aggregate::check_chunk(0, &result, tasks, params).is_ok() {
                prop_assert!(aggregate::reduce(std::slice::from_ref(&result), &[tasks], params).is_ok());
            }
            if mtl_reduce::check_chunk(0, &result, &shape.expected()).is_ok() {
                prop_assert!(mtl_reduce::reduce_tasks(&[result], shape.expected()).is_ok());
            }
        }
    }

    #[test]
    fn safetensors_files_round_trip((tensors, metadata) in tensors()) {
        let decoded = safetensors_file::decode(&encode(&tensors, &metadata));
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        let decoded = decoded.unwrap();
        prop_assert_eq!(&decoded.metadata, &metadata);
        let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(decoded.tensors.len(), tensors.len());
        for (name, (_, values)) in &tensors {
            prop_assert_eq!(bits(&decoded.tensors[name]), bits(values), "{}", name);
        }
    }

    #[test]
    fn mutated_safetensors_files_are_read_or_refused(
        (tensors, metadata) in tensors(),
        mutations in prop::collection::vec(byte_mutation(), 1..5),
    ) {
        decode_anything(&mutate(encode(&tensors, &metadata), &mutations))?;
    }

    #[test]
    fn random_bytes_are_refused_as_safetensors_files(
        header_len in prop_oneof![0u64..600, any::<u64>()],
        header in prop_oneof![
            ".{0,300}",
            "\\{(\"[a-z_]{1,4}\":\\{\"dtype\":\"(F32|F64|I8|BOOL|X)\",\"shape\":\\[[0-9,]{0,12}\\],\"data_offsets\":\\[[0-9]{1,20},[0-9]{1,20}\\]\\},?){0,3}\\}",
        ],
        tail in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut bytes = header_len.to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&tail);
        decode_anything(&bytes)?;
        // The honest length, so that the header itself is read.
        let mut honest = (header.len() as u64).to_le_bytes().to_vec();
        honest.extend_from_slice(header.as_bytes());
        honest.extend_from_slice(&tail);
        decode_anything(&honest)?;
        decode_anything(&tail)?;
    }
}

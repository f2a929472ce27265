//! Property tests of every conversion of wire messages into domain types: arbitrary, mutated and random-byte messages convert or are refused, never panic, and what converts can be sized.

use outerloop_proto::dataset::Manifest;
use outerloop_proto::mtl::MtlSetup;
use outerloop_proto::v1::{self, experiment_setup, mtl_setup, table_data, task_descriptor};
use outerloop_proto::work::{Setup, TaskDescriptor};
use outerloop_proto::{f32s_from_bytes, f32s_to_bytes, table};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config, RngSeed};
use prost::Message;

/// `default_cases` cases unless `PROPTEST_CASES` asks for more (or fewer). Failures are not
/// persisted to files: the seed of the run is printed instead (shown when a test fails), and
/// `PROPTEST_RNG_SEED=<seed>` replays exactly that run.
fn config(default_cases: u32) -> Config {
    // `Config::default` reads every `PROPTEST_*` variable, the seed included.
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    let seed = match config.rng_seed {
        RngSeed::Fixed(seed) => seed,
        RngSeed::Random => {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            hasher.finish()
        }
    };
    eprintln!("proptest seed {seed}: replay with PROPTEST_RNG_SEED={seed}");
    config.rng_seed = RngSeed::Fixed(seed);
    config.failure_persistence = None;
    config
}

/// Sizes and counts: mostly small and the edges of validity, sometimes anything.
fn size() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..70,
        2 => select(&[0, 1, 15, 16, 17, 84, 1 << 16, 1 << 28, u32::MAX][..]),
        1 => any::<u32>(),
    ]
}

fn big() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..100, any::<u64>()]
}

/// An enum's number: its known values, just past them, or anything.
fn enum_value() -> impl Strategy<Value = i32> {
    prop_oneof![4 => -1i32..9, 1 => any::<i32>()]
}

fn float() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -10f32..10.0,
        1 => select(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -0.0, f32::MIN_POSITIVE][..]),
        1 => any::<u32>().prop_map(f32::from_bits),
    ]
}

fn double() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -2f64..2.0,
        1 => any::<u64>().prop_map(f64::from_bits),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9_./-]{0,12}",
        1 => select(&["", "train", "val", "test", "..", "../../etc", "é🦀\u{0}"][..]).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

fn few<T: std::fmt::Debug>(element: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    prop::collection::vec(element, 0..5)
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

fn mlp() -> BoxedStrategy<v1::Mlp> {
    (size(), few(size()), size())
        .prop_map(|(input, hidden, output)| v1::Mlp {
            input,
            hidden,
            output,
        })
        .boxed()
}

fn conv4() -> BoxedStrategy<v1::Conv4> {
    (size(), size(), size(), size())
        .prop_map(|(channels, image_size, filters, output)| v1::Conv4 {
            channels,
            image_size,
            filters,
            output,
        })
        .boxed()
}

fn model() -> BoxedStrategy<v1::Model> {
    let kind = prop_oneof![
        mlp().prop_map(v1::model::Kind::Mlp),
        conv4().prop_map(v1::model::Kind::Conv4),
    ];
    prop::option::weighted(0.9, kind)
        .prop_map(|kind| v1::Model { kind })
        .boxed()
}

fn family() -> BoxedStrategy<experiment_setup::Family> {
    prop_oneof![
        (size(), size(), float(), float()).prop_map(|(shots, queries, x_min, x_max)| {
            experiment_setup::Family::Sinusoid(v1::SinusoidFamily {
                shots,
                queries,
                x_min,
                x_max,
            })
        }),
        (text(), enum_value(), text(), size(), size()).prop_map(
            |(dataset, layout, fingerprint, image_size, channels)| {
                experiment_setup::Family::Images(v1::ImageFamily {
                    dataset,
                    layout,
                    fingerprint,
                    image_size,
                    channels,
                })
            }
        ),
    ]
    .boxed()
}

fn mtl_data() -> BoxedStrategy<mtl_setup::Data> {
    let gradnorm = (big(), size(), size(), few(float()), few(size())).prop_map(
        |(seed, inputs, outputs, sigmas, tasks)| {
            mtl_setup::Data::Gradnorm(v1::GradNormData {
                seed,
                inputs,
                outputs,
                sigmas,
                tasks,
            })
        },
    );
    let split = prop_oneof![
        text().prop_map(table_data::Split::SplitColumn),
        (double(), double(), double()).prop_map(|(train, val, test)| {
            table_data::Split::Fractions(v1::SplitFractions { train, val, test })
        }),
    ];
    let table = (
        (text(), text(), few(text()), few(few(text()))),
        (prop::option::of(split), any::<bool>(), big(), text()),
    )
        .prop_map(
            |(
                (dataset, fingerprint, features, targets),
                (split, standardize, seed, image_column),
            )| {
                mtl_setup::Data::Table(v1::TableData {
                    dataset,
                    fingerprint,
                    features,
                    targets: targets
                        .into_iter()
                        .map(|columns| v1::TableTargets { columns })
                        .collect(),
                    split,
                    standardize,
                    seed,
                    image_column,
                })
            },
        );
    prop_oneof![
        gradnorm,
        table,
        Just(mtl_setup::Data::ParetoToy(v1::ParetoToyData {})),
    ]
    .boxed()
}

fn mtl_setup() -> BoxedStrategy<v1::MtlSetup> {
    let task = (text(), enum_value(), size()).prop_map(|(name, loss, outputs)| v1::MtlTask {
        name,
        loss,
        outputs,
    });
    (
        prop::option::weighted(0.9, mtl_data()),
        prop::option::of(mlp()),
        few(task),
        prop::option::of(size().prop_map(|experts| v1::Mmoe { experts })),
        prop::option::weighted(
            0.2,
            (float(), float()).prop_map(|(x1, x2)| v1::Point { x1, x2 }),
        ),
        prop::option::weighted(0.3, conv4()),
        any::<bool>(),
    )
        .prop_map(
            |(data, shared, tasks, mmoe, point, conv4, factored)| v1::MtlSetup {
                data,
                shared,
                tasks,
                mmoe,
                point,
                conv4,
                factored,
            },
        )
        .boxed()
}

fn experiment_setup() -> BoxedStrategy<v1::ExperimentSetup> {
    (
        text(),
        prop::option::weighted(0.9, family()),
        prop::option::weighted(0.9, model()),
        enum_value(),
        float(),
        prop::option::weighted(0.5, mtl_setup()),
    )
        .prop_map(
            |(experiment_id, family, model, algorithm, inner_lr, mtl)| v1::ExperimentSetup {
                experiment_id,
                family,
                model,
                algorithm,
                inner_lr,
                mtl,
            },
        )
        .boxed()
}

fn task_descriptor() -> BoxedStrategy<v1::TaskDescriptor> {
    let task = prop_oneof![
        (float(), float()).prop_map(|(amplitude, phase)| {
            task_descriptor::Task::Sinusoid(v1::SinusoidTask { amplitude, phase })
        }),
        (few(size()), few(size()), size(), size(), few(size())).prop_map(
            |(classes, rotations, shots, queries, instances)| {
                task_descriptor::Task::Episode(v1::Episode {
                    classes,
                    rotations,
                    shots,
                    queries,
                    instances,
                })
            }
        ),
        (few(size()), big(), size(), enum_value()).prop_map(|(tasks, first, count, split)| {
            task_descriptor::Task::Rows(v1::RowBatch {
                tasks,
                first,
                count,
                split,
            })
        }),
    ];
    (big(), big(), prop::option::weighted(0.9, task))
        .prop_map(|(index, data_seed, task)| v1::TaskDescriptor {
            index,
            data_seed,
            task,
        })
        .boxed()
}

fn manifest() -> BoxedStrategy<v1::DatasetManifest> {
    let class =
        (text(), enum_value(), size()).prop_map(|(name, partition, instances)| v1::ClassEntry {
            name,
            partition,
            instances,
        });
    let level = (text(), big()).prop_map(|(value, count)| v1::TableLevel { value, count });
    let column = (text(), any::<bool>(), big(), any::<bool>(), few(level)).prop_map(
        |(name, numeric, missing, many_levels, levels)| v1::TableColumn {
            name,
            numeric,
            missing,
            many_levels,
            levels,
        },
    );
    let table =
        (big(), few(column)).prop_map(|(rows, columns)| v1::TableManifest { rows, columns });
    (
        text(),
        enum_value(),
        text(),
        few(class),
        prop::option::of(table),
    )
        .prop_map(
            |(name, layout, fingerprint, classes, table)| v1::DatasetManifest {
                name,
                layout,
                fingerprint,
                classes,
                table,
            },
        )
        .boxed()
}

/// Converts a set-up both ways the receiving worker may read it, and sizes what converts: a
/// receiver must be able to size a set-up (to check it, or the parameters that follow it)
/// without overflowing.
fn convert_setup(wire: &v1::ExperimentSetup) -> Result<(), TestCaseError> {
    if let Ok(setup) = Setup::try_from(wire) {
        let layout = setup.model.layout();
        let _ = layout.param_count();
        // What converts goes back on the wire as it came, field for field.
        let back = v1::ExperimentSetup::from(&setup);
        let again = Setup::try_from(&back);
        prop_assert!(again.is_ok(), "{:?}", again);
        prop_assert_eq!(
            v1::ExperimentSetup::from(&again.unwrap()).encode_to_vec(),
            back.encode_to_vec()
        );
    }
    if let Ok(setup) = MtlSetup::try_from(wire) {
        let _ = (setup.shared.input(), setup.shared.width());
        let _ = (setup.shared.param_count(), setup.shared_len());
        let layout = setup.layout();
        let _ = layout.param_count();
        for task in 0..setup.tasks.len() {
            let _ = setup.head_range(task);
        }
        let back = v1::ExperimentSetup::from(&setup);
        let again = MtlSetup::try_from(&back);
        prop_assert!(again.is_ok(), "{:?}", again);
        prop_assert_eq!(
            v1::ExperimentSetup::from(&again.unwrap()).encode_to_vec(),
            back.encode_to_vec()
        );
    }
    Ok(())
}

fn convert_task(wire: &v1::TaskDescriptor) -> Result<(), TestCaseError> {
    if let Ok(task) = TaskDescriptor::try_from(wire) {
        let back = v1::TaskDescriptor::from(&task);
        let again = TaskDescriptor::try_from(&back);
        prop_assert!(again.is_ok(), "{:?}", again);
        prop_assert_eq!(
            v1::TaskDescriptor::from(&again.unwrap()).encode_to_vec(),
            back.encode_to_vec()
        );
    }
    Ok(())
}

/// Converts a manifest and plans from it as the coordinator does: its summary, and the split
/// counts a split column names.
fn convert_manifest(wire: &v1::DatasetManifest) -> Result<(), TestCaseError> {
    if let Ok(manifest) = Manifest::try_from(wire) {
        let _ = (manifest.images(), manifest.summary());
        if let Some(table) = &manifest.table {
            for column in &table.columns {
                let _ = table::column_counts(table, &column.name);
            }
            let _ = table::fraction_counts(table.rows, [0.8, 0.1, 0.1]);
        }
        prop_assert_eq!(
            Manifest::try_from(&v1::DatasetManifest::from(&manifest)),
            Ok(manifest)
        );
    }
    Ok(())
}

fn convert_parameters(wire: &v1::Parameters) -> Result<(), TestCaseError> {
    match f32s_from_bytes(&wire.values) {
        Some(values) => {
            prop_assert_eq!(values.len() * 4, wire.values.len());
            prop_assert_eq!(&f32s_to_bytes(&values)[..], &wire.values[..]);
        }
        None => prop_assert!(!wire.values.len().is_multiple_of(4)),
    }
    Ok(())
}

/// Everything a worker converts from a lease: the set-up, the parameters, each chunk's tasks.
fn convert_lease(wire: &v1::LeaseReply) -> Result<(), TestCaseError> {
    if let Some(setup) = &wire.setup {
        convert_setup(setup)?;
    }
    if let Some(parameters) = &wire.parameters {
        convert_parameters(parameters)?;
    }
    for chunk in &wire.chunks {
        for task in &chunk.tasks {
            convert_task(task)?;
        }
    }
    Ok(())
}

/// Everything the coordinator converts from a registration: the workers' dataset manifests.
fn convert_register(wire: &v1::RegisterRequest) -> Result<(), TestCaseError> {
    for manifest in &wire.datasets {
        convert_manifest(manifest)?;
    }
    Ok(())
}

/// One edit of an encoded message.
#[derive(Clone, Debug)]
enum ByteMutation {
    Flip { at: Index, bit: u8 },
    Set { at: Index, value: u8 },
    Truncate { at: Index },
    Insert { at: Index, bytes: Vec<u8> },
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    // Bytes that are varint continuations, field keys and huge lengths.
    let inserted = prop_oneof![
        bytes(),
        Just(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        Just(vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x07]),
        Just(vec![0x80; 11]),
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

/// Decodes `bytes` as `M` and, when prost accepts them, converts the message.
fn decode_then<M: Message + Default>(
    bytes: &[u8],
    convert: impl Fn(&M) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match M::decode(bytes) {
        Ok(message) => convert(&message),
        Err(_) => Ok(()),
    }
}

/// Random bytes read as every message a conversion starts from.
fn decode_as_everything(bytes: &[u8]) -> Result<(), TestCaseError> {
    decode_then(bytes, convert_setup)?;
    decode_then(bytes, convert_task)?;
    decode_then(bytes, convert_manifest)?;
    decode_then(bytes, convert_parameters)?;
    decode_then(bytes, convert_lease)?;
    decode_then(bytes, convert_register)?;
    decode_then(bytes, |chunk: &v1::WorkChunk| {
        chunk.tasks.iter().try_for_each(convert_task)
    })?;
    decode_then(bytes, |mtl: &v1::MtlSetup| {
        convert_setup(&v1::ExperimentSetup {
            mtl: Some(mtl.clone()),
            ..Default::default()
        })
    })?;
    decode_then(bytes, |model: &v1::Model| {
        convert_setup(&v1::ExperimentSetup {
            family: Some(experiment_setup::Family::Sinusoid(
                v1::SinusoidFamily::default(),
            )),
            model: Some(model.clone()),
            algorithm: v1::Algorithm::Maml as i32,
            ..Default::default()
        })
    })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn arbitrary_setups_convert_or_are_refused(wire in experiment_setup()) {
        convert_setup(&wire)?;
    }

    #[test]
    fn arbitrary_task_descriptors_convert_or_are_refused(wire in task_descriptor()) {
        convert_task(&wire)?;
    }

    #[test]
    fn arbitrary_manifests_convert_or_are_refused(wire in manifest()) {
        convert_manifest(&wire)?;
    }

    #[test]
    fn arbitrary_parameter_bytes_decode_or_are_refused(values in prop::collection::vec(any::<u8>(), 0..256)) {
        convert_parameters(&v1::Parameters { version: 1, values: values.into() })?;
    }

    #[test]
    fn random_bytes_decode_and_convert_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_as_everything(&bytes)?;
    }

    #[test]
    fn mutated_encodings_decode_and_convert_or_are_refused(
        setup in experiment_setup(),
        task in task_descriptor(),
        manifest in manifest(),
        which in 0usize..4,
        mutations in prop::collection::vec(byte_mutation(), 1..5),
    ) {
        let encoded = match which {
            0 => setup.encode_to_vec(),
            1 => task.encode_to_vec(),
            2 => manifest.encode_to_vec(),
            _ => v1::LeaseReply {
                chunks: vec![v1::WorkChunk { tasks: vec![task], ..Default::default() }],
                setup: Some(setup),
                parameters: Some(v1::Parameters { version: 3, values: f32s_to_bytes(&[1.0, -2.5]) }),
                unknown_worker: false,
            }
            .encode_to_vec(),
        };
        decode_as_everything(&mutate(encoded, &mutations))?;
    }
}

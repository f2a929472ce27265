//! Multi-task set-ups: `v1::ExperimentSetup` with its `mtl` part to and from `mtl::MtlSetup`.

use super::{within_wire_values, WireError};
use crate::model::{Conv4, Mlp};
use crate::mtl::{
    GradNormData, MtlData, MtlSetup, MtlTask, Shared, TableData, TableSplit, TaskLoss,
};
use crate::v1;

impl From<&MtlSetup> for v1::ExperimentSetup {
    fn from(setup: &MtlSetup) -> Self {
        let data = match &setup.data {
            MtlData::GradNorm(g) => v1::mtl_setup::Data::Gradnorm(v1::GradNormData {
                seed: g.seed,
                inputs: g.inputs,
                outputs: g.outputs,
                sigmas: g.sigmas.clone(),
                tasks: g.tasks.clone(),
            }),
            MtlData::ParetoToy => v1::mtl_setup::Data::ParetoToy(v1::ParetoToyData {}),
            MtlData::Table(t) => v1::mtl_setup::Data::Table(v1::TableData {
                dataset: t.dataset.clone(),
                fingerprint: t.fingerprint.clone(),
                features: t.features.clone(),
                image_column: t.image_column.clone().unwrap_or_default(),
                targets: t
                    .targets
                    .iter()
                    .map(|columns| v1::TableTargets {
                        columns: columns.clone(),
                    })
                    .collect(),
                split: Some(match &t.split {
                    TableSplit::Column(c) => v1::table_data::Split::SplitColumn(c.clone()),
                    TableSplit::Fractions([train, val, test]) => {
                        v1::table_data::Split::Fractions(v1::SplitFractions {
                            train: *train,
                            val: *val,
                            test: *test,
                        })
                    }
                }),
                standardize: t.standardize,
                seed: t.seed,
            }),
        };
        let mlp = setup.shared.mlp();
        let mmoe = match setup.shared {
            Shared::Hard(_) | Shared::Point { .. } | Shared::Conv4(_) => None,
            Shared::Mmoe { experts, .. } => Some(v1::Mmoe {
                experts: experts as u32,
            }),
        };
        v1::ExperimentSetup {
            experiment_id: setup.experiment_id.clone(),
            mtl: Some(v1::MtlSetup {
                data: Some(data),
                shared: (!matches!(setup.shared, Shared::Conv4(_))).then(|| v1::Mlp {
                    input: mlp.input as u32,
                    hidden: mlp.hidden.iter().map(|&w| w as u32).collect(),
                    output: mlp.output as u32,
                }),
                conv4: match &setup.shared {
                    Shared::Conv4(conv) => Some(conv.into()),
                    _ => None,
                },
                mmoe,
                factored: setup.factored,
                point: match setup.shared {
                    Shared::Point { start: [x1, x2] } => Some(v1::Point { x1, x2 }),
                    _ => None,
                },
                tasks: setup
                    .tasks
                    .iter()
                    .map(|t| v1::MtlTask {
                        name: t.name.clone(),
                        loss: match t.loss {
                            TaskLoss::Mse => v1::TaskLoss::Mse,
                            TaskLoss::CrossEntropy => v1::TaskLoss::CrossEntropy,
                            TaskLoss::BinaryCrossEntropy => v1::TaskLoss::BinaryCrossEntropy,
                        } as i32,
                        outputs: t.outputs,
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }
}

impl TryFrom<&v1::ExperimentSetup> for MtlSetup {
    type Error = WireError;

    fn try_from(wire: &v1::ExperimentSetup) -> Result<Self, WireError> {
        let mtl = wire.mtl.as_ref().ok_or(WireError::Missing("mtl"))?;
        let data = match mtl.data.as_ref().ok_or(WireError::Missing("mtl.data"))? {
            v1::mtl_setup::Data::Gradnorm(g) => MtlData::GradNorm(GradNormData {
                seed: g.seed,
                inputs: g.inputs,
                outputs: g.outputs,
                sigmas: g.sigmas.clone(),
                tasks: g.tasks.clone(),
            }),
            v1::mtl_setup::Data::ParetoToy(_) => MtlData::ParetoToy,
            v1::mtl_setup::Data::Table(t) => MtlData::Table(TableData {
                dataset: t.dataset.clone(),
                fingerprint: t.fingerprint.clone(),
                features: t.features.clone(),
                image_column: (!t.image_column.is_empty()).then(|| t.image_column.clone()),
                targets: t.targets.iter().map(|c| c.columns.clone()).collect(),
                split: match t
                    .split
                    .as_ref()
                    .ok_or(WireError::Missing("mtl.table.split"))?
                {
                    v1::table_data::Split::SplitColumn(c) => TableSplit::Column(c.clone()),
                    v1::table_data::Split::Fractions(f) => {
                        TableSplit::Fractions([f.train, f.val, f.test])
                    }
                },
                standardize: t.standardize,
                seed: t.seed,
            }),
        };
        if let Some(conv) = &mtl.conv4 {
            let conv = Conv4::from(conv);
            let out_of_range = |field, value: usize, allowed| WireError::OutOfRange {
                field,
                value: value as u64,
                allowed,
            };
            if conv.output != 0 {
                let allowed = "0: the tasks' heads follow the shared blocks";
                return Err(out_of_range("mtl.conv4.output", conv.output, allowed));
            }
            if conv.channels == 0 || conv.filters == 0 {
                let allowed = "channels and filters are at least 1";
                return Err(out_of_range("mtl.conv4", 0, allowed));
            }
            if Conv4::final_size(conv.image_size) == 0 {
                let allowed = "at least 16, to survive four 2x2 pools";
                return Err(out_of_range(
                    "mtl.conv4.image_size",
                    conv.image_size,
                    allowed,
                ));
            }
            if mtl.shared.is_some() || mtl.mmoe.is_some() || mtl.point.is_some() {
                return Err(WireError::Inconsistent(
                    "mtl.conv4 excludes mtl.shared, mtl.mmoe and mtl.point",
                ));
            }
            if mtl.factored {
                return Err(WireError::Inconsistent(
                    "mtl.factored needs hard sharing of an MLP, not conv4",
                ));
            }
            return checked_sizes(MtlSetup {
                factored: false,
                experiment_id: wire.experiment_id.clone(),
                data,
                shared: Shared::Conv4(conv),
                tasks: mtl_tasks(mtl)?,
            });
        }
        let mlp = mtl
            .shared
            .as_ref()
            .ok_or(WireError::Missing("mtl.shared"))?;
        let mlp = Mlp {
            input: mlp.input as usize,
            hidden: mlp.hidden.iter().map(|&w| w as usize).collect(),
            output: mlp.output as usize,
        };
        let shared = match (&mtl.mmoe, &mtl.point) {
            (_, Some(p)) => Shared::Point {
                start: [p.x1, p.x2],
            },
            (None, None) => Shared::Hard(mlp),
            (Some(v1::Mmoe { experts: 0 }), None) => {
                return Err(WireError::OutOfRange {
                    field: "mtl.mmoe.experts",
                    value: 0,
                    allowed: "a mixture needs at least one expert",
                })
            }
            (Some(m), None) => Shared::Mmoe {
                experts: m.experts as usize,
                mlp,
            },
        };
        if mtl.factored && !matches!(shared, Shared::Hard(_)) {
            return Err(WireError::Inconsistent(
                "mtl.factored needs hard sharing of an MLP (no mmoe, no point)",
            ));
        }
        checked_sizes(MtlSetup {
            factored: mtl.factored,
            experiment_id: wire.experiment_id.clone(),
            data,
            shared,
            tasks: mtl_tasks(mtl)?,
        })
    }
}

/// Refuses a set-up whose input rows, representation or parameters could not travel in one
/// message, which also keeps every size a receiver computes from it (the layout, each task's
/// head range) far from overflowing.
fn checked_sizes(setup: MtlSetup) -> Result<MtlSetup, WireError> {
    if let Shared::Mmoe { experts, .. } = setup.shared {
        // Each expert is a copy of the MLP's slots in the layout: bounded before it is built.
        if experts > MAX_EXPERTS {
            return Err(WireError::OutOfRange {
                field: "mtl.mmoe.experts",
                value: experts as u64,
                allowed: "at most 4096 experts",
            });
        }
    }
    within_wire_values("mtl input values", setup.shared.input())?;
    within_wire_values("mtl shared width", setup.shared.width())?;
    let shared = usize::try_from(setup.shared.param_count()).unwrap_or(usize::MAX);
    within_wire_values("mtl shared parameters", shared)?;
    within_wire_values("mtl parameters", setup.layout().param_count())?;
    Ok(setup)
}

/// Most experts of a mixture on the wire: far more than any spec asks for (64), few enough
/// that laying them out is cheap.
const MAX_EXPERTS: usize = 1 << 12;

/// The tasks of a wire set-up.
fn mtl_tasks(mtl: &v1::MtlSetup) -> Result<Vec<MtlTask>, WireError> {
    mtl.tasks
        .iter()
        .map(|t| {
            let loss = match v1::TaskLoss::try_from(t.loss) {
                Ok(v1::TaskLoss::Mse) => TaskLoss::Mse,
                Ok(v1::TaskLoss::CrossEntropy) => TaskLoss::CrossEntropy,
                Ok(v1::TaskLoss::BinaryCrossEntropy) => TaskLoss::BinaryCrossEntropy,
                Ok(v1::TaskLoss::Unspecified) | Err(_) => {
                    return Err(WireError::UnknownValue {
                        field: "mtl.tasks.loss",
                        value: t.loss,
                    })
                }
            };
            Ok(MtlTask {
                name: t.name.clone(),
                loss,
                outputs: t.outputs,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_task_setup_survives_the_wire() {
        let setup = MtlSetup {
            factored: false,
            experiment_id: "exp-9".into(),
            data: MtlData::GradNorm(GradNormData {
                seed: 7,
                inputs: 250,
                outputs: 100,
                sigmas: vec![1.0, 5.0, 100.0],
                tasks: vec![2, 0],
            }),
            shared: Shared::Hard(Mlp {
                input: 250,
                hidden: vec![100, 100, 100],
                output: 100,
            }),
            tasks: vec![
                MtlTask {
                    name: "t0".into(),
                    loss: TaskLoss::Mse,
                    outputs: 100,
                },
                MtlTask {
                    name: "kind".into(),
                    loss: TaskLoss::CrossEntropy,
                    outputs: 3,
                },
            ],
        };
        let wire = v1::ExperimentSetup::from(&setup);
        assert_eq!(MtlSetup::try_from(&wire), Ok(setup.clone()));
        let mut bad = wire.clone();
        bad.mtl.as_mut().unwrap().tasks[1].loss = 42;
        assert_eq!(
            MtlSetup::try_from(&bad),
            Err(WireError::UnknownValue {
                field: "mtl.tasks.loss",
                value: 42
            })
        );
        let table = MtlSetup {
            factored: false,
            data: MtlData::Table(TableData {
                dataset: "census".into(),
                fingerprint: "ab12".into(),
                features: vec!["age".into(), "job".into()],
                image_column: None,
                targets: vec![vec!["income".into()], vec!["a".into(), "b".into()]],
                split: TableSplit::Fractions([0.8, 0.1, 0.1]),
                standardize: true,
                seed: 3,
            }),
            tasks: vec![
                MtlTask {
                    name: "income".into(),
                    loss: TaskLoss::CrossEntropy,
                    outputs: 2,
                },
                MtlTask {
                    name: "tags".into(),
                    loss: TaskLoss::BinaryCrossEntropy,
                    outputs: 2,
                },
            ],
            ..setup
        };
        let wire = v1::ExperimentSetup::from(&table);
        assert_eq!(MtlSetup::try_from(&wire), Ok(table.clone()));
        let by_column = MtlSetup {
            factored: false,
            data: MtlData::Table(TableData {
                split: TableSplit::Column("fold".into()),
                image_column: Some("photo".into()),
                ..match table.data {
                    MtlData::Table(t) => t,
                    _ => unreachable!(),
                }
            }),
            ..table
        };
        let wire = v1::ExperimentSetup::from(&by_column);
        assert_eq!(MtlSetup::try_from(&wire), Ok(by_column));
        let meta = v1::ExperimentSetup::default();
        assert_eq!(MtlSetup::try_from(&meta), Err(WireError::Missing("mtl")));
    }

    #[test]
    fn setups_too_large_for_a_message_are_refused_before_their_sizes_overflow() {
        // Found by tests/fuzz_wire.rs: sizing these overflowed on the worker that received them
        // (conv4's input and features, an expert count times the expert's parameters), or
        // laid out billions of experts.
        let with = |mtl: v1::MtlSetup| v1::ExperimentSetup {
            mtl: Some(v1::MtlSetup {
                data: Some(v1::mtl_setup::Data::ParetoToy(v1::ParetoToyData {})),
                tasks: vec![v1::MtlTask {
                    name: "t".into(),
                    loss: v1::TaskLoss::Mse as i32,
                    outputs: 1,
                }],
                ..mtl
            }),
            ..Default::default()
        };
        let refused = |wire: &v1::ExperimentSetup| match MtlSetup::try_from(wire) {
            Err(WireError::OutOfRange { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let conv = |channels, image_size, filters| v1::MtlSetup {
            conv4: Some(v1::Conv4 {
                channels,
                image_size,
                filters,
                output: 0,
            }),
            ..Default::default()
        };
        assert_eq!(
            refused(&with(conv(u32::MAX, u32::MAX, 1))),
            "mtl input values"
        );
        assert_eq!(
            refused(&with(conv(1, 1 << 14, u32::MAX))),
            "mtl shared width"
        );
        // 64 experts of 75M parameters each: more than 2^32 together.
        let mlp = v1::Mlp {
            input: 1000,
            hidden: vec![8192],
            output: 8192,
        };
        let mmoe = |experts, mlp: &v1::Mlp| v1::MtlSetup {
            shared: Some(mlp.clone()),
            mmoe: Some(v1::Mmoe { experts }),
            ..Default::default()
        };
        assert_eq!(refused(&with(mmoe(64, &mlp))), "mtl shared parameters");
        let small = v1::Mlp {
            input: 2,
            hidden: vec![],
            output: 0,
        };
        assert_eq!(refused(&with(mmoe(u32::MAX, &small))), "mtl.mmoe.experts");
        assert!(MtlSetup::try_from(&with(mmoe(64, &small))).is_ok());
    }

    #[test]
    fn an_mmoe_setup_survives_the_wire_and_hard_sharing_sends_no_mixture() {
        let mlp = Mlp {
            input: 6,
            hidden: vec![8],
            output: 4,
        };
        let hard = MtlSetup {
            factored: false,
            experiment_id: "exp-3".into(),
            data: MtlData::GradNorm(GradNormData {
                seed: 1,
                inputs: 6,
                outputs: 2,
                sigmas: vec![1.0, 2.0],
                tasks: Vec::new(),
            }),
            shared: Shared::Hard(mlp.clone()),
            tasks: vec![MtlTask {
                name: "t0".into(),
                loss: TaskLoss::Mse,
                outputs: 2,
            }],
        };
        let wire = v1::ExperimentSetup::from(&hard);
        assert_eq!(wire.mtl.as_ref().unwrap().mmoe, None);
        assert_eq!(MtlSetup::try_from(&wire), Ok(hard.clone()));
        let mmoe = MtlSetup {
            factored: false,
            shared: Shared::Mmoe { experts: 3, mlp },
            ..hard
        };
        let wire = v1::ExperimentSetup::from(&mmoe);
        assert_eq!(
            wire.mtl.as_ref().unwrap().mmoe,
            Some(v1::Mmoe { experts: 3 })
        );
        assert_eq!(MtlSetup::try_from(&wire), Ok(mmoe.clone()));
        let toy = MtlSetup {
            factored: false,
            data: MtlData::ParetoToy,
            shared: Shared::Point { start: [9.0, -8.5] },
            ..mmoe
        };
        assert_eq!(
            MtlSetup::try_from(&v1::ExperimentSetup::from(&toy)),
            Ok(toy.clone())
        );
        let conv = MtlSetup {
            factored: false,
            shared: Shared::Conv4(Conv4 {
                channels: 1,
                image_size: 16,
                filters: 8,
                output: 0,
            }),
            ..toy
        };
        let conv_wire = v1::ExperimentSetup::from(&conv);
        assert_eq!(conv_wire.mtl.as_ref().unwrap().shared, None);
        assert_eq!(MtlSetup::try_from(&conv_wire), Ok(conv));
        let mut small = conv_wire.clone();
        small
            .mtl
            .as_mut()
            .unwrap()
            .conv4
            .as_mut()
            .unwrap()
            .image_size = 15;
        assert!(matches!(
            MtlSetup::try_from(&small),
            Err(WireError::OutOfRange {
                field: "mtl.conv4.image_size",
                value: 15,
                ..
            })
        ));
        let mut both = conv_wire;
        both.mtl.as_mut().unwrap().shared = Some(v1::Mlp::default());
        assert!(matches!(
            MtlSetup::try_from(&both),
            Err(WireError::Inconsistent(_))
        ));
        let mut none = wire;
        none.mtl.as_mut().unwrap().mmoe = Some(v1::Mmoe { experts: 0 });
        assert!(matches!(
            MtlSetup::try_from(&none),
            Err(WireError::OutOfRange {
                field: "mtl.mmoe.experts",
                ..
            })
        ));
    }
}

//! Multi-task set-ups: `v1::ExperimentSetup` with its `mtl` part to and from `mtl::MtlSetup`.

use super::WireError;
use crate::model::Mlp;
use crate::mtl::{GradNormData, MtlData, MtlSetup, MtlTask, TaskLoss};
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
        };
        let shared = &setup.shared;
        v1::ExperimentSetup {
            experiment_id: setup.experiment_id.clone(),
            mtl: Some(v1::MtlSetup {
                data: Some(data),
                shared: Some(v1::Mlp {
                    input: shared.input as u32,
                    hidden: shared.hidden.iter().map(|&w| w as u32).collect(),
                    output: shared.output as u32,
                }),
                tasks: setup
                    .tasks
                    .iter()
                    .map(|t| v1::MtlTask {
                        name: t.name.clone(),
                        loss: match t.loss {
                            TaskLoss::Mse => v1::TaskLoss::Mse,
                            TaskLoss::CrossEntropy => v1::TaskLoss::CrossEntropy,
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
        };
        let shared = mtl
            .shared
            .as_ref()
            .ok_or(WireError::Missing("mtl.shared"))?;
        let tasks = mtl
            .tasks
            .iter()
            .map(|t| {
                let loss = match v1::TaskLoss::try_from(t.loss) {
                    Ok(v1::TaskLoss::Mse) => TaskLoss::Mse,
                    Ok(v1::TaskLoss::CrossEntropy) => TaskLoss::CrossEntropy,
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
            .collect::<Result<_, _>>()?;
        Ok(MtlSetup {
            experiment_id: wire.experiment_id.clone(),
            data,
            shared: Mlp {
                input: shared.input as usize,
                hidden: shared.hidden.iter().map(|&w| w as usize).collect(),
                output: shared.output as usize,
            },
            tasks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_task_setup_survives_the_wire() {
        let setup = MtlSetup {
            experiment_id: "exp-9".into(),
            data: MtlData::GradNorm(GradNormData {
                seed: 7,
                inputs: 250,
                outputs: 100,
                sigmas: vec![1.0, 5.0, 100.0],
                tasks: vec![2, 0],
            }),
            shared: Mlp {
                input: 250,
                hidden: vec![100, 100, 100],
                output: 100,
            },
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
        assert_eq!(MtlSetup::try_from(&wire), Ok(setup));
        let mut bad = wire.clone();
        bad.mtl.as_mut().unwrap().tasks[1].loss = 42;
        assert_eq!(
            MtlSetup::try_from(&bad),
            Err(WireError::UnknownValue {
                field: "mtl.tasks.loss",
                value: 42
            })
        );
        let meta = v1::ExperimentSetup::default();
        assert_eq!(MtlSetup::try_from(&meta), Err(WireError::Missing("mtl")));
    }
}

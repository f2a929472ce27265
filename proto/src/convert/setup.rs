//! Experiment set-up: `v1::ExperimentSetup` and its parts to and from `work::Setup`.

use super::{dataset, WireError};
use crate::model::{Conv4, Mlp, Model};
use crate::v1;
use crate::work::{Algorithm, Family, ImageFamily, Setup, SinusoidFamily};

impl From<&Setup> for v1::ExperimentSetup {
    fn from(setup: &Setup) -> Self {
        v1::ExperimentSetup {
            experiment_id: setup.experiment_id.clone(),
            family: Some(match &setup.family {
                Family::Sinusoid(s) => v1::experiment_setup::Family::Sinusoid(v1::SinusoidFamily {
                    shots: s.shots,
                    queries: s.queries,
                    x_min: s.x_range[0],
                    x_max: s.x_range[1],
                }),
                Family::Images(i) => v1::experiment_setup::Family::Images(v1::ImageFamily {
                    dataset: i.dataset.clone(),
                    layout: v1::DatasetLayout::from(i.layout) as i32,
                    fingerprint: i.fingerprint.clone(),
                    image_size: i.image_size,
                    channels: i.channels,
                }),
            }),
            model: Some((&setup.model).into()),
            algorithm: v1::Algorithm::from(setup.algorithm) as i32,
            inner_lr: setup.inner_lr,
            mtl: None,
        }
    }
}

impl TryFrom<&v1::ExperimentSetup> for Setup {
    type Error = WireError;

    fn try_from(wire: &v1::ExperimentSetup) -> Result<Self, WireError> {
        let family = match wire.family.as_ref().ok_or(WireError::Missing("family"))? {
            v1::experiment_setup::Family::Sinusoid(s) => Family::Sinusoid(SinusoidFamily {
                shots: s.shots,
                queries: s.queries,
                x_range: [s.x_min, s.x_max],
            }),
            v1::experiment_setup::Family::Images(i) => Family::Images(ImageFamily {
                dataset: i.dataset.clone(),
                layout: dataset::layout(i.layout)?,
                fingerprint: i.fingerprint.clone(),
                image_size: i.image_size,
                channels: i.channels,
            }),
        };
        let model = wire.model.as_ref().ok_or(WireError::Missing("model"))?;
        Ok(Setup {
            experiment_id: wire.experiment_id.clone(),
            family,
            model: model.try_into()?,
            algorithm: algorithm(wire.algorithm)?,
            inner_lr: wire.inner_lr,
        })
    }
}

impl From<&Model> for v1::Model {
    fn from(model: &Model) -> Self {
        let to_u32 = |n: usize| n as u32;
        v1::Model {
            kind: Some(match model {
                Model::Mlp(m) => v1::model::Kind::Mlp(v1::Mlp {
                    input: to_u32(m.input),
                    hidden: m.hidden.iter().copied().map(to_u32).collect(),
                    output: to_u32(m.output),
                }),
                Model::Conv4(c) => v1::model::Kind::Conv4(c.into()),
            }),
        }
    }
}

impl From<&Conv4> for v1::Conv4 {
    fn from(c: &Conv4) -> Self {
        v1::Conv4 {
            channels: c.channels as u32,
            image_size: c.image_size as u32,
            filters: c.filters as u32,
            output: c.output as u32,
        }
    }
}

impl From<&v1::Conv4> for Conv4 {
    fn from(c: &v1::Conv4) -> Self {
        Conv4 {
            channels: c.channels as usize,
            image_size: c.image_size as usize,
            filters: c.filters as usize,
            output: c.output as usize,
        }
    }
}

impl TryFrom<&v1::Model> for Model {
    type Error = WireError;

    fn try_from(wire: &v1::Model) -> Result<Self, WireError> {
        let to_usize = |n: u32| n as usize;
        Ok(
            match wire.kind.as_ref().ok_or(WireError::Missing("model.kind"))? {
                v1::model::Kind::Mlp(m) => Model::Mlp(Mlp {
                    input: to_usize(m.input),
                    hidden: m.hidden.iter().copied().map(to_usize).collect(),
                    output: to_usize(m.output),
                }),
                v1::model::Kind::Conv4(c) => Model::Conv4(c.into()),
            },
        )
    }
}

impl From<Algorithm> for v1::Algorithm {
    fn from(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Maml => v1::Algorithm::Maml,
            Algorithm::Fomaml => v1::Algorithm::Fomaml,
            Algorithm::MetaSgd => v1::Algorithm::Metasgd,
            Algorithm::Anil => v1::Algorithm::Anil,
            Algorithm::Reptile => v1::Algorithm::Reptile,
            Algorithm::ProtoNet => v1::Algorithm::Protonet,
        }
    }
}

fn algorithm(value: i32) -> Result<Algorithm, WireError> {
    match v1::Algorithm::try_from(value) {
        Ok(v1::Algorithm::Maml) => Ok(Algorithm::Maml),
        Ok(v1::Algorithm::Fomaml) => Ok(Algorithm::Fomaml),
        Ok(v1::Algorithm::Metasgd) => Ok(Algorithm::MetaSgd),
        Ok(v1::Algorithm::Anil) => Ok(Algorithm::Anil),
        Ok(v1::Algorithm::Reptile) => Ok(Algorithm::Reptile),
        Ok(v1::Algorithm::Protonet) => Ok(Algorithm::ProtoNet),
        Ok(v1::Algorithm::Unspecified) | Err(_) => Err(WireError::UnknownValue {
            field: "algorithm",
            value,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setup_survives_the_wire() {
        let setup = Setup {
            experiment_id: "exp-3".into(),
            family: Family::Sinusoid(SinusoidFamily {
                shots: 10,
                queries: 5,
                x_range: [-5.0, 5.0],
            }),
            model: Model::Mlp(Mlp {
                input: 1,
                hidden: vec![40, 40],
                output: 1,
            }),
            algorithm: Algorithm::Fomaml,
            inner_lr: 0.01,
        };
        let wire = v1::ExperimentSetup::from(&setup);
        assert_eq!(Setup::try_from(&wire), Ok(setup));

        let images = Setup {
            experiment_id: "exp-4".into(),
            family: Family::Images(ImageFamily {
                dataset: "omniglot".into(),
                layout: crate::dataset::Layout::Omniglot,
                fingerprint: "00ff".into(),
                image_size: 28,
                channels: 1,
            }),
            model: Model::Conv4(Conv4 {
                channels: 1,
                image_size: 28,
                filters: 64,
                output: 5,
            }),
            algorithm: Algorithm::ProtoNet,
            inner_lr: 0.4,
        };
        let wire = v1::ExperimentSetup::from(&images);
        assert_eq!(Setup::try_from(&wire), Ok(images));
    }

    #[test]
    fn incomplete_or_unknown_values_are_named() {
        let wire = v1::ExperimentSetup {
            family: None,
            ..Default::default()
        };
        assert_eq!(Setup::try_from(&wire), Err(WireError::Missing("family")));
        assert_eq!(
            algorithm(99),
            Err(WireError::UnknownValue {
                field: "algorithm",
                value: 99
            })
        );
    }
}

//! Experiment set-up: `v1::ExperimentSetup` and its parts to and from `work::Setup`.

use super::{dataset, within_wire_values, WireError};
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
            v1::experiment_setup::Family::Images(i) => {
                let side = i.image_size as usize;
                let pixels = (i.channels as usize).saturating_mul(side.saturating_mul(side));
                within_wire_values("images.image_size", pixels)?;
                Family::Images(ImageFamily {
                    dataset: i.dataset.clone(),
                    layout: dataset::layout(i.layout)?,
                    fingerprint: i.fingerprint.clone(),
                    image_size: i.image_size,
                    channels: i.channels,
                })
            }
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

    /// Refuses a model whose parameters or input examples could not travel in one message,
    /// which also keeps every size a receiver computes from it far from overflowing.
    fn try_from(wire: &v1::Model) -> Result<Self, WireError> {
        let to_usize = |n: u32| n as usize;
        let model = match wire.kind.as_ref().ok_or(WireError::Missing("model.kind"))? {
            v1::model::Kind::Mlp(m) => Model::Mlp(Mlp {
                input: to_usize(m.input),
                hidden: m.hidden.iter().copied().map(to_usize).collect(),
                output: to_usize(m.output),
            }),
            v1::model::Kind::Conv4(c) => {
                let conv = Conv4::from(c);
                within_wire_values("model.conv4.image_size", conv.input_len())?;
                within_wire_values("model.conv4.features", conv.features())?;
                Model::Conv4(conv)
            }
        };
        within_wire_values("model parameters", model.layout().param_count())?;
        Ok(model)
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
    fn models_too_large_for_a_message_are_refused_before_their_sizes_overflow() {
        // Found by tests/fuzz_wire.rs: sizing the layout of these overflowed (a panic in
        // debug builds, a wrapped count in release) on the worker that received them.
        let mlp = |input, hidden: Vec<u32>| v1::Model {
            kind: Some(v1::model::Kind::Mlp(v1::Mlp {
                input,
                hidden,
                output: 5,
            })),
        };
        let refused = |model: &v1::Model| match Model::try_from(model) {
            Err(WireError::OutOfRange { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let wide = mlp(u32::MAX, vec![u32::MAX, u32::MAX]);
        assert_eq!(refused(&wide), "model parameters");
        let conv = |channels, image_size, filters| v1::Model {
            kind: Some(v1::model::Kind::Conv4(v1::Conv4 {
                channels,
                image_size,
                filters,
                output: 5,
            })),
        };
        assert_eq!(refused(&conv(3, u32::MAX, 64)), "model.conv4.image_size");
        assert_eq!(refused(&conv(1, 1 << 14, u32::MAX)), "model.conv4.features");
        // Models as large as a spec allows (2^26 parameters) still travel.
        assert!(Model::try_from(&mlp(1, vec![8192, 8191])).is_ok());
        assert!(Model::try_from(&conv(3, 84, 1024)).is_ok());
        let huge_images = v1::ExperimentSetup {
            family: Some(v1::experiment_setup::Family::Images(v1::ImageFamily {
                layout: v1::DatasetLayout::Folders as i32,
                image_size: u32::MAX,
                channels: 3,
                ..Default::default()
            })),
            model: Some(conv(3, 84, 32)),
            algorithm: v1::Algorithm::Maml as i32,
            ..Default::default()
        };
        assert!(matches!(
            Setup::try_from(&huge_images),
            Err(WireError::OutOfRange {
                field: "images.image_size",
                ..
            })
        ));
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

//! Weighting methods: from every task's loss and shared-layer gradient, the one direction the
//! outer optimizer applies to the shared layers, and the scale of each task's head gradient.
//!
//! Every method is one file behind [`Weighting`]. They work on flat `f32` gradients as the
//! workers send them, in `f64` for the small problems (Gram matrices, simplex programs) they
//! solve, and draw any randomness from the step's counter-based key, so a run is a pure
//! function of its seed whatever the number of workers.

pub mod adam;
mod cagrad;
mod dwa;
mod equal;
mod famo;
mod fixed;
mod gradnorm;
mod gradvac;
mod imtl_g;
pub mod linalg;
mod mgda;
mod min_norm;
mod nash_mtl;
mod pcgrad;
mod rlw;
mod saved_state;
mod simplex;
mod uncertainty;

use std::collections::BTreeMap;

use crate::finite::all_finite;
use crate::mtl::factored::FactoredGradients;

/// Every task's gradient of its mean training loss with respect to the shared parameters, in
/// task order, as the methods read them: through their Gram matrix, norms and combinations,
/// never entry by entry, so that the factored form never has to be expanded.
#[derive(Clone, Copy, Debug)]
pub enum TaskGradients<'a> {
    /// One flat vector per task, all of one length.
    Dense(&'a [Vec<f32>]),
    /// Each shared MLP layer's inputs and every task's gradient at its outputs.
    Factored(&'a FactoredGradients),
}

impl TaskGradients<'_> {
    pub fn tasks(&self) -> usize {
        match self {
            TaskGradients::Dense(g) => g.len(),
            TaskGradients::Factored(f) => f.tasks(),
        }
    }

    /// The Gram matrix of the gradients (tasks × tasks).
    pub fn gram(&self) -> Vec<Vec<f64>> {
        match self {
            TaskGradients::Dense(g) => linalg::gram(g),
            TaskGradients::Factored(f) => f.gram(),
        }
    }

    /// `Σ coefficients[t] · gradient[t]`, one value per shared parameter.
    pub fn combine(&self, coefficients: &[f64]) -> Vec<f32> {
        match self {
            TaskGradients::Dense(g) => linalg::combine(coefficients, g),
            TaskGradients::Factored(f) => f.combine(coefficients),
        }
    }

    /// Value `index` of task `task`'s gradient: for saying where a combination went wrong,
    /// never for a method (one value of the factored form costs a sum over the rows).
    pub fn value(&self, task: usize, index: usize) -> f64 {
        match self {
            TaskGradients::Dense(g) => f64::from(g[task][index]),
            TaskGradients::Factored(f) => f.value(task, index),
        }
    }

    /// Each task's Euclidean norm.
    pub fn norms(&self) -> Vec<f64> {
        match self {
            TaskGradients::Dense(g) => g.iter().map(|g| linalg::norm(g)).collect(),
            TaskGradients::Factored(f) => f
                .gram()
                .iter()
                .enumerate()
                .map(|(t, row)| row[t].sqrt())
                .collect(),
        }
    }

    /// The first task whose gradient is not all one length with task 0's, with both lengths.
    fn mismatched_length(&self) -> Option<(usize, usize, usize)> {
        let TaskGradients::Dense(gradients) = self else {
            // Checked when the factored form was built.
            return None;
        };
        let first = gradients.first()?;
        gradients
            .iter()
            .enumerate()
            .find(|(_, g)| g.len() != first.len())
            .map(|(task, g)| (task, g.len(), first.len()))
    }

    /// The first task whose gradient holds a NaN or infinity.
    fn first_non_finite(&self) -> Option<usize> {
        match self {
            TaskGradients::Dense(gradients) => {
                let large = crate::parallel::worth_it(gradients.iter().map(Vec::len).sum());
                let finite = crate::parallel::map(gradients, large, |g| all_finite(g));
                finite.iter().position(|f| !f)
            }
            TaskGradients::Factored(f) => f.first_non_finite(),
        }
    }
}

/// One step's measurements, every slice in task order.
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    /// The outer step (0-based): schedules and warm-ups count from it.
    pub step: u64,
    /// Each task's mean training loss at this step.
    pub losses: &'a [f64],
    /// Each task's gradient of its mean training loss with respect to the shared parameters.
    pub gradients: TaskGradients<'a>,
    /// The step's counter-based key: the only source of randomness a method may use
    /// (`rand_chacha::ChaCha8Rng::seed_from_u64(rng_key)`), so runs are reproducible.
    pub rng_key: u64,
}

impl StepInput<'_> {
    pub fn tasks(&self) -> usize {
        self.losses.len()
    }
}

/// What a method decided for one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Combination {
    /// The direction the outer optimizer applies to the shared parameters, as a gradient
    /// (the optimizer descends along it).
    pub shared: Vec<f32>,
    /// The factor on each task's head gradient: the task's loss weight for methods that
    /// weigh losses, 1 for methods that only reshape the shared gradient (as LibMTL does).
    pub head_scale: Vec<f64>,
    /// What the method chose, written to `metrics.jsonl` under the method's name: at least
    /// `weights` (each task's coefficient in `shared`, where the method has them).
    pub record: Vec<(&'static str, Vec<f64>)>,
}

impl Combination {
    /// What a loss-weighting method returns: `Σ wᵢ gᵢ` for the shared layers, each head scaled
    /// by its task's weight (the head gets the gradient of the weighted loss), and the weights
    /// recorded first, before whatever else the method recorded.
    pub fn weighted(
        weights: Vec<f64>,
        gradients: TaskGradients,
        also: Vec<(&'static str, Vec<f64>)>,
    ) -> Combination {
        let mut record = vec![("weights", weights.clone())];
        record.extend(also);
        Combination {
            shared: gradients.combine(&weights),
            head_scale: weights,
            record,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WeightingError {
    /// The step's losses and gradients do not match the method's task count, or the
    /// gradients are not all of one length.
    #[error("{method}: {detail}")]
    Shape {
        method: &'static str,
        detail: String,
    },
    /// A loss or gradient the method needs is NaN or infinite.
    #[error("task {task}'s {what} is not finite")]
    NonFinite { task: usize, what: &'static str },
    /// The method's own computation failed (a singular system, a solver without progress).
    #[error("{method}: {detail}")]
    Method {
        method: &'static str,
        detail: String,
    },
}

/// A weighting method with whatever state it carries from step to step.
pub trait Weighting: Send + Sync {
    /// The name a spec uses for it (`method = "..."`).
    fn name(&self) -> &'static str;

    /// Combines one step's measurements. Called once per step, in step order; methods that
    /// learn (UW, GradNorm, FAMO) update their own parameters here.
    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError>;

    /// Everything that must survive a restart for the next step to come out the same.
    fn state(&self) -> Vec<(&'static str, Vec<f64>)> {
        Vec::new()
    }

    /// Restores what [`Weighting::state`] returned; refuses missing or misshapen entries.
    fn restore(&mut self, state: &BTreeMap<String, Vec<f64>>) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

/// A weighting method and its hyper-parameters, as a spec names them: a table whose `method`
/// is one of the names below and whose other keys are that method's settings (the defaults
/// are the published ones; each method's file cites its source), e.g.
/// `{ method = "cagrad", c = 0.4 }`.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "method", deny_unknown_fields)]
pub enum Method {
    #[serde(rename = "fixed")]
    Fixed(fixed::Settings),
    #[serde(rename = "ew")]
    Equal(NoSettings),
    #[serde(rename = "uw")]
    Uncertainty(uncertainty::Settings),
    #[serde(rename = "dwa")]
    Dwa(dwa::Settings),
    #[serde(rename = "gradnorm")]
    GradNorm(gradnorm::Settings),
    #[serde(rename = "rlw")]
    Rlw(NoSettings),
    #[serde(rename = "pcgrad")]
    PcGrad(NoSettings),
    #[serde(rename = "mgda")]
    Mgda(mgda::Settings),
    #[serde(rename = "cagrad")]
    CaGrad(cagrad::Settings),
    #[serde(rename = "nash_mtl")]
    NashMtl(nash_mtl::Settings),
    #[serde(rename = "imtl_g")]
    ImtlG(NoSettings),
    #[serde(rename = "gradvac")]
    GradVac(gradvac::Settings),
    #[serde(rename = "famo")]
    Famo(famo::Settings),
}

/// The settings of a method without hyper-parameters: none, so that a stray key is an error
/// (serde lets unit variants of a tagged enum ignore unknown keys) saying so, where serde's own
/// refusal of a field of an empty struct says only "there are no fields".
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct NoSettings {}

impl<'de> serde::Deserialize<'de> for NoSettings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Empty;
        impl<'de> serde::de::Visitor<'de> for Empty {
            type Value = NoSettings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("no settings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<NoSettings, A::Error> {
                match map.next_key::<String>()? {
                    None => Ok(NoSettings {}),
                    Some(key) => Err(serde::de::Error::custom(format!(
                        "unknown field `{key}`: this method takes no settings"
                    ))),
                }
            }
        }
        deserializer.deserialize_map(Empty)
    }
}

impl Method {
    /// Checks the settings against the number of tasks; the error names the field and what it
    /// allows.
    pub fn check(&self, tasks: usize) -> Result<(), String> {
        match self {
            Method::Fixed(settings) => settings.check(tasks),
            Method::Uncertainty(settings) => settings.check(tasks),
            Method::Dwa(settings) => settings.check(tasks),
            Method::GradNorm(settings) => settings.check(tasks),
            Method::Mgda(settings) => settings.check(tasks),
            Method::CaGrad(settings) => settings.check(tasks),
            Method::NashMtl(settings) => settings.check(tasks),
            Method::GradVac(settings) => settings.check(tasks),
            Method::Famo(settings) => settings.check(tasks),
            Method::Equal(_) | Method::Rlw(_) | Method::PcGrad(_) | Method::ImtlG(_) => Ok(()),
        }
    }

    /// The method's state for a run with `tasks` tasks.
    pub fn build(&self, tasks: usize) -> Box<dyn Weighting> {
        match self {
            Method::Fixed(settings) => Box::new(fixed::Fixed::new(settings.clone(), tasks)),
            Method::Equal(_) => Box::new(equal::Equal),
            Method::Uncertainty(settings) => {
                Box::new(uncertainty::Uncertainty::new(settings.clone(), tasks))
            }
            Method::Dwa(settings) => Box::new(dwa::Dwa::new(settings.clone(), tasks)),
            Method::GradNorm(settings) => {
                Box::new(gradnorm::GradNorm::new(settings.clone(), tasks))
            }
            Method::Rlw(_) => Box::new(rlw::Rlw),
            Method::PcGrad(_) => Box::new(pcgrad::PcGrad),
            Method::Mgda(settings) => Box::new(mgda::Mgda::new(settings.clone())),
            Method::CaGrad(settings) => Box::new(cagrad::CaGrad::new(settings.clone())),
            Method::NashMtl(settings) => Box::new(nash_mtl::NashMtl::new(settings.clone(), tasks)),
            Method::ImtlG(_) => Box::new(imtl_g::ImtlG),
            Method::GradVac(settings) => Box::new(gradvac::GradVac::new(settings.clone(), tasks)),
            Method::Famo(settings) => Box::new(famo::Famo::new(settings.clone(), tasks)),
        }
    }
}

/// Refuses a step that `method`, built for (or working on) `tasks` tasks, cannot use: one
/// whose loss or gradient count is not `tasks` or whose gradients differ in length
/// ([`WeightingError::Shape`]), or whose losses or gradients are not finite
/// ([`WeightingError::NonFinite`], naming the first bad task). Every method calls it first.
pub fn check_input(
    method: &'static str,
    input: &StepInput,
    tasks: usize,
) -> Result<(), WeightingError> {
    if input.losses.len() != tasks || input.gradients.tasks() != tasks {
        return Err(WeightingError::Shape {
            method,
            detail: format!(
                "expected {tasks} tasks, given {} losses and {} gradients",
                input.losses.len(),
                input.gradients.tasks()
            ),
        });
    }
    if let Some((task, len, first)) = input.gradients.mismatched_length() {
        return Err(WeightingError::Shape {
            method,
            detail: format!(
                "task {task}'s shared-layer gradient has length {len}, task 0's has length {first}"
            ),
        });
    }
    for (task, loss) in input.losses.iter().enumerate() {
        if !loss.is_finite() {
            return Err(WeightingError::NonFinite { task, what: "loss" });
        }
    }
    if let Some(task) = input.gradients.first_non_finite() {
        return Err(WeightingError::NonFinite {
            task,
            what: "shared-layer gradient",
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    fn check(losses: &[f64], gradients: &[Vec<f32>], tasks: usize) -> Result<(), WeightingError> {
        check_input(
            "test",
            &StepInput {
                step: 0,
                losses,
                gradients: TaskGradients::Dense(gradients),
                rng_key: 0,
            },
            tasks,
        )
    }

    #[test]
    fn a_well_formed_step_passes() {
        assert_eq!(
            check(&[1.0, 2.0], &[vec![1.0, 0.0], vec![0.0, 1.0]], 2),
            Ok(())
        );
        assert_eq!(check(&[], &[], 0), Ok(()));
    }

    #[test]
    fn counts_other_than_the_task_count_are_refused() {
        let g = vec![vec![1.0f32], vec![2.0], vec![3.0]];
        let err = check(&[1.0, 1.0], &g, 3).unwrap_err();
        assert_eq!(
            err,
            WeightingError::Shape {
                method: "test",
                detail: "expected 3 tasks, given 2 losses and 3 gradients".to_string(),
            }
        );
        assert_eq!(
            err.to_string(),
            "test: expected 3 tasks, given 2 losses and 3 gradients"
        );
        // Losses and gradients agreeing with each other but not with the method.
        assert!(matches!(
            check(&[1.0, 1.0, 1.0], &g, 2),
            Err(WeightingError::Shape { .. })
        ));
        assert!(matches!(
            check(&[1.0, 1.0, 1.0], &g[..2], 3),
            Err(WeightingError::Shape { .. })
        ));
    }

    #[test]
    fn ragged_gradients_are_refused() {
        let err = check(
            &[1.0, 1.0, 1.0],
            &[vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0]],
            3,
        )
        .unwrap_err();
        assert_eq!(
            err,
            WeightingError::Shape {
                method: "test",
                detail: "task 2's shared-layer gradient has length 1, task 0's has length 2"
                    .to_string(),
            }
        );
    }

    #[test]
    fn a_nan_loss_is_refused() {
        let err = check(&[1.0, f64::NAN], &[vec![1.0], vec![1.0]], 2).unwrap_err();
        assert_eq!(
            err,
            WeightingError::NonFinite {
                task: 1,
                what: "loss"
            }
        );
        assert_eq!(err.to_string(), "task 1's loss is not finite");
    }

    #[test]
    fn an_infinite_gradient_is_refused() {
        let err = check(&[1.0, 1.0], &[vec![1.0, f32::INFINITY], vec![1.0, 0.0]], 2).unwrap_err();
        assert_eq!(
            err,
            WeightingError::NonFinite {
                task: 0,
                what: "shared-layer gradient"
            }
        );
    }

    fn parse(text: &str) -> Result<Method, String> {
        toml::from_str(text).map_err(|e| e.message().to_string())
    }

    #[test]
    fn every_method_decides_the_same_from_factored_gradients_as_from_the_formed_ones() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (layers, rows, tasks) = (vec![(5, 4), (4, 3)], 6, 3);
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let inputs: Vec<Vec<f32>> = layers.iter().map(|l| draw(rows * l.0)).collect();
        let deltas: Vec<Vec<Vec<f32>>> = (0..tasks)
            .map(|_| layers.iter().map(|l| draw(rows * l.1)).collect())
            .collect();
        let factored = FactoredGradients::new(layers, rows, inputs, deltas).unwrap();
        let formed: Vec<Vec<f32>> = (0..tasks).map(|t| factored.materialize(t)).collect();
        let names = [
            "ew", "uw", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad", "nash_mtl", "imtl_g",
            "gradvac", "famo",
        ];
        let methods = names
            .iter()
            .map(|name| parse(&format!("method = \"{name}\"")).unwrap())
            .chain([parse("method = \"fixed\"\nweights = [1.0, 0.5, 2.0]").unwrap()]);
        for method in methods {
            let (mut a, mut b) = (method.build(tasks), method.build(tasks));
            for step in 0..3u64 {
                let losses: Vec<f64> = (0..tasks)
                    .map(|t| 1.0 + (t as f64 + 1.0) / (step as f64 + 1.0))
                    .collect();
                let input = |gradients| StepInput {
                    step,
                    losses: &losses,
                    gradients,
                    rng_key: step,
                };
                let want = a.combine(&input(TaskGradients::Dense(&formed))).unwrap();
                let got = b
                    .combine(&input(TaskGradients::Factored(&factored)))
                    .unwrap();
                let norm = linalg::norm(&want.shared).max(1e-12);
                for (x, y) in got.shared.iter().zip(&want.shared) {
                    assert!(
                        f64::from(x - y).abs() <= 1e-4 * norm,
                        "{}: step {step}: {:?} against {:?}",
                        a.name(),
                        got.shared,
                        want.shared
                    );
                }
                for (x, y) in got.head_scale.iter().zip(&want.head_scale) {
                    assert!((x - y).abs() <= 1e-4 * y.abs().max(1.0), "{}", a.name());
                }
            }
        }
    }

    #[test]
    fn every_method_parses_by_name_with_its_published_defaults() {
        let cases = [
            ("ew", Method::Equal(NoSettings {})),
            ("uw", Method::Uncertainty(Default::default())),
            ("dwa", Method::Dwa(Default::default())),
            ("gradnorm", Method::GradNorm(Default::default())),
            ("rlw", Method::Rlw(NoSettings {})),
            ("pcgrad", Method::PcGrad(NoSettings {})),
            ("mgda", Method::Mgda(Default::default())),
            ("cagrad", Method::CaGrad(Default::default())),
            ("nash_mtl", Method::NashMtl(Default::default())),
            ("imtl_g", Method::ImtlG(NoSettings {})),
            ("gradvac", Method::GradVac(Default::default())),
            ("famo", Method::Famo(Default::default())),
        ];
        for (name, expected) in cases {
            let method = parse(&format!("method = \"{name}\"")).unwrap();
            assert_eq!(method, expected, "{name}");
            assert_eq!(method.check(3), Ok(()), "{name}");
            let built = method.build(3);
            assert_eq!(built.name(), name, "{name} builds another method");
        }
    }

    #[test]
    fn the_defaults_are_the_published_values() {
        // Each method's file cites where its value comes from.
        let uw = uncertainty::Settings::default();
        assert_eq!(uw.lr, 0.025);
        let dwa = dwa::Settings::default();
        assert_eq!((dwa.temperature, dwa.window), (2.0, 1));
        let gradnorm = gradnorm::Settings::default();
        assert_eq!((gradnorm.alpha, gradnorm.lr), (1.5, 0.025));
        assert_eq!(
            mgda::Settings::default().normalization,
            mgda::Normalization::None
        );
        let cagrad = cagrad::Settings::default();
        assert_eq!(
            (cagrad.c, cagrad.rescale),
            (0.5, cagrad::Rescale::OnePlusCSquared)
        );
        let nash = nash_mtl::Settings::default();
        assert_eq!((nash.update_weights_every, nash.max_norm), (1, 1.0));
        assert_eq!(gradvac::Settings::default().beta, 0.5);
        let famo = famo::Settings::default();
        assert_eq!((famo.lr, famo.gamma), (0.025, 1e-3));
    }

    #[test]
    fn settings_are_read_and_checked() {
        let method = parse("method = \"fixed\"\nweights = [1.0, 0.5]").unwrap();
        assert_eq!(method.check(2), Ok(()));
        assert!(method.check(3).unwrap_err().contains("weights"));
        let cagrad = parse("method = \"cagrad\"\nc = 1.5").unwrap();
        assert!(cagrad.check(2).unwrap_err().contains("`c`"));
    }

    #[test]
    fn unknown_methods_and_fields_are_refused_with_what_is_allowed() {
        let unknown = parse("method = \"pcgard\"").unwrap_err();
        assert!(
            unknown.contains("pcgard") && unknown.contains("pcgrad") && unknown.contains("famo"),
            "{unknown}"
        );
        let field = parse("method = \"cagrad\"\nalpha = 0.4").unwrap_err();
        assert!(field.contains("alpha") && field.contains("`c`"), "{field}");
        let stray = parse("method = \"pcgrad\"\nc = 0.4").unwrap_err();
        assert!(
            stray.contains("unknown field `c`: this method takes no settings"),
            "{stray}"
        );
        let missing = parse("c = 0.4").unwrap_err();
        assert!(missing.contains("method"), "{missing}");
    }
}

//! The gRPC edge: unpacks requests, delegates to the registry and dispatcher, maps errors to statuses.

use std::collections::BTreeMap;
use std::sync::Arc;

use outerloop_proto::dataset::{Manifest, MAX_SKIPPED_DATASETS, MAX_SKIP_REASON_CHARS};
use outerloop_proto::v1::experiments_server::Experiments;
use outerloop_proto::v1::results_server::Results;
use outerloop_proto::v1::workers_server::Workers;
use outerloop_proto::v1::{
    self, CancelReply, CancelRequest, CompleteReply, CompleteRequest, DeregisterReply,
    DeregisterRequest, EvalSummary, ExperimentStatus, HeartbeatReply, HeartbeatRequest, LeaseReply,
    LeaseRequest, ListWorkersReply, ListWorkersRequest, RegisterReply, RegisterRequest,
    ResumeReply, ResumeRequest, StatusReply, StatusRequest, SubmitReply, SubmitRequest,
};
use tonic::{Request, Response, Status};

use crate::datasets::Catalog;
use crate::dispatch::{DatasetVersion, Dispatcher, Registration};
use crate::registry::{Registry, RegistryError, Submitted};
use crate::store::{EvalRecord, ExperimentRecord};
use crate::text::{bounded, printable};

/// The user-facing service: submit, status, cancel, and the list of workers.
pub struct ExperimentsService {
    pub registry: Arc<Registry>,
    pub dispatcher: Arc<Dispatcher>,
    pub datasets: Arc<Catalog>,
}

/// The worker-facing service: registration, heartbeats and leases.
pub struct WorkersService {
    pub dispatcher: Arc<Dispatcher>,
    pub datasets: Arc<Catalog>,
}

/// Where workers hand results back: the one worker call that carries the model's size.
pub struct ResultsService {
    pub dispatcher: Arc<Dispatcher>,
}

fn to_status(e: RegistryError) -> Status {
    match e {
        RegistryError::InvalidSpec(e) => Status::invalid_argument(bounded(e.to_string())),
        RegistryError::UnknownId { .. } => Status::not_found(bounded(e.to_string())),
        RegistryError::Storage(_) => Status::internal(bounded(e.to_string())),
        RegistryError::Limit(_) => Status::resource_exhausted(bounded(e.to_string())),
        RegistryError::NotPaused { .. } => Status::failed_precondition(bounded(e.to_string())),
    }
}

fn eval_summary(e: &EvalRecord) -> EvalSummary {
    EvalSummary {
        step: e.step,
        loss_mean: e.loss_mean,
        loss_ci95: e.loss_ci95,
        tasks: e.tasks,
        loss_before_mean: e.loss_before_mean,
        r#final: e.r#final,
        accuracy_mean: e.accuracy_mean,
        accuracy_ci95: e.accuracy_ci95,
        accuracy_before_mean: e.accuracy_before_mean,
        task_scores: e
            .task_scores
            .iter()
            .flatten()
            .map(|s| outerloop_proto::v1::TaskScore {
                task: s.task.clone(),
                loss: s.loss,
                metric: s.metric,
            })
            .collect(),
        delta_m_percent: e.delta_m_percent,
    }
}

impl ExperimentsService {
    /// Runs `call` on the registry on a blocking thread, off the async runtime: it writes an
    /// experiment's record. `what` names the call if the thread is lost.
    async fn writing<T: Send + 'static>(
        &self,
        what: &str,
        call: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
    ) -> Result<T, Status> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || call(&registry))
            .await
            .map_err(|e| Status::internal(format!("the {what} was not processed: {e}")))?
            .map_err(to_status)
    }

    fn status_of(&self, r: &ExperimentRecord, workers: u32) -> ExperimentStatus {
        let dir = self.registry.store().dir(&r.id);
        ExperimentStatus {
            id: r.id.clone(),
            name: r.name.clone(),
            kind: r.kind.as_str().to_string(),
            state: r.state.to_string(),
            step: r.step,
            steps: r.steps,
            tasks_per_s: if r.train_seconds > 0.0 {
                r.tasks_done as f64 / r.train_seconds
            } else {
                0.0
            },
            last_eval: r.last_eval.as_ref().map(eval_summary),
            meta_loss: r.meta_loss.unwrap_or(f64::NAN),
            train_seconds: r.train_seconds,
            error: r.error.clone().unwrap_or_default(),
            results_dir: std::path::absolute(&dir)
                .unwrap_or(dir)
                .display()
                .to_string(),
            workers,
            meta_accuracy: r.meta_accuracy,
        }
    }
}

/// What a submitter hears when the live workers hold several versions of dataset `name` and
/// the spec pinned none: the version taken (`fingerprint`, the most held) and how to pin one.
/// Fingerprints come from workers' manifests: shown printable, a few of them.
fn version_note(name: &str, fingerprint: &str, holders: &BTreeMap<String, usize>) -> String {
    const SHOWN: usize = 4;
    let total: usize = holders.values().sum();
    let held = holders.get(fingerprint).copied().unwrap_or(0);
    let others: Vec<(&String, &usize)> = (holders.iter())
        .filter(|(f, _)| f.as_str() != fingerprint)
        .collect();
    let mut listed: Vec<String> = (others.iter().take(SHOWN))
        .map(|(f, n)| format!("{} ({n})", printable(f, 64)))
        .collect();
    if others.len() > SHOWN {
        listed.push(format!("and {} more", others.len() - SHOWN));
    }
    bounded(format!(
        "workers hold {} versions of dataset `{name}`: this experiment uses {}, held by {held} of {total} workers (others: {}); pin one with task.fingerprint (meta-learning) or data.fingerprint (multi-task)",
        holders.len(),
        printable(fingerprint, 64),
        listed.join(", ")
    ))
}

#[tonic::async_trait]
impl Experiments for ExperimentsService {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitReply>, Status> {
        let r = request.into_inner();
        let source = match printable(&r.source_name, 256) {
            s if s.is_empty() => "spec".to_string(),
            s => s,
        };
        let (registry, datasets, dispatcher) = (
            self.registry.clone(),
            self.datasets.clone(),
            self.dispatcher.clone(),
        );
        // Parsing and storing run off the async runtime: a large spec must not hold up
        // heartbeats and results.
        let submitted = tokio::task::spawn_blocking(move || {
            // A spec on a dataset is checked against the version most registered workers hold
            // (or the one it pins), from the manifests workers reported; where they hold
            // several, the submitter hears which one was taken.
            let chosen = std::sync::Mutex::new(None);
            let resolve = |name: &str, pinned: Option<&str>| {
                let holders = dispatcher.dataset_holders(name);
                let manifest = datasets.resolve(name, pinned, &holders).map_err(|e| {
                    // Why registered workers that hold a folder of that name could not read it.
                    let unreadable = dispatcher.unreadable(name);
                    if unreadable.is_empty() {
                        e
                    } else {
                        format!("{e} ({})", unreadable.join("; "))
                    }
                })?;
                if pinned.is_none() && holders.len() > 1 {
                    *chosen.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(version_note(name, &manifest.fingerprint, &holders));
                }
                Ok(manifest)
            };
            let mut submitted =
                registry.submit_noting(&r.spec_toml, &source, &r.overrides, &resolve)?;
            let chosen = chosen.into_inner().unwrap_or_else(|e| e.into_inner());
            submitted.notes.splice(0..0, chosen);
            Ok::<_, RegistryError>(submitted)
        })
        .await
        .map_err(|e| Status::internal(format!("the submission was not processed: {e}")))?;
        let Submitted { id, notes } = submitted.map_err(to_status)?;
        Ok(Response::new(SubmitReply { id, notes }))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersReply>, Status> {
        let workers = self
            .dispatcher
            .workers()
            .into_iter()
            .map(|w| v1::WorkerSummary {
                number: w.number,
                refused_results: w.refused_results,
                name: w.name,
                device: w.device,
                threads: w.threads,
                datasets: w
                    .datasets
                    .iter()
                    .map(|d| {
                        let known = self.datasets.resolve(
                            &d.name,
                            Some(&d.fingerprint),
                            &Default::default(),
                        );
                        let (layout, classes, images) = known.as_ref().map_or((0, 0, 0), |m| {
                            (
                                v1::DatasetLayout::from(m.layout) as i32,
                                m.classes.len() as u32,
                                m.images(),
                            )
                        });
                        let table = known.ok().and_then(|m| m.table.clone());
                        v1::DatasetSummary {
                            name: d.name.clone(),
                            layout,
                            fingerprint: d.fingerprint.clone(),
                            classes,
                            images,
                            rows: table.as_ref().map_or(0, |t| t.rows),
                            columns: table.as_ref().map_or(0, |t| t.columns.len() as u32),
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListWorkersReply { workers }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let id = request.into_inner().id;
        let records = self
            .registry
            .status((!id.is_empty()).then_some(id.as_str()))
            .map_err(to_status)?;
        let workers = self.dispatcher.worker_count() as u32;
        let experiments = records.iter().map(|r| self.status_of(r, workers)).collect();
        Ok(Response::new(StatusReply { experiments }))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelReply>, Status> {
        let id = request.into_inner().id;
        let state = self.writing("cancellation", move |r| r.cancel(&id)).await?;
        Ok(Response::new(CancelReply {
            state: state.to_string(),
        }))
    }

    async fn resume(
        &self,
        request: Request<ResumeRequest>,
    ) -> Result<Response<ResumeReply>, Status> {
        let id = request.into_inner().id;
        let state = self.writing("resumption", move |r| r.resume(&id)).await?;
        Ok(Response::new(ResumeReply {
            state: state.to_string(),
        }))
    }
}

#[tonic::async_trait]
impl Workers for WorkersService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let r = request.into_inner();
        let manifests = r
            .datasets
            .iter()
            .map(Manifest::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(format!("a dataset manifest is invalid: {e}")))?;
        let new = self.datasets.report(&manifests);
        if !new.is_empty() {
            // Off the async runtime: it writes files.
            let datasets = self.datasets.clone();
            let _ = tokio::task::spawn_blocking(move || datasets.store(&new)).await;
        }
        let registration = Registration {
            name: printable(&r.name, 128),
            // Kept while the worker is registered: bounded, like everything a worker says.
            skipped: (r.skipped.iter().take(MAX_SKIPPED_DATASETS))
                .map(|s| {
                    (
                        printable(&s.name, 128),
                        printable(&s.reason, MAX_SKIP_REASON_CHARS),
                    )
                })
                .collect(),
            device: printable(&r.device, 64),
            threads: r.threads,
            datasets: manifests
                .iter()
                .map(|m| DatasetVersion {
                    name: m.name.clone(),
                    fingerprint: m.fingerprint.clone(),
                })
                .collect(),
        };
        self.dispatcher
            .register(registration)
            .map(Response::new)
            .map_err(Status::resource_exhausted)
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let worker = request.into_inner().worker_id;
        let known = self.dispatcher.heartbeat(worker);
        let ended_experiments = self.dispatcher.ended_for(worker);
        Ok(Response::new(HeartbeatReply {
            known,
            ended_experiments,
        }))
    }

    async fn deregister(
        &self,
        request: Request<DeregisterRequest>,
    ) -> Result<Response<DeregisterReply>, Status> {
        let known = self.dispatcher.deregister(request.into_inner().worker_id);
        Ok(Response::new(DeregisterReply { known }))
    }

    async fn lease(&self, request: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        Ok(Response::new(
            self.dispatcher.lease(&request.into_inner()).await,
        ))
    }
}

#[tonic::async_trait]
impl Results for ResultsService {
    async fn complete(
        &self,
        request: Request<CompleteRequest>,
    ) -> Result<Response<CompleteReply>, Status> {
        let r = request.into_inner();
        let done = self.dispatcher.complete(r.worker_id, r.results);
        if !done.refused.is_empty() {
            // The chunks went back to other leases. This worker hears why and gets no lease in
            // this reply; it asks again in its next call.
            return Err(Status::invalid_argument(format!(
                "results refused: {}",
                done.refused.join("; ")
            )));
        }
        let accepted = done.accepted;
        let next = match r.next {
            Some(lease) => Some(self.dispatcher.lease(&lease).await),
            None => None,
        };
        Ok(Response::new(CompleteReply { accepted, next }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_note_names_the_choice_and_a_few_others_printably() {
        let holders: BTreeMap<String, usize> = [("3fa9".to_string(), 3), ("a1b2".to_string(), 1)]
            .into_iter()
            .chain((0..10).map(|i| (format!("\u{1b}[31mx{i}"), 1)))
            .collect();
        let note = version_note("shop", "3fa9", &holders);
        assert!(
            note.starts_with("workers hold 12 versions of dataset `shop`: this experiment uses 3fa9, held by 3 of 14 workers"),
            "{note}"
        );
        assert!(
            note.contains("and 7 more") && note.contains("data.fingerprint"),
            "{note}"
        );
        assert!(
            !note.contains('\u{1b}'),
            "no escape codes reach a terminal: {note}"
        );
    }
}

//! Every RPC, called by whoever it must refuse: without a token, with a token nobody was given, with the other role's token; then, by a caller who may call it, with what it must not accept. Each gets its gRPC status and changes nothing. Prints the table.

mod common;

use std::time::Duration;

use common::{Cluster, SPEC, TINY};
use outerloop_proto::auth::ClientAuth;
use outerloop_proto::v1::experiments_client::ExperimentsClient;
use outerloop_proto::v1::results_client::ResultsClient;
use outerloop_proto::v1::workers_client::WorkersClient;
use outerloop_proto::v1::{
    CancelRequest, ChunkResult, CompleteRequest, DeregisterRequest, HeartbeatRequest, LeaseRequest,
    ListWorkersRequest, ResumeRequest, StatusRequest, SubmitRequest,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

const WORKER_TOKEN: &str = "w-91c2e7a4b05d38f6e1a2";
const USER_TOKEN: &str = "u-4d7f0b2e9a61c8357e0b";
const NOBODYS_TOKEN: &str = "x-0000000000000000dead";

type Experiments = ExperimentsClient<InterceptedService<Channel, ClientAuth>>;
type Workers = WorkersClient<InterceptedService<Channel, ClientAuth>>;
type Results = ResultsClient<InterceptedService<Channel, ClientAuth>>;

/// The refusals seen: (call, caller, expected status, status it got).
#[derive(Default)]
struct Table {
    rows: Vec<(String, String, Code, Option<Code>)>,
}

impl Table {
    /// Checks that `outcome` is refused with `expected` and notes it.
    fn refused<T>(
        &mut self,
        call: &str,
        caller: &str,
        expected: Code,
        outcome: Result<T, tonic::Status>,
    ) {
        let got = outcome.err().map(|s| s.code());
        self.rows.push((call.into(), caller.into(), expected, got));
    }

    /// Notes a call that must be answered but change nothing (`held` says it did not).
    fn ignored(&mut self, call: &str, caller: &str, held: bool) {
        let got = if held { Some(Code::Ok) } else { None };
        self.rows.push((call.into(), caller.into(), Code::Ok, got));
    }
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn clients(url: &str, token: Option<&str>) -> (Experiments, Workers, Results) {
    let auth = ClientAuth::new(token).unwrap();
    let channel = channel(url).await;
    (
        ExperimentsClient::with_interceptor(channel.clone(), auth.clone()),
        WorkersClient::with_interceptor(channel.clone(), auth.clone()),
        ResultsClient::with_interceptor(channel, auth),
    )
}

fn submit_request() -> SubmitRequest {
    SubmitRequest {
        spec_toml: std::fs::read_to_string(SPEC).unwrap(),
        overrides: TINY.iter().map(|s| s.to_string()).collect(),
        source_name: "spec.toml".into(),
    }
}

/// Calls every RPC as `caller` and expects each of the Experiments service to be refused
/// with `user_code` and each of the Workers and Results services with `worker_code` (`Ok`: the caller may
/// make those calls, and they are not made).
async fn every_call(
    table: &mut Table,
    url: &str,
    token: Option<&str>,
    caller: &str,
    user_code: Code,
    worker_code: Code,
) {
    let (mut experiments, mut workers, mut results) = clients(url, token).await;
    let id = || "exp-1".to_string();
    // The calls the caller may make are not made: they would change what follows.
    if user_code != Code::Ok {
        table.refused(
            "Submit",
            caller,
            user_code,
            experiments.submit(submit_request()).await,
        );
        table.refused(
            "Status",
            caller,
            user_code,
            experiments.status(StatusRequest { id: id() }).await,
        );
        table.refused(
            "ListWorkers",
            caller,
            user_code,
            experiments.list_workers(ListWorkersRequest {}).await,
        );
        table.refused(
            "Cancel",
            caller,
            user_code,
            experiments.cancel(CancelRequest { id: id() }).await,
        );
        table.refused(
            "Resume",
            caller,
            user_code,
            experiments.resume(ResumeRequest { id: id() }).await,
        );
    }
    if worker_code == Code::Ok {
        return;
    }
    let register = common::registration("intruder");
    table.refused(
        "Register",
        caller,
        worker_code,
        workers.register(register).await,
    );
    table.refused(
        "Heartbeat",
        caller,
        worker_code,
        workers.heartbeat(HeartbeatRequest { worker_id: 1 }).await,
    );
    let lease = LeaseRequest {
        worker_id: 1,
        max_chunks: 1,
        ..LeaseRequest::default()
    };
    table.refused("Lease", caller, worker_code, workers.lease(lease).await);
    let complete = CompleteRequest {
        worker_id: 1,
        results: vec![ChunkResult::default()],
        next: None,
    };
    table.refused(
        "Complete",
        caller,
        worker_code,
        results.complete(complete).await,
    );
    table.refused(
        "Deregister",
        caller,
        worker_code,
        workers.deregister(DeregisterRequest { worker_id: 1 }).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_whoever_may_not_call_it_and_what_it_must_not_accept() {
    let files = tempfile::tempdir().unwrap();
    let tokens = files.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("worker {WORKER_TOKEN}\nuser {USER_TOKEN}\n"),
    )
    .unwrap();
    let cluster = Cluster::start(&[
        "--tokens",
        tokens.to_str().unwrap(),
        "--max-spec-bytes",
        "65536",
        "--max-worker-request-bytes",
        "65536",
    ]);
    let url = cluster.url.clone();
    let mut table = Table::default();

    // Who may not call at all.
    let unauthenticated = Code::Unauthenticated;
    every_call(
        &mut table,
        &url,
        None,
        "no token",
        unauthenticated,
        unauthenticated,
    )
    .await;
    every_call(
        &mut table,
        &url,
        Some(NOBODYS_TOKEN),
        "a token nobody was given",
        unauthenticated,
        unauthenticated,
    )
    .await;
    every_call(
        &mut table,
        &url,
        Some(WORKER_TOKEN),
        "a worker's token",
        Code::PermissionDenied,
        Code::Ok,
    )
    .await;
    every_call(
        &mut table,
        &url,
        Some(USER_TOKEN),
        "a user's token",
        Code::Ok,
        Code::PermissionDenied,
    )
    .await;
    // (The Code::Ok rows above are the calls the role may make: they are not part of the
    // refusals and are dropped below; what such callers must not do comes next.)
    table
        .rows
        .retain(|(_, _, expected, _)| *expected != Code::Ok);

    // Nothing changed: no experiment, no worker.
    let (mut user, _, _) = clients(&url, Some(USER_TOKEN)).await;
    let (_, mut worker, mut results) = clients(&url, Some(WORKER_TOKEN)).await;
    let listed = user
        .status(StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.experiments.is_empty(), "{listed:?}");
    let registered = user
        .list_workers(ListWorkersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(registered.workers.is_empty(), "{registered:?}");

    // What a user may not ask.
    let oversized = SubmitRequest {
        spec_toml: format!(
            "{}\n# {}\n",
            submit_request().spec_toml,
            "x".repeat(100_000)
        ),
        ..submit_request()
    };
    // (OUT_OF_RANGE: tonic's status for a message over the service's decoding limit.)
    table.refused(
        "Submit",
        "a user: a 100 KB spec (limit 64 KiB)",
        Code::OutOfRange,
        user.submit(oversized).await,
    );
    let unknown_key = SubmitRequest {
        overrides: vec!["meta.no_such_field=1".into()],
        ..submit_request()
    };
    table.refused(
        "Submit",
        "a user: an unknown field",
        Code::InvalidArgument,
        user.submit(unknown_key).await,
    );
    for (call, outcome) in [
        (
            "Status",
            user.status(StatusRequest {
                id: "exp-999".into(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "Cancel",
            user.cancel(CancelRequest {
                id: "exp-999".into(),
            })
            .await
            .map(|_| ()),
        ),
        (
            "Resume",
            user.resume(ResumeRequest {
                id: "exp-999".into(),
            })
            .await
            .map(|_| ()),
        ),
    ] {
        table.refused(
            call,
            "a user: an unknown experiment id",
            Code::NotFound,
            outcome,
        );
    }
    let id = user.submit(submit_request()).await.unwrap().into_inner().id;
    table.refused(
        "Resume",
        "a user: an experiment that is not paused",
        Code::FailedPrecondition,
        user.resume(ResumeRequest { id: id.clone() }).await,
    );

    // What a worker may not do: send the model's size of anything but results, act for an id
    // it was not given, deliver what it was not leased, deliver wrong values.
    let oversized = outerloop_proto::v1::RegisterRequest {
        name: "x".repeat(100_000),
        ..common::registration("hostile")
    };
    table.refused(
        "Register",
        "a worker: a 100 KB registration (limit 64 KiB)",
        Code::OutOfRange,
        worker.register(oversized).await,
    );
    let me = worker
        .register(common::registration("hostile"))
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let forged = me ^ 1;
    let known = worker
        .heartbeat(HeartbeatRequest { worker_id: forged })
        .await
        .unwrap()
        .into_inner()
        .known;
    table.ignored("Heartbeat", "a worker: for an id it was not given", !known);
    let lease = worker
        .lease(LeaseRequest {
            worker_id: forged,
            max_chunks: 1,
            wait_ms: 100,
            ..LeaseRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    table.ignored(
        "Lease",
        "a worker: for an id it was not given",
        lease.unknown_worker && lease.chunks.is_empty(),
    );
    let chunk = common::lease_one(&mut worker, me).await;
    let tasks = chunk.tasks.len();
    let answer = |chunk_id: u64, losses: Vec<f32>| ChunkResult {
        chunk_id,
        loss_before: vec![1.0; losses.len()],
        loss_after: losses,
        ..ChunkResult::default()
    };
    let send = |worker_id: u64, result: ChunkResult| CompleteRequest {
        worker_id,
        results: vec![result],
        next: None,
    };
    let accepted = |reply: Result<
        tonic::Response<outerloop_proto::v1::CompleteReply>,
        tonic::Status,
    >| { reply.unwrap().into_inner().accepted };
    // Results may be as large as --max-result-bytes (1 GiB here): 100 KB is decoded, and
    // checked like any result.
    let stray = results
        .complete(send(
            me,
            ChunkResult {
                grad_sum: vec![0; 100_000].into(),
                ..answer(chunk.chunk_id + 1000, vec![0.5; tasks])
            },
        ))
        .await;
    table.ignored(
        "Complete",
        "a worker: 100 KB of results for a chunk id never leased",
        accepted(stray) == 0,
    );
    let not_its = results
        .complete(send(forged, answer(chunk.chunk_id, vec![0.5; tasks])))
        .await;
    table.ignored(
        "Complete",
        "a worker: another id's lease",
        accepted(not_its) == 0,
    );
    let short = results
        .complete(send(me, answer(chunk.chunk_id, vec![0.5; tasks - 1])))
        .await;
    table.refused(
        "Complete",
        "a worker: a result of the wrong size",
        Code::InvalidArgument,
        short,
    );
    let mut nan = vec![0.5; tasks];
    nan[0] = f32::NAN;
    let again = common::lease_one(&mut worker, me).await;
    let poisoned = results
        .complete(send(me, answer(again.chunk_id, nan)))
        .await;
    table.refused(
        "Complete",
        "a worker: a NaN",
        Code::InvalidArgument,
        poisoned,
    );
    // A correct result from a worker the chunk was leased to counts (it passes the check like
    // anyone's); sent again, it is a replay, and nothing counts twice.
    let correct = results
        .complete(send(me, answer(again.chunk_id, vec![0.5; tasks])))
        .await;
    assert_eq!(accepted(correct), 1);
    let replayed = results
        .complete(send(me, answer(again.chunk_id, vec![0.5; tasks])))
        .await;
    table.ignored(
        "Complete",
        "a worker: a replayed result",
        accepted(replayed) == 0,
    );

    // The experiment still runs to its end with an honest worker, the hostile one ignored.
    let mut cluster = cluster;
    cluster.cli_args = vec!["--token-file".into(), {
        let path = files.path().join("user.token");
        std::fs::write(&path, USER_TOKEN).unwrap();
        path.to_str().unwrap().to_string()
    }];
    let worker_token = files.path().join("worker.token");
    std::fs::write(&worker_token, WORKER_TOKEN).unwrap();
    cluster.add_worker_with(&["--token-file", worker_token.to_str().unwrap()]);
    let finished = tokio::task::spawn_blocking(move || {
        cluster.wait_finished(&id, Duration::from_secs(300));
        cluster
    })
    .await
    .unwrap();
    drop(finished);

    let mut out =
        String::from("| call | caller, and what it sends | expected | got |\n|---|---|---|---|\n");
    let mut wrong = Vec::new();
    for (call, caller, expected, got) in &table.rows {
        let got_text = got.map_or("accepted".to_string(), |c| format!("{c:?}"));
        let expected_text = if *expected == Code::Ok {
            "ignored".to_string()
        } else {
            format!("{expected:?}")
        };
        let got_text = if *expected == Code::Ok && *got == Some(Code::Ok) {
            "ignored".to_string()
        } else {
            got_text
        };
        out += &format!("| {call} | {caller} | {expected_text} | {got_text} |\n");
        if got_text != expected_text {
            wrong.push(format!(
                "{call} by {caller}: expected {expected_text}, got {got_text}"
            ));
        }
    }
    eprintln!("{out}");
    assert!(wrong.is_empty(), "refused wrongly:\n{}", wrong.join("\n"));
    common::report::record(serde_json::json!({
        "check": "hostile calls refused",
        "calls": table.rows.len(),
        "refused_as_expected": table.rows.len() - wrong.len(),
    }));
}

//! Client calls to the coordinator's `Experiments` service, with errors a user can act on.

use anyhow::anyhow;
use outerloop_proto::auth::ClientAuth;
use outerloop_proto::tls::ClientTls;
use outerloop_proto::v1::experiments_client::ExperimentsClient;
use outerloop_proto::v1::{
    CancelRequest, ExperimentStatus, ListWorkersRequest, ResumeRequest, StatusRequest,
    SubmitRequest, WorkerSummary,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A connection to a coordinator.
pub struct Coordinator {
    client: ExperimentsClient<InterceptedService<Channel, ClientAuth>>,
    /// What to suggest when a call fails before reaching the coordinator.
    hint: Option<&'static str>,
}

/// The coordinator's own message: it already says what was wrong and where. A call that
/// never reached it (the connection failed, a TLS handshake was refused) says why, from the
/// chain of causes.
fn refused(status: tonic::Status, hint: Option<&str>) -> anyhow::Error {
    let mut message = status.message().to_string();
    let mut cause = std::error::Error::source(&status);
    let reached = cause.is_none();
    while let Some(error) = cause {
        message.push_str(&format!(": {error}"));
        cause = error.source();
    }
    match hint.filter(|_| !reached) {
        Some(hint) => anyhow!("{message} ({hint})"),
        None => anyhow!("{message}"),
    }
}

impl Coordinator {
    /// Connects to `url`; every call carries `token` when given (a user token, for a
    /// coordinator that requires one).
    pub async fn connect(
        url: &str,
        token: Option<&str>,
        tls: &ClientTls,
    ) -> anyhow::Result<Coordinator> {
        let auth = ClientAuth::new(token).map_err(anyhow::Error::msg)?;
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| {
                anyhow!("`{url}` is not a coordinator URL like http://127.0.0.1:7070: {e}")
            })?
            .connect_timeout(std::time::Duration::from_secs(5));
        let endpoint = tls.endpoint(endpoint, url).map_err(anyhow::Error::msg)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow!("cannot reach the coordinator at {url} ({e}); is `outerloop coordinator` running there?"))?;
        // Without a certificate of its own, a client is let through the TLS handshake and
        // then cut off by a coordinator that requires one: say so when that happens.
        let hint = (url.starts_with("https://") && tls.cert.is_none()).then_some(
            "a coordinator that requires client certificates closes the connection of a client without --tls-cert and --tls-key",
        );
        Ok(Coordinator {
            client: ExperimentsClient::with_interceptor(channel, auth),
            hint,
        })
    }

    pub async fn submit(
        &mut self,
        spec_toml: &str,
        source_name: &str,
        overrides: Vec<String>,
    ) -> anyhow::Result<String> {
        let request = SubmitRequest {
            spec_toml: spec_toml.to_string(),
            overrides,
            source_name: source_name.to_string(),
        };
        let reply = self
            .client
            .submit(request)
            .await
            .map_err(|s| refused(s, self.hint))?
            .into_inner();
        // On stderr, so that scripts reading the id from stdout still get only the id.
        for note in &reply.notes {
            eprintln!("note: {note}");
        }
        Ok(reply.id)
    }

    /// One experiment (`id` non-empty) or all of them.
    pub async fn status(&mut self, id: &str) -> anyhow::Result<Vec<ExperimentStatus>> {
        self.try_status(id).await.map_err(|s| refused(s, self.hint))
    }

    /// `status`, keeping the gRPC status so callers can tell "unknown id" from "unreachable".
    pub async fn try_status(&mut self, id: &str) -> Result<Vec<ExperimentStatus>, tonic::Status> {
        let request = StatusRequest { id: id.to_string() };
        Ok(self.client.status(request).await?.into_inner().experiments)
    }

    pub async fn workers(&mut self) -> anyhow::Result<Vec<WorkerSummary>> {
        Ok(self
            .client
            .list_workers(ListWorkersRequest {})
            .await
            .map_err(|s| refused(s, self.hint))?
            .into_inner()
            .workers)
    }

    pub async fn cancel(&mut self, id: &str) -> anyhow::Result<String> {
        let request = CancelRequest { id: id.to_string() };
        Ok(self
            .client
            .cancel(request)
            .await
            .map_err(|s| refused(s, self.hint))?
            .into_inner()
            .state)
    }

    pub async fn resume(&mut self, id: &str) -> anyhow::Result<String> {
        let request = ResumeRequest { id: id.to_string() };
        Ok(self
            .client
            .resume(request)
            .await
            .map_err(|s| refused(s, self.hint))?
            .into_inner()
            .state)
    }
}

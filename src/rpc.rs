//! Client calls to the coordinator's `Experiments` service, with errors a user can act on.

use anyhow::anyhow;
use outerloop_proto::auth::ClientAuth;
use outerloop_proto::v1::experiments_client::ExperimentsClient;
use outerloop_proto::v1::{
    CancelRequest, ExperimentStatus, ListWorkersRequest, StatusRequest, SubmitRequest,
    WorkerSummary,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A connection to a coordinator.
pub struct Coordinator {
    client: ExperimentsClient<InterceptedService<Channel, ClientAuth>>,
}

/// The coordinator's own message: it already says what was wrong and where.
fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow!("{}", status.message())
}

impl Coordinator {
    /// Connects to `url`; every call carries `token` when given (a user token, for a
    /// coordinator that requires one).
    pub async fn connect(url: &str, token: Option<&str>) -> anyhow::Result<Coordinator> {
        let auth = ClientAuth::new(token).map_err(anyhow::Error::msg)?;
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| {
                anyhow!("`{url}` is not a coordinator URL like http://127.0.0.1:7070: {e}")
            })?
            .connect_timeout(std::time::Duration::from_secs(5));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow!("cannot reach the coordinator at {url} ({e}); is `outerloop coordinator` running there?"))?;
        Ok(Coordinator {
            client: ExperimentsClient::with_interceptor(channel, auth),
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
        Ok(self
            .client
            .submit(request)
            .await
            .map_err(refused)?
            .into_inner()
            .id)
    }

    /// One experiment (`id` non-empty) or all of them.
    pub async fn status(&mut self, id: &str) -> anyhow::Result<Vec<ExperimentStatus>> {
        self.try_status(id).await.map_err(refused)
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
            .map_err(refused)?
            .into_inner()
            .workers)
    }

    pub async fn cancel(&mut self, id: &str) -> anyhow::Result<String> {
        let request = CancelRequest { id: id.to_string() };
        Ok(self
            .client
            .cancel(request)
            .await
            .map_err(refused)?
            .into_inner()
            .state)
    }
}

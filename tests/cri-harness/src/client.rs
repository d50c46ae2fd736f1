//! A blocking CRI `RuntimeService` client over a unix socket, as the kubelet
//! talks to containerd: gRPC (HTTP/2) with the `runtime.v1` messages of
//! `proto/api.proto`.
//!
//! Each client owns a current-thread tokio runtime, so tests stay plain
//! synchronous code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::v1::runtime_service_client::RuntimeServiceClient;
use crate::v1::{
    ListPodSandboxRequest, PodSandbox, PodSandboxConfig, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
    VersionRequest, VersionResponse,
};

/// A failed call: the gRPC status (code and the runtime's message).
pub type CallError = tonic::Status;

/// A connection to one CRI runtime socket.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    inner: RuntimeServiceClient<Channel>,
    socket: PathBuf,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient")
            .field("socket", &self.socket)
            .finish()
    }
}

impl CriClient {
    /// Connects to the runtime's socket; every call is bounded by `timeout`
    /// (a hung runtime fails the test rather than wedging it).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path = socket.to_owned();
        // The URI is a placeholder: the connector below dials the socket.
        let endpoint = Endpoint::from_static("http://[::1]:50051")
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = rt
            .block_on(
                endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                })),
            )
            .map_err(|e| format!("connect {}: {e:?}", socket.display()))?;
        Ok(CriClient {
            rt,
            // containerd's CRI replies can be large (verbose status).
            inner: RuntimeServiceClient::new(channel).max_decoding_message_size(16 << 20),
            socket: socket.to_owned(),
        })
    }

    /// `Version`: the runtime's name and versions.
    pub fn version(&mut self) -> Result<VersionResponse, CallError> {
        let req = VersionRequest {
            version: "v1".into(),
        };
        Ok(self.rt.block_on(self.inner.version(req))?.into_inner())
    }

    /// `RunPodSandbox`: creates and starts a pod sandbox (the runtime calls
    /// the CNI ADD); returns its id.
    pub fn run_pod_sandbox(&mut self, config: PodSandboxConfig) -> Result<String, CallError> {
        let req = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        Ok(self
            .rt
            .block_on(self.inner.run_pod_sandbox(req))?
            .into_inner()
            .pod_sandbox_id)
    }

    /// `StopPodSandbox`: stops the sandbox (the runtime calls the CNI DEL).
    pub fn stop_pod_sandbox(&mut self, id: &str) -> Result<(), CallError> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt.block_on(self.inner.stop_pod_sandbox(req))?;
        Ok(())
    }

    /// `RemovePodSandbox`: removes a stopped sandbox.
    pub fn remove_pod_sandbox(&mut self, id: &str) -> Result<(), CallError> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.rt.block_on(self.inner.remove_pod_sandbox(req))?;
        Ok(())
    }

    /// `PodSandboxStatus` with `verbose` set: the runtime's extra `info`
    /// (containerd: a JSON document under the key `info`, with the sandbox's
    /// pid and its runtime spec).
    pub fn pod_sandbox_status(&mut self, id: &str) -> Result<PodSandboxStatusResponse, CallError> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        Ok(self
            .rt
            .block_on(self.inner.pod_sandbox_status(req))?
            .into_inner())
    }

    /// `ListPodSandbox` without a filter: every sandbox, ready or not.
    pub fn list_pod_sandbox(&mut self) -> Result<Vec<PodSandbox>, CallError> {
        let req = ListPodSandboxRequest { filter: None };
        Ok(self
            .rt
            .block_on(self.inner.list_pod_sandbox(req))?
            .into_inner()
            .items)
    }
}

/// The pieces of containerd's verbose sandbox `info` the tests use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    /// The sandbox (pause) process, in the pod's network namespace.
    pub pid: u32,
    /// The network namespace path containerd gave the CNI plugin.
    pub netns_path: String,
}

impl SandboxInfo {
    /// Parses containerd's `info["info"]` JSON; `None` when absent or not
    /// containerd's shape.
    pub fn from_status(info: &HashMap<String, String>) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
        // The netns path is the runtime spec's network namespace.
        let netns_path = v["runtimeSpec"]["linux"]["namespaces"]
            .as_array()?
            .iter()
            .find(|n| n["type"] == "network")?["path"]
            .as_str()?
            .to_owned();
        Some(SandboxInfo {
            pid: u32::try_from(v["pid"].as_u64()?).ok()?,
            netns_path,
        })
    }
}

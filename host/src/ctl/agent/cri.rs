//! The CRI client: lists the runtime's pod sandboxes over its socket
//! (gRPC on a unix socket, `runtime.v1.RuntimeService`), with the message
//! subset of `proto/cri.proto`.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

#[allow(missing_docs, clippy::all, clippy::pedantic)]
mod pb {
    tonic::include_proto!("runtime.v1");
}

use pb::runtime_service_client::RuntimeServiceClient;

/// Largest answer accepted: the kubelet's own limit (16 MiB); a node with
/// many sandboxes and large annotations needs more than tonic's 4 MiB
/// default, and an answer cut short must fail, not read as fewer pods.
const MAX_MESSAGE: usize = 16 << 20;

/// The runtime's sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxList {
    /// `<runtime name> <runtime version>`, from `Version`.
    pub runtime: String,
    /// Every sandbox id, whatever its state (a NOTREADY sandbox still
    /// exists: its network is the runtime's to tear down with a DEL).
    pub ids: HashSet<String>,
}

/// Lists every pod sandbox of the runtime at `socket`, within `timeout`.
/// Any failure is an error: an empty list is only ever the runtime's
/// answer.
pub fn list_sandboxes(socket: &Path, timeout: Duration) -> Result<SandboxList, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let what = format!("CRI socket {}", socket.display());
    rt.block_on(async {
        let ep = tonic::transport::Endpoint::from_shared(format!("unix://{}", socket.display()))
            .map_err(|e| format!("{what}: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = tokio::time::timeout(timeout, ep.connect())
            .await
            .map_err(|_| format!("{what}: connect timed out"))?
            .map_err(|e| format!("{what}: {e}"))?;
        let mut client = RuntimeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
        let v = client
            .version(pb::VersionRequest {
                version: "v1".into(),
            })
            .await
            .map_err(|e| format!("{what}: Version: {}", e.message()))?
            .into_inner();
        let items = client
            .list_pod_sandbox(pb::ListPodSandboxRequest { filter: None })
            .await
            .map_err(|e| format!("{what}: ListPodSandbox: {}", e.message()))?
            .into_inner()
            .items;
        let mut ids = HashSet::with_capacity(items.len());
        for s in items {
            if s.id.is_empty() {
                return Err(format!(
                    "{what}: ListPodSandbox returned a sandbox without an id"
                ));
            }
            ids.insert(s.id);
        }
        Ok(SandboxList {
            runtime: format!("{} {}", v.runtime_name, v.runtime_version),
            ids,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_socket_is_an_error_not_an_empty_list() {
        let d = tempfile::tempdir().unwrap();
        let e = list_sandboxes(&d.path().join("none.sock"), Duration::from_secs(2)).unwrap_err();
        assert!(e.contains("none.sock"), "{e}");
    }

    #[test]
    fn a_socket_that_does_not_speak_grpc_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("mute.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Accepts and closes every connection at once.
        std::thread::spawn(move || {
            for c in l.incoming() {
                drop(c);
            }
        });
        assert!(list_sandboxes(&path, Duration::from_secs(2)).is_err());
    }
}

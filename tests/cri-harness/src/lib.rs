//! Test support for tenet's end-to-end tests through the Kubernetes CRI
//! (the kubelet's path to a runtime): [`client::CriClient`], a minimal
//! `runtime.v1` client, and [`containerd::Containerd`], the real containerd
//! started private to a test (its own network and mount namespaces,
//! directories and sandbox image), with the runtime faults the tests inject.

pub mod client;
pub mod containerd;

/// The generated `runtime.v1` messages and client (`proto/api.proto`, a
/// subset of k8s.io/cri-api with the upstream field numbers).
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("runtime.v1");
}

pub use client::{CriClient, SandboxInfo};
pub use containerd::{Containerd, NodeNetns, Options, PAUSE_IMAGE};

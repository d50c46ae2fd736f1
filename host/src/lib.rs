//! tenet: a CNI plugin for multi-tenant Kubernetes networking.
//!
//! The `tenet` binary parses a CNI invocation ([`cni`]), runs the policy
//! pipeline ([`policy`]) that turns the request into a [`plan::Plan`],
//! validates it on the host side ([`plan::validate`], which parses the
//! plan's addresses once into a typed [`plan::ValidPlan`]), and answers in
//! the runtime's CNI version.
//! [`apply`] applies the typed plan through one trait per backend: [`netns`] (pod
//! namespaces, rtnetlink), [`ipam`] (address stores: the node-local files
//! or the cluster store in etcd) and [`sdn`] (tenant networks: the Linux
//! bridge + nftables backend, or MidoNet over its REST API with topology
//! records in etcd). [`etcd`] is the one etcd connection both share;
//! [`kube`] reads pod and namespace labels from the Kubernetes API;
//! [`commands`] runs each CNI verb; every CNI error code is in
//! [`cni::codes`]. `tenetctl` ([`ctl`], with the `compiler` feature) drives
//! the same library for operators.
//!
//! Each backend folder keeps its trait, errors and shared types in
//! `mod.rs` and its implementations beside it (`sdn/linux/`,
//! `sdn/midonet/`, `ipam/local.rs`, `ipam/etcd/`, a recording fake);
//! pure logic sits in its own module, apart from the I/O that drives it
//! (`ipam/pool.rs`, `ipam/etcd/plan.rs`, `apply/layout.rs`,
//! `sdn/linux/guard.rs`). The README's folder table maps the tree.

pub mod apply;
pub mod cni;
pub mod commands;
pub mod config;
#[cfg(feature = "compiler")]
pub mod ctl;
pub mod etcd;
pub mod ipam;
pub mod kube;
pub mod logging;
pub mod metrics;
pub mod netns;
pub mod plan;
pub mod policy;
pub mod sdn;
pub mod serve;

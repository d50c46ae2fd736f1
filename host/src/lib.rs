//! tenet: a CNI plugin for multi-tenant Kubernetes networking.
//!
//! The `tenet` binary parses a CNI invocation ([`cni`]), runs the policy
//! pipeline ([`policy`]) that turns the request into a [`plan::Plan`],
//! validates it on the host side ([`plan::validate`]), and answers in the
//! runtime's CNI version. `tenetctl` drives the same library for operators.
//! The backends that apply a plan are one trait each: [`netns`] (pod
//! namespaces, rtnetlink) and [`sdn`] (tenant networks: Linux bridge and
//! nftables).

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

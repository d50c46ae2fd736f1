//! Every CNI error code tenet can produce, in one table, each with exactly one
//! meaning. Modules pick codes through these named constants only (a test in
//! this file scans `host/src` for numeric code literals elsewhere), and the
//! README's error table is kept equal to [`CODES`] by another test.
//!
//! Codes 1–99 are the CNI spec's (SPEC §5 "Error"; 8 is libcni's
//! `ErrInvalidNetNS`, which the reference `skel` answers); 100 and up are
//! tenet's own, in blocks: 100–119 policy, 120–129 tenet and the kernel,
//! 130–139 the address store, 140–149 the apply engine, 150–159 the SDN
//! backends (Linux and MidoNet).
//!
//! Renumbered in issue 16 (each had two meanings before):
//! 120 → 123 (netlink), 120 → 124 (route conflict), 120 → 138 (address
//! store state), 130 → 150 (nftables), 131 → 151, 132 → 152, 133 → 153,
//! 134 → 154, 135 → 155, 136 → 156 (SDN and MidoNet); failures injected by
//! test fakes moved from 120/130 to 149 with the other injected failures.

/// One code of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The number in the CNI error's `code`.
    pub code: u32,
    /// The constant's name in this module.
    pub name: &'static str,
    /// What it means, as the README states it.
    pub meaning: &'static str,
}

macro_rules! codes {
    ($($(#[doc = $doc:literal])* $name:ident = $code:literal, $meaning:literal;)*) => {
        $(
            $(#[doc = $doc])*
            pub const $name: u32 = $code;
        )*
        /// The table: every code tenet produces, in increasing order.
        pub const CODES: &[Code] = &[
            $(Code { code: $code, name: stringify!($name), meaning: $meaning },)*
        ];
    };
}

codes! {
    /// Spec: incompatible CNI version.
    INCOMPATIBLE_VERSION = 1, "incompatible CNI version (also CHECK < 0.4.0, STATUS/GC < 1.1.0)";
    /// Spec: unsupported field in the network configuration (msg names key and value).
    UNSUPPORTED_FIELD = 2, "unsupported field in the network config (e.g. `ipam`: tenet allocates itself)";
    /// Spec: container unknown or does not exist.
    UNKNOWN_CONTAINER = 3, "container unknown (CHECK with no record, or whose ADD did not complete)";
    /// Spec: invalid or missing CNI_* environment variables (msg names them).
    INVALID_ENV = 4, "invalid or missing CNI_* environment (names the variables; also a `CNI_NETNS` that is not a network namespace)";
    /// Spec: I/O failure (reading stdin).
    IO_FAILURE = 5, "I/O failure reading stdin";
    /// Spec: failed to decode content (stdin is not valid JSON).
    DECODE_FAILURE = 6, "stdin (or a prevResult) is not valid JSON";
    /// Spec: invalid network configuration (or tenet configuration).
    INVALID_CONFIG = 7, "invalid network config or tenet configuration (names the file and field)";
    /// libcni `ErrInvalidNetNS`: `CNI_NETNS` is the plugin's own namespace.
    INVALID_NETNS = 8, "`CNI_NETNS` is the node's own network namespace";
    /// Spec: try again later, a transient condition.
    TRY_AGAIN_LATER = 11, "try again later: a policy artifact, the address store (etcd), MidoNet or its topology records unreachable or busy, a lock not acquired in time";
    /// Spec (STATUS): the plugin cannot serve ADD.
    NOT_AVAILABLE = 50, "plugin not available: STATUS not ready (pipeline, artifacts, address store or nftables unusable)";
    /// A policy stage denied the pod.
    POLICY_DENIED = 100, "a policy stage denied the pod";
    /// A policy stage trapped.
    POLICY_TRAP = 101, "a policy stage trapped";
    /// A policy stage ran out of fuel, memory or time.
    POLICY_BUDGET_EXCEEDED = 102, "a policy stage exceeded its fuel (`host.log` included), memory or wall-clock budget, or handed the host more data than it copies";
    /// A policy module was refused (digest differs from its pin, forbidden imports).
    POLICY_MODULE_REFUSED = 103, "a module was refused (digest differs from its pin, an artifact recording another module, forbidden imports or imports that differ from the WIT); never skipped by `ignore`";
    /// A plan broke a host invariant.
    POLICY_INVALID_PLAN = 104, "a stage (or the final plan) broke a host invariant: a malformed or oversize plan, an address outside `[addresses]` or in a special range, a host-link address chosen by the plan, or (at ADD, step `node-check`) a range overlapping the node's own addresses or routes";
    /// A stage refused its settings.
    POLICY_INVALID_SETTINGS = 105, "a stage refused its settings";
    /// A stage found its input unusable, or the request exceeded input caps.
    POLICY_INVALID_INPUT = 106, "a stage found its input unusable, or the request exceeded input caps";
    /// A stage reported an internal error.
    POLICY_INTERNAL = 107, "a stage reported an internal error";
    /// ADD with `TENET_DRY_RUN`: planned, not applied (the plan is in details).
    DRY_RUN = 110, "dry run (`TENET_DRY_RUN=1`): ADD planned, not applied; the plan is in `details`";
    /// An internal error in tenet itself (a bug).
    INTERNAL = 120, "internal error in tenet itself";
    /// A pod sysctl could not be written.
    SYSCTL = 121, "a pod sysctl could not be written";
    /// Entering the pod's network namespace failed (setns, threads).
    NAMESPACE = 122, "entering the pod's network namespace failed";
    /// The kernel refused a netlink request, or a link tenet made is gone.
    NETLINK = 123, "the kernel refused a netlink request (named in `details`), or a link tenet made is gone";
    /// A route tenet is to add exists through another interface or next hop.
    ROUTE_CONFLICT = 124, "a route to add conflicts with an existing route (another attachment's); give one of them a metric";
    /// The tenant's subnet has no free address (also: cooling down).
    ADDRESSES_EXHAUSTED = 130, "address store: no free address in the tenant's subnet (including addresses cooling down)";
    /// The pool has no free subnet left for a new tenant.
    SUBNETS_EXHAUSTED = 131, "address store: no subnet left in the pool for a new tenant";
    /// A requested static address belongs to another attachment.
    STATIC_TAKEN = 132, "address store: the static address is taken by another attachment";
    /// A requested static address is outside the tenant's subnet or pool, or reserved.
    STATIC_OUT_OF_RANGE = 133, "address store: the static address is outside the tenant's subnet or the pool, or reserved or excluded";
    /// The address request itself is malformed.
    INVALID_REQUEST = 134, "address store: malformed request (no pool, bad CIDR, bad name, …)";
    /// The attachment already holds a different reservation.
    ATTACHMENT_CONFLICT = 135, "address store: the attachment already holds a different reservation";
    /// A claim to confirm no longer exists (released, reclaimed, or its lease lost).
    CLAIM_LOST = 136, "address store: the claim is gone (released, reclaimed as stale, or its etcd lease lost)";
    /// A pool was redefined while in use, or overlaps another pool.
    POOL_CONFLICT = 137, "address store: a pool was redefined while in use, or overlaps another pool";
    /// The store's state is unreadable or corrupt, or its I/O failed.
    STORE_FAILURE = 138, "address store: its state is unreadable or corrupt, its I/O failed, or etcd refused a request (e.g. authentication)";
    /// The interface exists in the pod, or the attachment is already ADDed.
    ALREADY_ATTACHED = 140, "the interface already exists in the pod, or the attachment is already ADDed";
    /// CHECK found a resource missing or different from what ADD made.
    CHECK_FAILED = 141, "CHECK: a resource is missing or differs from what ADD made (named in `details`)";
    /// The attachment records could not be read or written.
    RECORDS = 142, "the attachment records could not be read or written";
    /// A failure injected by a failpoint or a test fake (tests only).
    INJECTED = 149, "a failure injected by `TENET_FAILPOINT` or a test fake (test builds only; also inside `ensure-tenant`)";
    /// `nft` refused a script (Linux SDN).
    NFT_FAILED = 150, "Linux SDN: nftables refused a rule set (its message in `details`)";
    /// An SDN resource that should exist does not (attach before ensure).
    SDN_MISSING = 151, "SDN: a resource that should exist is missing (a tenant's bridge or router, a port)";
    /// A name or address the SDN needs is taken by something else.
    SDN_CONFLICT = 152, "SDN: a name or address tenet needs is taken by something that is not tenet's";
    /// MidoNet rejected the request (4xx other than overload).
    MIDONET_REJECTED = 153, "MidoNet rejected a request (4xx; its status and message in `details`)";
    /// MidoNet failed (5xx other than 503) or answered something unreadable.
    MIDONET_SERVER_ERROR = 154, "MidoNet failed (5xx other than 503) or its answer could not be read";
    /// A MidoNet topology record (etcd) does not parse.
    TOPOLOGY_CORRUPT = 155, "MidoNet topology record in etcd is corrupt (its key in `details`)";
    /// No link network left for a new tenant router.
    LINK_POOL_EXHAUSTED = 156, "MidoNet: no link network left for a new tenant router";
}

/// The table entry of `code`, if it is one.
pub fn lookup(code: u32) -> Option<&'static Code> {
    CODES.iter().find(|c| c.code == code)
}

#[cfg(test)]
mod tests;

//! What the Ironpool operator and the network agents both run besides the API types
//! (those are `ironpool-crds`): the process runtime they share, in one small crate so that
//! neither depends on the other.
//!
//! - [`leader`]: leader election on a `coordination.k8s.io/v1` Lease with fencing, the
//!   semantics of client-go's `leaderelection`. The operator elects one active replica
//!   through the Lease `ironpool-operator`; each agent contends for the Lease
//!   `ironpool-subnet-<name>` of every Subnet its node may serve. Terms are fenced: every
//!   write is an update carrying the resourceVersion that was read (a concurrent writer
//!   gets 409 and re-reads), expiry is judged by local monotonic time since the record
//!   last changed (no trust in clocks across nodes), a leader that cannot renew gives up
//!   before any standby may take over, and each term carries the Lease's
//!   `leaseTransitions` as its number. No published crate fits: the ones for kube are
//!   timestamp-based without fencing or target an older kube.
//! - [`http`]: the operational HTTP server, `/metrics` (Prometheus text from a
//!   `prometheus-client` registry), `/healthz` (the process runs) and `/readyz` (the caller
//!   says ready, e.g. once its caches have synced).
//!
//! Both are tested here: the Lease rules as unit tests, election itself against a real
//! kube-apiserver (`tests/leader.rs`, the e2e harness's control plane).

pub mod http;
pub mod leader;

/// The API of `K` in `namespace`, or in every namespace when there is none (what a process
/// told to watch one namespace, or all, reads and watches through).
pub fn scoped_api<K>(client: &kube::Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    }
}

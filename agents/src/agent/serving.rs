//! What the DHCP server serves right now: the Subnets whose Lease this agent holds, with
//! reservations computed from the stores. Elections call [`Serving::hold`] and
//! [`Serving::drop_subnet`], which take effect on the next packet; store changes call
//! [`Serving::sync`].

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use ironpool_crds::Subnet;
use kube::ResourceExt;

use super::reservations::{self, Served};
use super::stores::Stores;
use crate::dhcp::{DhcpServer, SubnetConfig};

/// `(namespace, name)` of a Subnet.
pub type SubnetKey = (String, String);

/// The served set and the DHCP server it drives (None when DHCP is disabled).
#[derive(Clone)]
pub struct Serving {
    held: Arc<Mutex<BTreeSet<SubnetKey>>>,
    server: Option<DhcpServer>,
    stores: Stores,
}

/// The validated config of a Subnet, or None (logged) when its spec is unusable.
pub fn subnet_config(s: &Subnet) -> Option<SubnetConfig> {
    match SubnetConfig::try_from(&s.spec) {
        Ok(c) => Some(c.named(s.name_any())),
        Err(e) => {
            tracing::warn!(subnet = %s.name_any(), error = %e, "Subnet not served");
            None
        }
    }
}

impl Serving {
    /// A served set driving `server`.
    pub fn new(server: Option<DhcpServer>, stores: Stores) -> Self {
        Serving {
            held: Arc::default(),
            server,
            stores,
        }
    }

    /// Starts serving a Subnet (its Lease is held).
    pub fn hold(&self, key: &SubnetKey) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone());
        self.sync();
    }

    /// Stops serving a Subnet at once (its Lease is lost or released).
    pub fn drop_subnet(&self, key: &SubnetKey) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        self.sync();
    }

    /// The held Subnets with their configs (from the store).
    pub fn served(&self) -> Vec<Served> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        held.iter()
            .filter_map(|(ns, name)| {
                let s = self.stores.subnet(ns, name)?;
                Some(Served {
                    namespace: ns.clone(),
                    config: subnet_config(&s)?,
                })
            })
            .collect()
    }

    /// How many Subnets are held.
    pub fn count(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The MAC behind a client address, from the DHCP server's reservations and leases.
    pub fn mac_of(&self, ip: std::net::IpAddr) -> Option<crate::dhcp::MacAddr> {
        let std::net::IpAddr::V4(ip) = ip else {
            return None;
        };
        let server = self.server.as_ref()?;
        let state = server.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.mac_of(ip)
    }

    /// Recomputes the DHCP server's subnets and reservations from the stores.
    pub fn sync(&self) {
        let Some(server) = &self.server else { return };
        let served = self.served();
        let machines = self.stores.machines.state();
        let res = reservations::compute(&served, &machines, |m| self.stores.deployment_of(m));
        let mut state = server.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.subnets = served.into_iter().map(|s| s.config).collect();
        state.set_reservations(res);
    }
}

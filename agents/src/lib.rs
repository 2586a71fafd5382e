//! Ironpool agents: the BMC power drivers (Redfish, IPMI) behind a narrow
//! [`bmc::PowerDriver`] trait, and the network agent's [`power`] controller that carries out
//! each Machine's boot intent exactly once per attempt.

pub mod agent;
pub mod bmc;
pub mod dhcp;
pub mod http;
pub mod machine;
pub mod power;
pub mod tftp;

//! Helpers of the agents' benchmark programs (`src/bin/`): a DHCPv4 load generator
//! ([`dhcp_load`]). Their network namespaces, veth pairs and pinned, reaped processes come
//! from `ironpool_e2e::netlab`, the one implementation the tests use too. Nothing here
//! ships: the product binaries are in `agents/src/bin/`.

pub mod dhcp_load;

//! Helpers of the agents' benchmark programs (`src/bin/`): network namespaces joined by a
//! veth pair with pinned, reaped processes ([`netns`]), and a DHCPv4 load generator
//! ([`dhcp_load`]). Nothing here ships: the product binaries are in `agents/src/bin/`.

pub mod dhcp_load;
pub mod netns;

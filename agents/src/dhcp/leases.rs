//! The lease table the DHCP pipeline decides against: offers, bound leases, quarantined
//! addresses, and a free-address search over a Subnet's dynamic range. No I/O.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use super::MacAddr;
use super::config::SubnetConfig;

/// Whether an address is only offered or acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Offered, held until `expires` for this MAC.
    Offered,
    /// Acknowledged.
    Bound,
}

/// One address held by one MAC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The client.
    pub mac: MacAddr,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Unix time (seconds) the hold ends.
    pub expires: u64,
    /// Offered or bound.
    pub state: LeaseState,
}

/// Leases by MAC and by address, plus quarantined addresses. One lease per MAC.
#[derive(Clone, Debug, Default)]
pub struct LeaseTable {
    by_mac: HashMap<MacAddr, Lease>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
    quarantine: HashMap<Ipv4Addr, u64>,
    /// Quarantined addresses that answered an ICMP probe (a host this server has no lease
    /// for uses them), as opposed to addresses a client declined.
    abandoned: HashSet<Ipv4Addr>,
    cursor: HashMap<Ipv4Addr, u32>,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lease of `mac`, expired or not.
    pub fn by_mac(&self, mac: &MacAddr) -> Option<&Lease> {
        self.by_mac.get(mac)
    }

    /// The MAC holding `ip` (any state, maybe expired).
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip).and_then(|m| self.by_mac.get(m))
    }

    /// Number of leases (offered and bound, expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    /// All leases.
    pub fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_mac.values()
    }

    /// Whether `ip` is quarantined at `now`.
    pub fn quarantined(&self, ip: Ipv4Addr, now: u64) -> bool {
        self.quarantine.get(&ip).is_some_and(|until| *until > now)
    }

    /// Whether `mac` may take `ip` at `now` as far as leases go: nobody else holds it
    /// unexpired and it is not quarantined.
    pub fn free_for(&self, ip: Ipv4Addr, mac: &MacAddr, now: u64) -> bool {
        if self.quarantined(ip, now) {
            return false;
        }
        match self.holder(ip) {
            Some(l) => l.mac == *mac || l.expires <= now,
            None => true,
        }
    }

    /// Records `lease`, replacing the MAC's previous lease and whoever held the address.
    pub fn insert(&mut self, lease: Lease) {
        if let Some(old) = self.by_mac.remove(&lease.mac) {
            self.by_ip.remove(&old.ip);
        }
        if let Some(prev) = self.by_ip.insert(lease.ip, lease.mac)
            && prev != lease.mac
        {
            self.by_mac.remove(&prev);
        }
        self.quarantine.remove(&lease.ip);
        self.abandoned.remove(&lease.ip);
        self.by_mac.insert(lease.mac, lease);
    }

    /// Drops the lease of `mac` if it holds `ip`.
    pub fn remove(&mut self, mac: &MacAddr, ip: Ipv4Addr) -> Option<Lease> {
        if self.by_mac.get(mac).is_some_and(|l| l.ip == ip) {
            self.by_ip.remove(&ip);
            return self.by_mac.remove(mac);
        }
        None
    }

    /// Keeps `ip` out of the pool until `until` (a client declined it: it conflicts).
    pub fn quarantine(&mut self, ip: Ipv4Addr, until: u64) {
        if let Some(mac) = self.by_ip.remove(&ip) {
            self.by_mac.remove(&mac);
        }
        self.abandoned.remove(&ip);
        self.quarantine.insert(ip, until);
    }

    /// Keeps `ip` out of offers until `until` because a host answered a probe on it; a
    /// client that then asks to keep it (INIT-REBOOT, RENEW, REBIND) is that host, and
    /// may reclaim it (see [`LeaseTable::abandoned`]).
    pub fn abandon(&mut self, ip: Ipv4Addr, until: u64) {
        self.quarantine(ip, until);
        self.abandoned.insert(ip);
    }

    /// Whether `ip` is quarantined at `now` because a probe was answered (not declined).
    pub fn abandoned(&self, ip: Ipv4Addr, now: u64) -> bool {
        self.abandoned.contains(&ip) && self.quarantined(ip, now) && self.holder(ip).is_none()
    }

    /// Forgets expired leases and quarantines; returns how many leases went.
    pub fn sweep(&mut self, now: u64) -> usize {
        let before = self.by_mac.len();
        self.by_mac.retain(|_, l| l.expires > now);
        let by_mac = &self.by_mac;
        self.by_ip.retain(|_, m| by_mac.contains_key(m));
        self.quarantine.retain(|_, until| *until > now);
        let quarantine = &self.quarantine;
        self.abandoned.retain(|ip| quarantine.contains_key(ip));
        before - self.by_mac.len()
    }

    /// A free address of the dynamic range of `subnet` for `mac`, searching onward from
    /// where the last search ended; `taken` says whether an address is reserved for
    /// someone else.
    pub fn find_free(
        &self,
        subnet: &SubnetConfig,
        mac: &MacAddr,
        now: u64,
        taken: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        let (start, end) = subnet.dynamic?;
        let (start, end) = (u32::from(start), u32::from(end));
        let size = u64::from(end - start) + 1;
        let from = self.cursor.get(&subnet.network).copied().unwrap_or(start);
        let from = if (start..=end).contains(&from) {
            from
        } else {
            start
        };
        let offset = u64::from(from - start);
        for n in offset..offset + size {
            let candidate = Ipv4Addr::from(start + (n % size) as u32);
            if subnet.assignable(candidate)
                && subnet.in_dynamic(candidate)
                && !taken(candidate)
                && self.free_for(candidate, mac, now)
            {
                return Some(candidate);
            }
        }
        None
    }

    /// Moves the search cursor of `subnet` past `ip`.
    pub fn advance(&mut self, subnet: &SubnetConfig, ip: Ipv4Addr) {
        if let Some((start, end)) = subnet.dynamic
            && start <= ip
            && ip <= end
        {
            let next = if ip == end {
                start
            } else {
                Ipv4Addr::from(u32::from(ip) + 1)
            };
            self.cursor.insert(subnet.network, u32::from(next));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;

    fn subnet() -> SubnetConfig {
        SubnetConfig {
            name: "t".into(),
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![],
            domain: None,
            mtu: None,
            lease_secs: 3600,
            dynamic: Some((Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 12))),
            reserved: vec![],
            pxe: false,
        }
    }

    fn lease(m: u8, ip: u8, expires: u64) -> Lease {
        Lease {
            mac: MacAddr([0, 0, 0, 0, 0, m]),
            ip: Ipv4Addr::new(10, 0, 0, ip),
            expires,
            state: LeaseState::Bound,
        }
    }

    #[test]
    fn finds_free_addresses_round_robin_and_reuses_expired() {
        let s = subnet();
        let mut t = LeaseTable::new();
        let me = MacAddr([0, 0, 0, 0, 0, 9]);
        assert_eq!(
            t.find_free(&s, &me, 0, |_| false),
            Some(Ipv4Addr::new(10, 0, 0, 10))
        );
        t.insert(lease(1, 10, 100));
        t.advance(&s, Ipv4Addr::new(10, 0, 0, 10));
        assert_eq!(
            t.find_free(&s, &me, 0, |_| false),
            Some(Ipv4Addr::new(10, 0, 0, 11))
        );
        assert_eq!(
            t.find_free(&s, &me, 0, |ip| ip == Ipv4Addr::new(10, 0, 0, 11)),
            Some(Ipv4Addr::new(10, 0, 0, 12))
        );
        t.insert(lease(2, 11, 100));
        t.insert(lease(3, 12, 100));
        assert_eq!(t.find_free(&s, &me, 50, |_| false), None);
        assert_eq!(
            t.find_free(&s, &me, 100, |_| false),
            Some(Ipv4Addr::new(10, 0, 0, 11))
        );
        t.quarantine(Ipv4Addr::new(10, 0, 0, 11), 500);
        assert!(!t.free_for(Ipv4Addr::new(10, 0, 0, 11), &me, 200));
        assert_eq!(t.sweep(200), 2);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn insert_replaces_old_address_and_old_holder() {
        let mut t = LeaseTable::new();
        t.insert(lease(1, 10, 100));
        t.insert(lease(1, 11, 100));
        assert!(t.holder(Ipv4Addr::new(10, 0, 0, 10)).is_none());
        t.insert(lease(2, 11, 100));
        assert!(t.by_mac(&MacAddr([0, 0, 0, 0, 0, 1])).is_none());
        assert_eq!(t.len(), 1);
        assert!(
            t.remove(&MacAddr([0, 0, 0, 0, 0, 2]), Ipv4Addr::new(10, 0, 0, 11))
                .is_some()
        );
        assert!(t.is_empty());
    }
}

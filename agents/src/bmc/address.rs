//! Parsing `spec.bmc.address`: the scheme picks the driver, the path may name a system.

use super::BmcError;

/// Protocol and transport named by the address scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `redfish://` or `redfish+https://`.
    RedfishHttps,
    /// `redfish+http://` (labs and emulators only).
    RedfishHttp,
    /// `ipmi://` (IPMI 2.0 lanplus, port 623 unless given).
    Ipmi,
}

/// A parsed BMC address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BmcAddress {
    /// Which driver and transport.
    pub protocol: Protocol,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port, if the address names one.
    pub port: Option<u16>,
    /// Path after the host (Redfish: may name the ComputerSystem), "" when none.
    pub path: String,
}

impl BmcAddress {
    /// Parses an address such as `redfish+https://10.30.0.7/redfish/v1/Systems/1` or
    /// `ipmi://10.30.0.8:623`.
    pub fn parse(address: &str) -> Result<Self, BmcError> {
        let invalid = |detail: &str| BmcError::InvalidAddress {
            address: address.to_string(),
            detail: detail.to_string(),
        };
        let (scheme, rest) = address
            .split_once("://")
            .ok_or_else(|| invalid("it has no scheme"))?;
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            "redfish" | "redfish+https" => Protocol::RedfishHttps,
            "redfish+http" => Protocol::RedfishHttp,
            "ipmi" => Protocol::Ipmi,
            _ => return Err(invalid("unknown scheme")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.contains('@') || authority.contains('?') || authority.contains('#') {
            return Err(invalid("put credentials in the Secret, not in the address"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| invalid("bad host or port"))?;
        if host.is_empty() {
            return Err(invalid("it names no host"));
        }
        if protocol == Protocol::Ipmi && !path.is_empty() {
            return Err(invalid("an ipmi:// address takes only a host and port"));
        }
        Ok(Self {
            protocol,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// `host:port` with the protocol's default port, brackets around IPv6; used as the key
    /// of per-BMC limits and in messages.
    pub fn host_port(&self) -> String {
        let port = self.port.unwrap_or(match self.protocol {
            Protocol::RedfishHttps => 443,
            Protocol::RedfishHttp => 80,
            Protocol::Ipmi => 623,
        });
        if self.host.contains(':') {
            format!("[{}]:{port}", self.host)
        } else {
            format!("{}:{port}", self.host)
        }
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(p) => Some((host, Some(p.parse().ok()?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => Some((host, Some(p.parse().ok()?))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_by_scheme() {
        let cases: &[(&str, Protocol, &str, Option<u16>, &str)] = &[
            (
                "redfish://10.0.0.1",
                Protocol::RedfishHttps,
                "10.0.0.1",
                None,
                "",
            ),
            (
                "redfish+https://bmc.example:8443/redfish/v1/Systems/1/",
                Protocol::RedfishHttps,
                "bmc.example",
                Some(8443),
                "/redfish/v1/Systems/1",
            ),
            (
                "redfish+http://127.0.0.1:8000",
                Protocol::RedfishHttp,
                "127.0.0.1",
                Some(8000),
                "",
            ),
            (
                "ipmi://10.0.0.2:6230",
                Protocol::Ipmi,
                "10.0.0.2",
                Some(6230),
                "",
            ),
            ("ipmi://[fd00::2]", Protocol::Ipmi, "fd00::2", None, ""),
            ("IPMI://h/", Protocol::Ipmi, "h", None, ""),
        ];
        for (input, protocol, host, port, path) in cases {
            let a = BmcAddress::parse(input).unwrap();
            assert_eq!(
                (a.protocol, a.host.as_str(), a.port, a.path.as_str()),
                (*protocol, *host, *port, *path),
                "{input}"
            );
        }
    }

    #[test]
    fn bad_addresses_are_rejected_with_a_reason() {
        for bad in [
            "10.0.0.1",
            "http://10.0.0.1",
            "redfish://user:pw@10.0.0.1",
            "ipmi://10.0.0.1/x",
            "redfish://:443",
            "redfish://h:99999",
            "redfish://fd00::1",
        ] {
            let e = BmcAddress::parse(bad).unwrap_err();
            assert_eq!(e.metric_label(), "InvalidAddress", "{bad}");
        }
    }

    #[test]
    fn host_port_uses_protocol_defaults() {
        let a = |s| BmcAddress::parse(s).unwrap().host_port();
        assert_eq!(a("redfish://h"), "h:443");
        assert_eq!(a("redfish+http://h"), "h:80");
        assert_eq!(a("ipmi://[fd00::2]"), "[fd00::2]:623");
    }
}

//! CIDRs from flags and the config file: a message that says what is wrong with a bad one,
//! host bits dropped as kube-proxy and kube-apiserver do, and lists merged so the kernel
//! never gets overlapping or duplicate intervals.

use ipnet::IpNet;
use std::net::IpAddr;
use svc_nft_compiler::NodePortAddresses;

/// Why a text is not a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("empty CIDR")]
    Empty,
    #[error("{0} has no prefix length: a CIDR is ADDRESS/LENGTH, e.g. {0}/{1}")]
    NoPrefixLength(IpAddr, u8),
    #[error("{0:?} is not an IPv4 or IPv6 address")]
    NotAnAddress(String),
    #[error("prefix length {0:?} is not a number")]
    NotANumber(String),
    #[error("prefix length {length} is out of range ({family} allows 0–{max})")]
    OutOfRange {
        length: String,
        family: &'static str,
        max: u8,
    },
    #[error("{0:?} is not a CIDR (only --nodeport-addresses takes the keywords primary and all)")]
    Keyword(String),
}

/// `ADDRESS/LENGTH`, as a flag's value parser. Host bits are dropped (`10.96.0.1/12` is
/// `10.96.0.0/12`): kube-proxy and kube-apiserver read CIDRs with Go's `net.ParseCIDR`,
/// which does the same.
pub fn parse(text: &str) -> Result<IpNet, CidrError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(CidrError::Empty);
    }
    if matches!(text, "primary" | "all" | "localhost") {
        return Err(CidrError::Keyword(text.to_string()));
    }
    let Some((address, length)) = text.split_once('/') else {
        let address = address(text)?;
        return Err(CidrError::NoPrefixLength(address, max_length(address)));
    };
    let address = self::address(address)?;
    let length = prefix_length(length, address)?;
    IpNet::new(address, length)
        .map(|net| net.trunc())
        .map_err(|_| out_of_range(&length.to_string(), address))
}

/// One value of `--nodeport-addresses`: a keyword of kube-proxy 1.37 (KEP-6032) or a CIDR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortValue {
    Primary,
    All,
    Cidr(IpNet),
}

/// A `--nodeport-addresses` value, as a flag's value parser.
pub fn nodeport_value(text: &str) -> Result<NodePortValue, CidrError> {
    match text.trim() {
        "primary" => Ok(NodePortValue::Primary),
        "all" => Ok(NodePortValue::All),
        other => parse(other).map(NodePortValue::Cidr),
    }
}

/// The values together: none or `primary` alone are `primary`; `all` or a CIDR make CIDRs
/// (`all` is `0.0.0.0/0,::/0`), a `primary` beside them adding nothing.
pub fn nodeport_addresses(values: &[NodePortValue]) -> NodePortAddresses {
    let mut cidrs = Vec::new();
    for value in values {
        match value {
            NodePortValue::Primary => {}
            NodePortValue::All => {
                cidrs.extend(["0.0.0.0/0", "::/0"].map(|z| z.parse::<IpNet>().expect("valid")))
            }
            NodePortValue::Cidr(net) => cidrs.push(*net),
        }
    }
    match cidrs.is_empty() {
        true => NodePortAddresses::Primary,
        false => NodePortAddresses::Cidrs(normalise(&cidrs)),
    }
}

/// `nodePortAddresses` of a config file.
pub fn parse_nodeport_list<'a>(
    texts: impl IntoIterator<Item = &'a str>,
) -> Result<NodePortAddresses, CidrError> {
    let parts = texts.into_iter().flat_map(|t| t.split(',')).map(str::trim);
    let values = parts.filter(|p| !p.is_empty()).map(nodeport_value);
    Ok(nodeport_addresses(&values.collect::<Result<Vec<_>, _>>()?))
}

/// Comma-separated CIDRs (kube-proxy's `clusterCIDR`), merged by [`normalise`].
pub fn parse_list<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Vec<IpNet>, CidrError> {
    let parts = texts
        .into_iter()
        .flat_map(|t| t.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty());
    let cidrs = parts.map(parse).collect::<Result<Vec<_>, _>>()?;
    Ok(normalise(&cidrs))
}

/// The same addresses as the fewest CIDRs: duplicates and CIDRs inside others dropped,
/// neighbours merged (`10.96.0.0/12,10.100.0.0/16` is `10.96.0.0/12`); IPv4 first, each family
/// in address order.
pub fn normalise(cidrs: &[IpNet]) -> Vec<IpNet> {
    IpNet::aggregate(&cidrs.to_vec())
}

fn address(text: &str) -> Result<IpAddr, CidrError> {
    text.parse()
        .map_err(|_| CidrError::NotAnAddress(text.to_string()))
}

fn prefix_length(text: &str, address: IpAddr) -> Result<u8, CidrError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CidrError::NotANumber(text.to_string()));
    }
    match text.parse::<u8>() {
        Ok(length) if length <= max_length(address) => Ok(length),
        _ => Err(out_of_range(text.trim_start_matches('0'), address)),
    }
}

fn out_of_range(length: &str, address: IpAddr) -> CidrError {
    CidrError::OutOfRange {
        length: length.to_string(),
        family: family(address),
        max: max_length(address),
    }
}

fn max_length(address: IpAddr) -> u8 {
    if address.is_ipv4() {
        32
    } else {
        128
    }
}

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_cidrs_say_what_is_wrong() {
        assert_eq!(
            error("10.244.0.0/33"),
            "prefix length 33 is out of range (IPv4 allows 0–32)"
        );
        assert_eq!(
            error("fd00::/129"),
            "prefix length 129 is out of range (IPv6 allows 0–128)"
        );
        assert_eq!(
            error("10.0.0.0/4096"),
            "prefix length 4096 is out of range (IPv4 allows 0–32)"
        );
        assert_eq!(error("10.0.0.0/x"), "prefix length \"x\" is not a number");
        assert_eq!(error("10.0.0.0/"), "prefix length \"\" is not a number");
        assert_eq!(error("10.0.0.0/-1"), "prefix length \"-1\" is not a number");
        assert_eq!(
            error("10.244.0/16"),
            "\"10.244.0\" is not an IPv4 or IPv6 address"
        );
        assert_eq!(
            error("10.244.0.0"),
            "10.244.0.0 has no prefix length: a CIDR is ADDRESS/LENGTH, e.g. 10.244.0.0/32"
        );
        assert_eq!(error(" "), "empty CIDR");
        assert!(error("primary").contains("keyword"), "{}", error("primary"));
    }

    #[test]
    fn nodeport_addresses_take_kube_proxys_keywords() {
        let list = |t: &str| parse_nodeport_list([t]).unwrap();
        assert_eq!(list(""), NodePortAddresses::Primary);
        assert_eq!(list("primary"), NodePortAddresses::Primary);
        let all =
            NodePortAddresses::Cidrs(vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
        assert_eq!(list("all"), all);
        assert_eq!(list("0.0.0.0/0,::/0"), all);
        assert_eq!(list("all,10.0.0.0/8"), all);
        assert_eq!(
            list("10.0.0.1/8"),
            NodePortAddresses::Cidrs(vec!["10.0.0.0/8".parse().unwrap()])
        );
        assert!(parse_nodeport_list(["localhost"]).is_err());
    }

    #[test]
    fn host_bits_are_dropped_as_kube_proxy_does() {
        assert_eq!(parse("10.96.0.1/12").unwrap().to_string(), "10.96.0.0/12");
        assert_eq!(parse("fd00::1/64").unwrap().to_string(), "fd00::/64");
        assert_eq!(parse("192.0.2.7/32").unwrap().to_string(), "192.0.2.7/32");
    }

    #[test]
    fn lists_merge_duplicates_overlaps_and_neighbours() {
        let list = |t: &str| {
            parse_list([t])
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(list("10.96.0.0/12,10.100.0.0/16"), "10.96.0.0/12");
        assert_eq!(list("10.0.0.0/8, 10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(list("10.0.0.0/25,10.0.0.128/25"), "10.0.0.0/24");
        assert_eq!(
            list("fd00::/56,10.244.0.0/16,fd00::/64"),
            "10.244.0.0/16,fd00::/56"
        );
        assert_eq!(list(""), "");
        assert_eq!(
            parse_list(["10.0.0.0/8,10.0.0.0/40"]).unwrap_err(),
            parse("10.0.0.0/40").unwrap_err()
        );
    }
}

//! Smoke tests for the namespace lab itself: plain routing, a hand-written nft
//! DNAT, and cleanup after a panic. Skipped (or failing under CI) without
//! root + ip + nft.

mod netns;

use netns::{tcp, udp, Lab, Outcome, Proto};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const T: Duration = Duration::from_secs(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn answered(backend: &str, peer: &str) -> Outcome {
    Outcome::Answered {
        backend: ip(backend),
        peer: ip(peer),
    }
}

/// A backend b1 serving TCP 8080 and UDP 5353, and a client c1. Returns (lab, b1, c1).
fn lab() -> (Lab, usize, usize) {
    let mut lab = Lab::new();
    let b1 = lab.add_host(
        "b1",
        "10.244.1.2/24",
        "10.244.1.1",
        "fd00:244:1::2/64",
        "fd00:244:1::1",
    );
    let c1 = lab.add_host(
        "c1",
        "10.244.9.2/24",
        "10.244.9.1",
        "fd00:244:9::2/64",
        "fd00:244:9::1",
    );
    lab.serve(b1, Proto::Tcp, 8080);
    lab.serve(b1, Proto::Udp, 5353);
    (lab, b1, c1)
}

#[test]
fn routes_between_hosts_v4_and_v6() {
    if !netns::require() {
        return;
    }
    let (lab, _, c1) = lab();
    let c = &lab.host(c1).ns;
    assert_eq!(
        tcp(c, addr("10.244.1.2:8080"), T),
        answered("10.244.1.2", "10.244.9.2")
    );
    assert_eq!(
        tcp(c, addr("[fd00:244:1::2]:8080"), T),
        answered("fd00:244:1::2", "fd00:244:9::2")
    );
    assert_eq!(
        udp(c, addr("10.244.1.2:5353"), T),
        answered("10.244.1.2", "10.244.9.2")
    );
    assert_eq!(
        udp(c, addr("[fd00:244:1::2]:5353"), T),
        answered("fd00:244:1::2", "fd00:244:9::2")
    );
    assert_eq!(tcp(c, addr("10.244.1.2:9999"), T), Outcome::Refused);
    assert_eq!(tcp(c, addr("[fd00:244:1::2]:9999"), T), Outcome::Refused);
    assert_eq!(udp(c, addr("10.244.1.2:9999"), T), Outcome::Refused);
}

#[test]
fn nft_dnat_and_masquerade_in_node() {
    if !netns::require() {
        return;
    }
    let (lab, _, c1) = lab();
    lab.node
        .nft(
            // nft 1.0.6 (Debian 12) needs a newline or `;` after the last rule
            // before `}`: the one-line form is a syntax error there.
            "table inet smoke {
                chain pre {
                    type nat hook prerouting priority -100; policy accept;
                    ip daddr 10.96.0.1 tcp dport 80 dnat ip to 10.244.1.2:8080
                }
                chain post {
                    type nat hook postrouting priority 100; policy accept;
                    ip daddr 10.244.1.2 masquerade
                }
            }",
        )
        .unwrap();
    assert!(lab
        .node
        .nft_list("-j list table inet smoke")
        .contains("\"masquerade\""));
    let c = &lab.host(c1).ns;
    assert_eq!(
        tcp(c, addr("10.96.0.1:80"), T),
        answered("10.244.1.2", "10.244.1.1")
    );
    // Nothing answers for 10.96.0.1 on other ports: the node has no route for
    // it, so the client is told "unreachable" rather than timing out.
    let unrouted = tcp(c, addr("10.96.0.1:81"), T);
    assert!(
        matches!(&unrouted, Outcome::Failed(e) if e.contains("unreachable")),
        "{unrouted:?}"
    );
    // A silently dropped datagram is a Timeout, not Refused. (`fwd` is an
    // nft keyword, hence the chain name.)
    lab.node
        .nft(
            "add chain inet smoke filt { type filter hook forward priority 0; }
             add rule inet smoke filt udp dport 5353 drop",
        )
        .unwrap();
    let short = Duration::from_millis(200);
    assert_eq!(udp(c, addr("10.244.1.2:5353"), short), Outcome::Timeout);
}

#[test]
fn nft_errors_are_returned() {
    if !netns::require() {
        return;
    }
    let ns = netns::Netns::new("nfterr");
    let err = ns.nft("table inet x { chain c { nonsense } }").unwrap_err();
    assert!(err.contains("Error"), "{err}");
}

#[test]
fn namespaces_removed_after_panic() {
    if !netns::require() {
        return;
    }
    let mut names = Vec::new();
    let names_ref = &mut names;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let (lab, b1, c1) = lab();
        names_ref.extend([&lab.node, &lab.host(b1).ns, &lab.host(c1).ns].map(|ns| ns.name.clone()));
        panic!("deliberate panic inside a lab");
    }));
    assert!(result.is_err());
    assert_eq!(names.len(), 3);
    let listed = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let listed: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in &names {
        assert!(
            !listed.contains(&name.as_str()),
            "{name} still exists: {listed:?}"
        );
    }
}

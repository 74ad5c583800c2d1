use super::*;

fn proxies(value: &str) -> TrustedProxies {
    TrustedProxies::parse(value).unwrap()
}

fn ip(value: &str) -> IpAddr {
    value.parse().unwrap()
}

/// Resolves with `X-Forwarded-For` lines only.
fn via_xff(trusted: &TrustedProxies, peer: &str, lines: &[&str]) -> IpAddr {
    trusted.resolve(ip(peer), [], lines.iter().map(|line| Some(*line)))
}

/// Resolves with `Forwarded` lines only.
fn via_forwarded(trusted: &TrustedProxies, peer: &str, lines: &[&str]) -> IpAddr {
    trusted.resolve(ip(peer), lines.iter().map(|line| Some(*line)), [])
}

#[test]
fn cidrs_and_single_addresses_parse_and_garbage_is_named() {
    let trusted = proxies("10.0.0.0/8, 192.168.1.7 ,fd00::/8,");
    assert!(trusted.is_trusted(ip("10.1.2.3")));
    assert!(trusted.is_trusted(ip("192.168.1.7")));
    assert!(!trusted.is_trusted(ip("192.168.1.8")));
    assert!(trusted.is_trusted(ip("fd00::1")));
    // An IPv4 peer seen on a dual-stack socket is still the IPv4 address.
    assert!(trusted.is_trusted(ip("::ffff:10.0.0.1")));
    assert!(proxies("").is_empty());
    let err = TrustedProxies::parse("10.0.0.0/8,not-a-network").unwrap_err();
    assert!(err.contains("not-a-network"), "{err}");
    assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
}

#[test]
fn headers_from_an_untrusted_peer_are_ignored() {
    let trusted = proxies("10.0.0.0/8");
    assert_eq!(
        via_xff(&trusted, "203.0.113.9", &["198.51.100.1"]),
        ip("203.0.113.9")
    );
    assert_eq!(
        via_forwarded(&trusted, "203.0.113.9", &["for=198.51.100.1"]),
        ip("203.0.113.9")
    );
    // With no trusted proxies at all, nobody's headers count.
    assert_eq!(
        via_xff(&TrustedProxies::default(), "10.0.0.1", &["198.51.100.1"]),
        ip("10.0.0.1")
    );
}

#[test]
fn the_client_is_the_first_untrusted_hop_from_the_right() {
    let trusted = proxies("10.0.0.0/8");
    assert_eq!(
        via_xff(&trusted, "10.0.0.1", &["198.51.100.1"]),
        ip("198.51.100.1")
    );
    // Two proxies of ours in a row: both skipped.
    assert_eq!(
        via_xff(&trusted, "10.0.0.1", &["198.51.100.1, 10.0.0.2"]),
        ip("198.51.100.1")
    );
    // Several header lines form one chain, in order.
    assert_eq!(
        via_xff(&trusted, "10.0.0.1", &["198.51.100.1", "10.0.0.2"]),
        ip("198.51.100.1")
    );
    // Every hop trusted (an internal caller): the leftmost one.
    assert_eq!(via_xff(&trusted, "10.0.0.1", &["10.0.0.3"]), ip("10.0.0.3"));
}

#[test]
fn a_client_cannot_choose_its_address_by_writing_the_header_itself() {
    let trusted = proxies("10.0.0.0/8");
    // The client sent `X-Forwarded-For: 1.2.3.4`; our proxy appended the real address.
    assert_eq!(
        via_xff(&trusted, "10.0.0.1", &["1.2.3.4, 198.51.100.7"]),
        ip("198.51.100.7")
    );
    // Claiming to be one of our proxies does not help either: the real address is to its right.
    assert_eq!(
        via_xff(&trusted, "10.0.0.1", &["10.0.0.5, 198.51.100.7"]),
        ip("198.51.100.7")
    );
    assert_eq!(
        via_forwarded(&trusted, "10.0.0.1", &["for=1.2.3.4, for=198.51.100.7"]),
        ip("198.51.100.7")
    );
    // A proxy that writes only X-Forwarded-For passes a forged Forwarded through: the two
    // disagree, and neither is believed.
    assert_eq!(
        trusted.resolve(
            ip("10.0.0.1"),
            [Some("for=1.2.3.4")],
            [Some("198.51.100.7")]
        ),
        ip("10.0.0.1")
    );
    // When both say the same, that is the client.
    assert_eq!(
        trusted.resolve(
            ip("10.0.0.1"),
            [Some("for=198.51.100.7")],
            [Some("198.51.100.7")]
        ),
        ip("198.51.100.7")
    );
}

#[test]
fn rfc_7239_forms_parse() {
    let trusted = proxies("10.0.0.0/8");
    for (line, expected) in [
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ("For=\"192.0.2.60:8080\"", "192.0.2.60"),
        ("for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
        ("for=\"[2001:db8:cafe::17]\"", "2001:db8:cafe::17"),
        ("proto=https; for=192.0.2.61", "192.0.2.61"),
    ] {
        assert_eq!(
            via_forwarded(&trusted, "10.0.0.1", &[line]),
            ip(expected),
            "{line}"
        );
    }
    assert_eq!(
        via_xff(&trusted, "10.0.0.1", &["192.0.2.60:5555"]),
        ip("192.0.2.60")
    );
    assert_eq!(
        via_xff(&trusted, "10.0.0.1", &["[2001:db8::1]:5555"]),
        ip("2001:db8::1")
    );
}

#[test]
fn malformed_chains_leave_the_peer() {
    let trusted = proxies("10.0.0.0/8");
    for line in [
        "",
        "not-an-address",
        "198.51.100.1, garbage",
        "198.51.100.1,,10.0.0.2",
        "unknown",
    ] {
        assert_eq!(
            via_xff(&trusted, "10.0.0.1", &[line]),
            ip("10.0.0.1"),
            "{line:?}"
        );
    }
    for line in ["for=unknown", "for=_hidden", "proto=http", "for=\"[::1\""] {
        assert_eq!(
            via_forwarded(&trusted, "10.0.0.1", &[line]),
            ip("10.0.0.1"),
            "{line:?}"
        );
    }
    // A header line that is not text.
    assert_eq!(
        trusted.resolve(ip("10.0.0.1"), [], [Some("198.51.100.1"), None]),
        ip("10.0.0.1")
    );
    // An absurdly long chain is not walked.
    let long = vec!["198.51.100.1"; MAX_HOPS + 1].join(",");
    assert_eq!(via_xff(&trusted, "10.0.0.1", &[&long]), ip("10.0.0.1"));
}

#[test]
fn http_headers_and_grpc_metadata_resolve_alike() {
    let trusted = proxies("127.0.0.1/32");
    let mut headers = http::HeaderMap::new();
    headers.append(X_FORWARDED_FOR, "1.2.3.4, 198.51.100.7".parse().unwrap());
    assert_eq!(
        trusted.resolve_http(ip("127.0.0.1"), &headers),
        ip("198.51.100.7")
    );
    let metadata = tonic::metadata::MetadataMap::from_headers(headers);
    assert_eq!(
        trusted.resolve_grpc(Some("127.0.0.1:5000".parse().unwrap()), &metadata),
        Some(ip("198.51.100.7"))
    );
    assert_eq!(trusted.resolve_grpc(None, &metadata), None);
}

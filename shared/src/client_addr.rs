//! Which address a request comes from, for throttles and logs, when services sit behind load
//! balancers (`TRUSTED_PROXIES`).
//!
//! Behind a proxy every client shares the proxy's address, so per-address limits would throttle
//! everyone together. The proxy names the client in `X-Forwarded-For` or RFC 7239 `Forwarded`,
//! but anyone can send those headers, so they are believed only from a trusted peer, and only
//! as far as the chain of trusted hops reaches: the chain is walked from the right (the hop
//! nearest to us), skipping trusted proxies, and the first untrusted address is the client.
//! Whatever a client writes to the left of that is ignored. A malformed chain, or two headers
//! that disagree (a proxy that writes one passes the other through from the client untouched),
//! leaves the peer's own address.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;

/// The headers that carry the forwarding chain.
pub const FORWARDED: &str = "forwarded";
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// Longest chain followed; a longer one is treated as malformed.
const MAX_HOPS: usize = 32;

/// The proxies whose forwarding headers are believed (`TRUSTED_PROXIES`). Empty: none.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
}

impl TrustedProxies {
    /// Parses comma-separated CIDRs or single addresses (`10.0.0.0/8, 192.168.1.7, fd00::/8`).
    pub fn parse(value: &str) -> Result<Self, String> {
        let nets = value
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| format!("`{entry}` is not a CIDR (e.g. 10.0.0.0/8) or an address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { nets: nets.into() })
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn is_trusted(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.nets.iter().any(|net| net.contains(&address))
    }

    /// The client behind `peer`, from the values of every `Forwarded` and `X-Forwarded-For`
    /// header line, in order; `None` for a line that is not text (malformed).
    pub fn resolve<'a>(
        &self,
        peer: IpAddr,
        forwarded: impl IntoIterator<Item = Option<&'a str>>,
        x_forwarded_for: impl IntoIterator<Item = Option<&'a str>>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let resolved = |hops: Result<Vec<IpAddr>, Malformed>| {
            hops.and_then(|hops| self.walk(&hops).ok_or(Malformed))
        };
        let from_forwarded = chain(forwarded, forwarded_for).map(resolved);
        let from_xff = chain(x_forwarded_for, parse_address).map(resolved);
        match (from_forwarded, from_xff) {
            (Some(Ok(client)), None) | (None, Some(Ok(client))) => client,
            (Some(Ok(one)), Some(Ok(other))) if one == other => one,
            // No header, a malformed one, or two that disagree.
            _ => peer,
        }
    }

    /// [`Self::resolve`] over an HTTP request's headers.
    pub fn resolve_http(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        let lines = |name| {
            headers
                .get_all(name)
                .iter()
                .map(|value| value.to_str().ok())
        };
        self.resolve(peer, lines(FORWARDED), lines(X_FORWARDED_FOR))
    }

    /// [`Self::resolve`] over a gRPC request's metadata; `peer` unknown stays unknown.
    pub fn resolve_grpc(
        &self,
        peer: Option<SocketAddr>,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Option<IpAddr> {
        let lines = |name| {
            metadata
                .get_all(name)
                .iter()
                .map(|value| value.to_str().ok())
        };
        Some(self.resolve(peer?.ip(), lines(FORWARDED), lines(X_FORWARDED_FOR)))
    }

    /// The first untrusted hop from the right; the leftmost one if every hop is trusted.
    fn walk(&self, hops: &[IpAddr]) -> Option<IpAddr> {
        hops.iter()
            .rev()
            .find(|hop| !self.is_trusted(**hop))
            .or(hops.first())
            .copied()
    }
}

#[derive(Debug)]
struct Malformed;

/// The hops of every line of one header, left to right; `None` if the header is absent.
fn chain<'a>(
    lines: impl IntoIterator<Item = Option<&'a str>>,
    parse: fn(&str) -> Option<IpAddr>,
) -> Option<Result<Vec<IpAddr>, Malformed>> {
    let mut lines = lines.into_iter().peekable();
    lines.peek()?;
    let mut hops = Vec::new();
    for line in lines {
        let Some(line) = line else {
            return Some(Err(Malformed));
        };
        for element in line.split(',') {
            if hops.len() == MAX_HOPS {
                return Some(Err(Malformed));
            }
            match parse(element.trim()) {
                Some(hop) => hops.push(hop),
                None => return Some(Err(Malformed)),
            }
        }
    }
    Some(Ok(hops))
}

/// The `for=` node of one RFC 7239 element (`for=192.0.2.60;proto=http;by=203.0.113.43`).
/// Obfuscated identifiers and `unknown` name no address, so they count as malformed.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_address(value))?
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:4711`, possibly quoted.
fn parse_address(value: &str) -> Option<IpAddr> {
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(value);
    let address = value
        .parse::<IpAddr>()
        .ok()
        .or_else(|| value.parse::<SocketAddr>().ok().map(|socket| socket.ip()))
        .or_else(|| {
            value
                .strip_prefix('[')
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inner| inner.parse().ok())
        })?;
    Some(address.to_canonical())
}

#[cfg(test)]
#[path = "client_addr_tests.rs"]
mod tests;

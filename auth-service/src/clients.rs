//! The service clients allowed to obtain service tokens (`AUTH_SERVICE_CLIENTS`).
//!
//! Client secrets are high-entropy machine secrets, so a SHA-256 digest compared in constant
//! time is the right check (a password hash would only cost throughput). The secrets
//! themselves are dropped after parsing.

use std::collections::{BTreeSet, HashMap};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Shortest accepted client secret.
pub const MIN_SECRET_LEN: usize = 16;

#[derive(Clone, Default)]
pub struct ClientRegistry {
    clients: HashMap<String, Client>,
}

#[derive(Clone)]
struct Client {
    secret_digest: [u8; 32],
    scopes: BTreeSet<String>,
}

impl std::fmt::Debug for ClientRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegistry")
            .field("clients", &self.clients.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a client-credentials request was refused (RFC 6749 §5.2 names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("client authentication failed")]
    InvalidClient,
    #[error("the requested scope is not granted to this client")]
    InvalidScope,
}

impl ClientRegistry {
    /// Parses `client_id:secret:scope+scope,…`. The error names the entry by position, never
    /// its secret.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut clients = HashMap::new();
        for (index, entry) in value
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .enumerate()
        {
            let position = index + 1;
            let mut parts = entry.splitn(3, ':');
            let (Some(id), Some(secret), Some(scopes)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!(
                    "entry {position} is not `client_id:secret:scope+scope`"
                ));
            };
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(format!("entry {position} has an invalid client id"));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(format!(
                    "client `{id}` has a secret shorter than {MIN_SECRET_LEN} characters"
                ));
            }
            let scopes: BTreeSet<String> = scopes
                .split('+')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if scopes.is_empty() {
                return Err(format!("client `{id}` has no scopes"));
            }
            let client = Client {
                secret_digest: Sha256::digest(secret.as_bytes()).into(),
                scopes,
            };
            if clients.insert(id.to_owned(), client).is_some() {
                return Err(format!("client `{id}` is listed twice"));
            }
        }
        Ok(Self { clients })
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Checks the credentials and narrows the requested scopes (all granted ones when none are
    /// asked for). Unknown clients cost the same digest and comparison as known ones.
    pub fn authenticate(
        &self,
        client_id: &str,
        secret: &str,
        requested: &[String],
    ) -> Result<Vec<String>, ClientError> {
        let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let client = self.clients.get(client_id);
        let expected = client.map_or([0u8; 32], |client| client.secret_digest);
        let secret_matches: bool = presented.ct_eq(&expected).into();
        let client = match client {
            Some(client) if secret_matches => client,
            _ => return Err(ClientError::InvalidClient),
        };
        if requested.is_empty() {
            return Ok(client.scopes.iter().cloned().collect());
        }
        if requested.iter().all(|scope| client.scopes.contains(scope)) {
            let unique: BTreeSet<&String> = requested.iter().collect();
            Ok(unique.into_iter().cloned().collect())
        } else {
            Err(ClientError::InvalidScope)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENTS: &str = "ws-gateway:gateway-secret-0123456789:auth.validate+usage.check, backend:backend-secret-0123456789:publish";

    #[test]
    fn parses_clients_and_grants_their_scopes() {
        let registry = ClientRegistry::parse(CLIENTS).unwrap();
        assert_eq!(
            registry
                .authenticate("ws-gateway", "gateway-secret-0123456789", &[])
                .unwrap(),
            vec!["auth.validate", "usage.check"]
        );
        assert_eq!(
            registry
                .authenticate("backend", "backend-secret-0123456789", &["publish".into()])
                .unwrap(),
            vec!["publish"]
        );
    }

    #[test]
    fn wrong_secrets_unknown_clients_and_foreign_scopes_are_refused() {
        let registry = ClientRegistry::parse(CLIENTS).unwrap();
        assert_eq!(
            registry.authenticate("ws-gateway", "wrong", &[]),
            Err(ClientError::InvalidClient)
        );
        assert_eq!(
            registry.authenticate("nobody", "gateway-secret-0123456789", &[]),
            Err(ClientError::InvalidClient)
        );
        assert_eq!(
            registry.authenticate(
                "backend",
                "backend-secret-0123456789",
                &["auth.admin".into()]
            ),
            Err(ClientError::InvalidScope)
        );
    }

    #[test]
    fn bad_entries_are_named_without_their_secret() {
        for (value, expected) in [
            ("gw", "entry 1"),
            ("gw:short:scope", "shorter than"),
            ("gw:long-enough-secret-123:", "no scopes"),
            (
                "a:long-enough-secret-123:x,a:long-enough-secret-123:x",
                "twice",
            ),
            ("bad id:long-enough-secret-123:x", "invalid client id"),
        ] {
            let err = ClientRegistry::parse(value).unwrap_err();
            assert!(err.contains(expected), "{value}: {err}");
            assert!(!err.contains("long-enough-secret"), "{err}");
        }
        assert!(ClientRegistry::parse("").unwrap().is_empty());
    }
}

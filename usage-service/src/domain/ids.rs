use std::fmt;

use uuid::Uuid;

use super::InvalidInput;

/// A user id: the `sub` of the user's access token, a UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Uuid);

impl UserId {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        Uuid::parse_str(raw.trim())
            .map(Self)
            .map_err(|_| InvalidInput::new("user_id must be a UUID"))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for UserId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A plan id: lower-case letters, digits, `-` and `_`, at most 32 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct PlanId(String);

impl PlanId {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let valid = (1..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(InvalidInput::new(
                "plan_id must be 1-32 characters of a-z, 0-9, - and _",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PlanId {
    type Error = InvalidInput;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl fmt::Display for PlanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client-chosen idempotency key: 1-128 characters of `A-Za-z0-9._:-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        if raw.is_empty() {
            return Err(InvalidInput::new("idempotency_key is required"));
        }
        if raw.len() > 128 {
            return Err(InvalidInput::new(
                "idempotency_key must be at most 128 characters",
            ));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        {
            return Err(InvalidInput::new(
                "idempotency_key may contain only A-Z, a-z, 0-9, '.', '_', ':' and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_validate_on_construction() {
        assert!(UserId::parse("6f1c1f2e-8a4b-4b7e-9b1a-0c2d3e4f5a6b").is_ok());
        assert!(UserId::parse("alice").is_err());
        assert!(PlanId::parse("pro").is_ok());
        assert!(PlanId::parse("Pro").is_err());
        assert!(PlanId::parse("").is_err());
        assert!(PlanId::parse(&"p".repeat(33)).is_err());
    }

    #[test]
    fn idempotency_keys_are_bounded_and_plain() {
        assert!(IdempotencyKey::parse("run:42-a.b_c").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("a b").is_err());
        assert!(IdempotencyKey::parse("k'; DROP TABLE ledger;--").is_err());
    }
}

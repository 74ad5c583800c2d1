use super::InvalidInput;

/// A normalised email address: trimmed, lower-cased, ASCII only.
///
/// The accepted syntax is the common subset of RFC 5322 (dot-atom local part, DNS domain) that
/// mail providers actually hand out. Non-ASCII input is refused rather than normalised, so
/// look-alike characters and bidi controls cannot make two accounts that display the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

const LOCAL_SPECIALS: &[u8] = b".!#$%&'*+/=?^_`{|}~-";

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let email = raw.trim().to_ascii_lowercase();
        if email.is_empty() {
            return Err(InvalidInput("email is required"));
        }
        if email.len() > 254 {
            return Err(InvalidInput("email is too long"));
        }
        if !email.is_ascii() {
            return Err(InvalidInput("email must be ASCII"));
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return Err(InvalidInput("email must contain @"));
        };
        let local_ok = (1..=64).contains(&local.len())
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(&b))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if local_ok && domain_ok {
            Ok(Self(email))
        } else {
            Err(InvalidInput("email is not a valid address"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_whitespace() {
        assert_eq!(
            Email::parse("  Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        assert_eq!(
            Email::parse("o'brien+tag@mail.example.org")
                .unwrap()
                .as_str(),
            "o'brien+tag@mail.example.org"
        );
    }

    #[test]
    fn refuses_malformed_hostile_and_lookalike_addresses() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a..b@example.com",
            ".a@example.com",
            "a@-example.com",
            "a b@example.com",
            "x'; DROP TABLE users;--@example.com",
            "a@example.com\u{0}",
            "\u{0430}lice@example.com",
            "alice@ex\u{202e}ample.com",
            "alice\u{200b}@example.com",
            "\"quoted\"@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Email::parse(&format!("{}@example.com", "a".repeat(65))).is_err());
        assert!(Email::parse(&format!("a@{}.com", "b".repeat(250))).is_err());
    }
}

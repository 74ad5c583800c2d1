use secrecy::{ExposeSecret, SecretString};

use super::InvalidInput;

/// A password that meets the policy: at least 10 characters, at most 1 KiB, and not one of the
/// most common passwords. It never prints.
#[derive(Clone, Debug)]
pub struct Password(SecretString);

pub const MIN_CHARS: usize = 10;
pub const MAX_BYTES: usize = 1024;

/// Frequent entries of public breach corpora that meet the length rule.
const COMMON: &[&str] = &[
    "1234567890",
    "12345678910",
    "123456789a",
    "0123456789",
    "1111111111",
    "0000000000",
    "1q2w3e4r5t",
    "1qaz2wsx3edc",
    "abcdefghij",
    "abc1234567",
    "asdfghjkl;",
    "iloveyou12",
    "letmein123",
    "password12",
    "password123",
    "password1234",
    "password!1",
    "passw0rd123",
    "qwertyuiop",
    "qwerty1234",
    "qwerty12345",
    "qwerty123456",
    "welcome123",
    "monkey1234",
    "dragon1234",
    "football12",
    "baseball12",
    "sunshine12",
    "princess12",
    "trustno1234",
    "changeme123",
    "administrator",
    "admin12345",
    "adminadmin",
    "superman12",
    "starwars12",
    "1234qwerty",
    "zaq12wsxcde",
    "q1w2e3r4t5",
    "9876543210",
    "9876543210",
    "aaaaaaaaaa",
    "passwordpassword",
    "iloveyou123",
    "michael123",
    "charlie123",
    "liverpool1",
    "123123123123",
];

impl Password {
    pub fn parse(raw: String) -> Result<Self, InvalidInput> {
        if raw.len() > MAX_BYTES {
            return Err(InvalidInput("password must be at most 1024 bytes"));
        }
        if raw.chars().count() < MIN_CHARS {
            return Err(InvalidInput("password must be at least 10 characters"));
        }
        if raw.chars().any(char::is_control) {
            return Err(InvalidInput("password must not contain control characters"));
        }
        let lowered = raw.to_lowercase();
        if COMMON.contains(&lowered.as_str()) {
            return Err(InvalidInput("password is too common"));
        }
        Ok(Self(raw.into()))
    }

    /// A login attempt's password: only the size limit applies (the policy may have changed
    /// since the account was made, and the hash decides).
    pub fn for_login(raw: String) -> Result<Self, InvalidInput> {
        if raw.is_empty() {
            return Err(InvalidInput("password is required"));
        }
        if raw.len() > MAX_BYTES {
            return Err(InvalidInput("password must be at most 1024 bytes"));
        }
        Ok(Self(raw.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_length_and_common_list() {
        assert!(Password::parse("correct horse battery".into()).is_ok());
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("ünïcödé".into()).is_err());
        assert!(Password::parse("ünïcödé-ok!".into()).is_ok());
        assert!(Password::parse("x".repeat(1025)).is_err());
        assert!(Password::parse("x".repeat(1024)).is_ok());
        assert!(Password::parse("Password123".into()).is_err());
        assert!(Password::parse("QWERTYUIOP".into()).is_err());
        assert!(Password::parse("tab\there-and-more".into()).is_err());
    }

    #[test]
    fn never_prints() {
        let password = Password::parse("correct horse battery".into()).unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }
}

//! The one rule for names that travel between the services as data: catalogue tools and
//! meters, and agent names (which are also service-token audiences). `[a-z][a-z0-9_.-]{0,63}`
//! keeps a name safe in a Redis key, a ledger row, a metric label, a token audience and an
//! error message.

/// Longest name, in bytes (all ASCII).
pub const MAX_NAME_BYTES: usize = 64;

/// Whether `raw` is 1 to 64 of a-z, 0-9, `_`, `.` and `-`, starting with a letter.
pub fn is_name(raw: &str) -> bool {
    let mut bytes = raw.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && raw.len() <= MAX_NAME_BYTES
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_rule() {
        let longest = format!("a{}", "z".repeat(63));
        for good in ["search", "word_count", "crm.lookup-v2", "a", &longest] {
            assert!(is_name(good), "{good:?}");
        }
        let too_long = format!("a{}", "z".repeat(64));
        for bad in [
            "", "Search", "9lives", "_x", "a b", "tool:x", "é", "../etc", &too_long,
        ] {
            assert!(!is_name(bad), "{bad:?}");
        }
    }
}

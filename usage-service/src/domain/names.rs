//! Names the catalogue declares: meters and tools. Both follow one rule, `[a-z][a-z0-9_.-]{0,63}`,
//! so a name is safe in a Redis key, a ledger row, a metric label and an error message.

use std::fmt;

use super::{InvalidInput, printable};

use tollgate_shared::names::is_name as valid;

macro_rules! catalogue_name {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
                if valid(raw) {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(InvalidInput::new(format!(
                        concat!($what, " `{}` must be 1-64 characters of a-z, 0-9, '_', '.' and '-', starting with a letter"),
                        printable(raw)
                    )))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidInput;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

catalogue_name!(
    /// What `Consume` counts, as the catalogue declares it (`messages`, `agent_runs`,
    /// `tool_calls` are always declared).
    Meter,
    "meter"
);

catalogue_name!(
    /// A tool an agent may call: any name a plan lists or a `[[tools]]` entry declares.
    ToolName,
    "tool"
);

impl Meter {
    /// The meters every catalogue declares, since the gateway counts them itself.
    pub const BUILT_IN: [&'static str; 3] = ["messages", "agent_runs", "tool_calls"];

    /// The meter the gateway counts every WebSocket message on; every plan rates it.
    pub fn messages() -> Self {
        Self("messages".into())
    }

    /// Agent runs: a quota per billing month in the default catalogue.
    pub fn agent_runs() -> Self {
        Self("agent_runs".into())
    }

    /// Tool calls: what a tool call costs unless its entry says otherwise.
    pub fn tool_calls() -> Self {
        Self("tool_calls".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_rule() {
        for good in [
            "messages",
            "tool_calls",
            "a",
            "web.v2-beta",
            &"x".repeat(64),
        ] {
            assert_eq!(Meter::parse(good).unwrap().as_str(), good);
            assert_eq!(ToolName::parse(good).unwrap().to_string(), good);
        }
        for bad in [
            "",
            "Messages",
            "9lives",
            "_x",
            "a b",
            "a:b",
            "a{b}",
            "é",
            &"x".repeat(65),
        ] {
            assert!(Meter::parse(bad).is_err(), "{bad:?}");
            assert!(ToolName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_kind_and_echo_little() {
        let err = ToolName::parse(&"\u{202e}".repeat(100)).unwrap_err();
        assert!(err.0.starts_with("tool `"), "{}", err.0);
        assert!(err.0.len() < 160, "{}", err.0);
        assert!(
            Meter::parse("Bad")
                .unwrap_err()
                .0
                .starts_with("meter `Bad`")
        );
    }
}

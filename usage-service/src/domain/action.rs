use std::fmt;

use super::{InvalidInput, ToolName, printable};

/// Roles, each inheriting the permissions of the one before.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Member,
    Admin,
}

impl Role {
    /// What a user is granted when usage-service first sees it.
    pub const DEFAULT: Role = Role::Member;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        match raw {
            "viewer" => Ok(Self::Viewer),
            "member" => Ok(Self::Member),
            "admin" => Ok(Self::Admin),
            _ => Err(InvalidInput::new("role must be viewer, member or admin")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Member => "member",
            Self::Admin => "admin",
        }
    }
}

/// Something a role or a delegation grants. Parsing checks the shape only: whether a tool is
/// declared is the catalogue's question (`unknown_tool`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// `tool:<name>`: call a tool.
    Tool(ToolName),
    /// `admin:audit`: read the audit log.
    AdminAudit,
}

impl Permission {
    /// The least role that holds the `admin:audit` feature.
    pub const ADMIN_AUDIT_ROLE: Role = Role::Admin;

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        match raw.split_once(':') {
            Some(("tool", tool)) => ToolName::parse(tool).map(Self::Tool),
            Some(("admin", "audit")) => Ok(Self::AdminAudit),
            _ => Err(InvalidInput::new(format!(
                "unknown permission `{}`",
                printable(raw)
            ))),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tool(tool) => write!(f, "tool:{tool}"),
            Self::AdminAudit => f.write_str("admin:audit"),
        }
    }
}

/// What `Authorize` is asked about: an action is named by the permission it needs.
pub type Action = Permission;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Viewer < Role::Member && Role::Member < Role::Admin);
        for role in [Role::Viewer, Role::Member, Role::Admin] {
            assert_eq!(Role::parse(role.as_str()), Ok(role));
        }
        assert!(Role::parse("owner").is_err());
        assert!(Role::parse("Admin").is_err());
    }

    #[test]
    fn permissions_round_trip_and_malformed_ones_are_refused() {
        for raw in [
            "tool:search",
            "tool:code_interpreter",
            "tool:word_count",
            "tool:acme.v2-lookup",
            "admin:audit",
        ] {
            assert_eq!(Permission::parse(raw).unwrap().to_string(), raw);
        }
        for bad in [
            "admin:all",
            "search",
            "",
            "tool:",
            "tool:\u{0}",
            "tool:Search",
            "tool:9lives",
            "tool:a b",
        ] {
            assert!(Permission::parse(bad).is_err(), "{bad:?}");
        }
        let err = Permission::parse(&format!("x{}", "\u{202e}".repeat(100))).unwrap_err();
        assert!(err.0.len() < 80);
        let err = Permission::parse(&format!("tool:{}", "\u{202e}".repeat(100))).unwrap_err();
        assert!(err.0.len() < 140, "{}", err.0);
    }
}

use std::fmt;

use super::InvalidInput;

/// A tool an agent may call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tool {
    Search,
    Calculator,
    CodeInterpreter,
    WebBrowse,
    AdminAudit,
}

impl Tool {
    pub const ALL: [Tool; 5] = [
        Tool::Search,
        Tool::Calculator,
        Tool::CodeInterpreter,
        Tool::WebBrowse,
        Tool::AdminAudit,
    ];

    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        Self::ALL
            .into_iter()
            .find(|tool| tool.as_str() == raw)
            .ok_or_else(|| InvalidInput::new(format!("unknown tool `{}`", printable(raw))))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Search => "search",
            Self::Calculator => "calculator",
            Self::CodeInterpreter => "code_interpreter",
            Self::WebBrowse => "web_browse",
            Self::AdminAudit => "admin_audit",
        }
    }
}

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

    /// The permissions of this role, including inherited ones.
    pub fn permissions(self) -> Vec<Permission> {
        let viewer = [Permission::Tool(Tool::Search)];
        let member = [
            Permission::Tool(Tool::Calculator),
            Permission::Tool(Tool::CodeInterpreter),
            Permission::Tool(Tool::WebBrowse),
        ];
        let admin = [Permission::Tool(Tool::AdminAudit), Permission::AdminAudit];
        let mut permissions = viewer.to_vec();
        if self >= Self::Member {
            permissions.extend(member);
        }
        if self >= Self::Admin {
            permissions.extend(admin);
        }
        permissions
    }
}

/// Something a role or a delegation grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// `tool:<name>`: call a tool.
    Tool(Tool),
    /// `admin:audit`: read the audit log.
    AdminAudit,
}

impl Permission {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        match raw.split_once(':') {
            Some(("tool", tool)) => Tool::parse(tool).map(Self::Tool),
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
            Self::Tool(tool) => write!(f, "tool:{}", tool.as_str()),
            Self::AdminAudit => f.write_str("admin:audit"),
        }
    }
}

/// What `Authorize` is asked about: an action is named by the permission it needs.
pub type Action = Permission;

/// Echo at most a short, printable prefix of caller input in error messages.
fn printable(raw: &str) -> String {
    raw.chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_inherit_upwards() {
        let viewer = Role::Viewer.permissions();
        let member = Role::Member.permissions();
        let admin = Role::Admin.permissions();
        assert!(viewer.iter().all(|p| member.contains(p)));
        assert!(member.iter().all(|p| admin.contains(p)));
        assert!(!member.contains(&Permission::AdminAudit));
        assert!(admin.contains(&Permission::AdminAudit));
    }

    #[test]
    fn permissions_round_trip_and_unknown_ones_are_refused() {
        for raw in ["tool:search", "tool:code_interpreter", "admin:audit"] {
            assert_eq!(Permission::parse(raw).unwrap().to_string(), raw);
        }
        for bad in ["tool:teleport", "admin:all", "search", "", "tool:\u{0}"] {
            assert!(Permission::parse(bad).is_err(), "{bad:?}");
        }
        let err = Permission::parse(&format!("x{}", "\u{202e}".repeat(100))).unwrap_err();
        assert!(err.0.len() < 80);
    }
}

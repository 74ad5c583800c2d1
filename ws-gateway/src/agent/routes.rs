//! `GATEWAY_AGENTS`: which agent names a client may ask for, and where each one runs.
//!
//! `demo=builtin,support=http://support-agent:7000` routes `demo` to the agent compiled into
//! the process and `support` to a backend serving `tollgate.agent.v1.AgentBackend`. Parsed
//! once at startup, so a typo stops the gateway with one line instead of failing runs.

use std::{collections::BTreeMap, fmt, str::FromStr};

use tollgate_shared::names::{MAX_NAME_BYTES, is_name};

/// Where one agent runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The demo agent, in process (over the same protocol, without the network).
    Builtin,
    /// A backend at this `http://` or `https://` URL.
    Remote(String),
}

/// Agent name → route. The name is also the audience of the service token the gateway
/// presents to that backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRoutes(BTreeMap<String, Route>);

/// Why `GATEWAY_AGENTS` was refused; the message names the entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("GATEWAY_AGENTS: {0}")]
pub struct InvalidRoutes(String);

impl AgentRoutes {
    pub fn get(&self, agent: &str) -> Option<&Route> {
        self.0.get(agent)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.0.iter().map(|(name, route)| (name.as_str(), route))
    }
}

impl Default for AgentRoutes {
    fn default() -> Self {
        Self(BTreeMap::from([("demo".to_owned(), Route::Builtin)]))
    }
}

impl FromStr for AgentRoutes {
    type Err = InvalidRoutes;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let mut routes = BTreeMap::new();
        for entry in raw
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
        {
            let Some((name, target)) = entry.split_once('=') else {
                return Err(InvalidRoutes(format!(
                    "`{entry}` is not `name=builtin` or `name=http://host:port`"
                )));
            };
            let (name, target) = (name.trim(), target.trim());
            if !is_name(name) {
                return Err(InvalidRoutes(format!(
                    "agent name `{name}` must be 1 to {} of a-z, 0-9, `_`, `.` and `-`, starting with a letter",
                    MAX_NAME_BYTES
                )));
            }
            let route = match target {
                "builtin" => Route::Builtin,
                url if valid_url(url) => Route::Remote(url.to_owned()),
                _ => {
                    return Err(InvalidRoutes(format!(
                        "agent `{name}`: `{target}` is neither `builtin` nor an http:// or https:// URL"
                    )));
                }
            };
            if routes.insert(name.to_owned(), route).is_some() {
                return Err(InvalidRoutes(format!("agent `{name}` is listed twice")));
            }
        }
        if routes.is_empty() {
            return Err(InvalidRoutes("no agent is listed".into()));
        }
        Ok(Self(routes))
    }
}

impl fmt::Display for AgentRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, route)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match route {
                Route::Builtin => write!(f, "{name}=builtin")?,
                Route::Remote(url) => write!(f, "{name}={url}")?,
            }
        }
        Ok(())
    }
}

fn valid_url(url: &str) -> bool {
    url.parse::<http::Uri>()
        .is_ok_and(|uri| matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_routes_demo_to_the_builtin_agent() {
        let routes = AgentRoutes::default();
        assert_eq!(routes.get("demo"), Some(&Route::Builtin));
        assert_eq!(routes.to_string(), "demo=builtin");
        assert_eq!("demo=builtin".parse::<AgentRoutes>(), Ok(routes));
    }

    #[test]
    fn builtin_and_remote_backends_mix() {
        let routes: AgentRoutes =
            " demo=builtin , support=http://support-agent:7000,py=https://10.0.0.7:443 "
                .parse()
                .unwrap();
        assert_eq!(routes.get("demo"), Some(&Route::Builtin));
        assert_eq!(
            routes.get("support"),
            Some(&Route::Remote("http://support-agent:7000".into()))
        );
        assert_eq!(
            routes.get("py"),
            Some(&Route::Remote("https://10.0.0.7:443".into()))
        );
        assert_eq!(routes.get("unknown"), None);
        assert_eq!(routes.iter().count(), 3);
    }

    #[test]
    fn bad_routes_are_refused_with_one_line_naming_the_entry() {
        let cases = [
            ("", "no agent is listed"),
            ("demo", "`demo` is not `name=builtin`"),
            ("Demo=builtin", "agent name `Demo`"),
            ("=builtin", "agent name ``"),
            (
                "demo=builtin,demo=http://x:1",
                "agent `demo` is listed twice",
            ),
            ("x=ftp://host", "neither `builtin` nor"),
            ("x=http://", "neither `builtin` nor"),
            ("x=localhost:7000", "neither `builtin` nor"),
        ];
        for (raw, expected) in cases {
            let error = raw.parse::<AgentRoutes>().unwrap_err().to_string();
            assert!(error.starts_with("GATEWAY_AGENTS: "), "{raw}: {error}");
            assert!(error.contains(expected), "{raw}: {error}");
            assert!(!error.contains('\n'));
        }
        let long = format!("a{}=builtin", "b".repeat(64));
        assert!(long.parse::<AgentRoutes>().is_err());
    }
}

//! Unix accounts containers run as, and what a node reports about how it isolates them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest account name accepted (Linux `useradd` allows 32).
const MAX_ACCOUNT_NAME: usize = 32;

/// Checks that `name` is a portable Unix account name (`[a-z_][a-z0-9_-]*`, at most 32
/// characters) and not `root`. Both the RM (when it reads its user mapping) and the agent (when
/// it reads a token) call it, so a name that could smuggle a separator into a signed message or
/// name the superuser never reaches a launch.
pub fn check_account_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return Err("the Unix account name is empty".to_owned());
    };
    if name.len() > MAX_ACCOUNT_NAME {
        return Err(format!("Unix account name `{name}` is longer than {MAX_ACCOUNT_NAME} characters"));
    }
    let valid_first = first.is_ascii_lowercase() || first == '_';
    if !valid_first || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-') {
        return Err(format!(
            "`{name}` is not a Unix account name: use lowercase letters, digits, `_` and `-`, starting with a letter or `_`"
        ));
    }
    if name == "root" {
        return Err("containers never run as root: map the user to an unprivileged account".to_owned());
    }
    Ok(())
}

/// Whose account a node runs containers as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RunAs {
    /// The agent runs as root and starts each container as the account its token names
    /// (multi-tenant, as YARN's LinuxContainerExecutor).
    PerUser {
        /// Accounts with a lower uid are refused.
        min_uid: u32,
    },
    /// The agent is not root: every container runs as the agent's own account, whatever user
    /// submitted it. Tenants are not isolated from each other on this node (single-tenant).
    SingleUser { account: String, uid: u32 },
}

/// How a node isolates containers, reported at registration and shown by `spindle nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeIsolation {
    pub run_as: RunAs,
    /// How CPU and memory limits are applied (`cgroup v1 (memory, cpu)`, `sampling`, …) and, if
    /// the agent could not use cgroups, why.
    pub limits: String,
}

impl Default for NodeIsolation {
    /// What an agent that does not report it (an older one) is taken to be: single-tenant.
    fn default() -> Self {
        NodeIsolation {
            run_as: RunAs::SingleUser {
                account: "unknown".to_owned(),
                uid: u32::MAX,
            },
            limits: "unknown".to_owned(),
        }
    }
}

impl NodeIsolation {
    /// One short phrase for tables: `per-user` or `single-tenant (as alice)`.
    pub fn summary(&self) -> String {
        match &self.run_as {
            RunAs::PerUser { .. } => "per-user".to_owned(),
            RunAs::SingleUser { account, .. } => format!("single-tenant (as {account})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_portable_and_never_root() {
        for good in ["alice", "_spindle", "team-a", "u1000", "a"] {
            check_account_name(good).unwrap();
        }
        for bad in ["", "root", "Alice", "1abc", "a|b", "a b", "a/b", "../x", "a:b", &"x".repeat(33)] {
            assert!(check_account_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_account_name("root").unwrap_err().contains("never run as root"));
    }
}

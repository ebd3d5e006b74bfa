//! Whose Unix account a container runs as. An agent running as root starts each container as
//! the account its token names (looked up here, refused when it is root or below `min_uid`);
//! an agent that is not root can only run containers as itself (single-tenant).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use spindle_protocol::{NodeIsolation, RunAs};

/// Accounts with a uid below this are system accounts: containers never run as them (YARN's
/// `min.user.id`).
pub const DEFAULT_MIN_UID: u32 = 1000;

/// How long a looked-up account is reused: accounts change rarely, and a lookup reads
/// /etc/passwd and /etc/group, which would cost every launch.
const LOOKUP_TTL: Duration = Duration::from_secs(60);

/// Most supplementary groups taken from `getgrouplist` (Linux allows 65,536; real accounts
/// have a handful).
const MAX_GROUPS: usize = 1024;

/// A resolved Unix account, as a container's process gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary group included.
    pub groups: Vec<u32>,
}

/// Why a container may not run as the account its token names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    InvalidName(String),
    #[error("no Unix account `{0}` exists on this node: create it (useradd) or map the user to another account in the RM config")]
    Unknown(String),
    #[error("Unix account `{name}` has uid {uid}, below this node's min_uid {min_uid}: containers never run as system accounts")]
    BelowMinUid { name: String, uid: u32, min_uid: u32 },
    #[error("cannot look up Unix account `{name}`: {reason}")]
    Lookup { name: String, reason: String },
}

/// How this agent runs containers, decided once at start from its own effective uid.
#[derive(Debug)]
pub(crate) enum RunMode {
    /// Root: each container as its token's account.
    PerUser {
        min_uid: u32,
        cache: Mutex<HashMap<String, (Instant, Account)>>,
    },
    /// Not root: every container as the agent's own account.
    SingleUser(Account),
}

impl RunMode {
    /// Per-user when the agent runs as root, else single-tenant as the agent's own account.
    pub(crate) fn detect(min_uid: u32) -> Result<RunMode, AccountError> {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid == 0 {
            return Ok(RunMode::PerUser {
                min_uid,
                cache: Mutex::new(HashMap::new()),
            });
        }
        // SAFETY: getegid cannot fail.
        let egid = unsafe { libc::getegid() };
        let name = name_of_uid(euid).unwrap_or_else(|| euid.to_string());
        Ok(RunMode::SingleUser(Account {
            name,
            uid: euid,
            gid: egid,
            groups: Vec::new(),
        }))
    }

    /// What registration tells the RM about this mode.
    pub(crate) fn run_as(&self) -> RunAs {
        match self {
            RunMode::PerUser { min_uid, .. } => RunAs::PerUser { min_uid: *min_uid },
            RunMode::SingleUser(account) => RunAs::SingleUser {
                account: account.name.clone(),
                uid: account.uid,
            },
        }
    }

    /// The account a container whose token names `user` runs as; `None` means "as the agent
    /// itself, no change of identity" (single-tenant mode). Blocking (reads the account
    /// database): call from the blocking pool.
    pub(crate) fn account_for(&self, user: &str) -> Result<Option<Account>, AccountError> {
        spindle_protocol::check_account_name(user).map_err(AccountError::InvalidName)?;
        let (min_uid, cache) = match self {
            RunMode::SingleUser(_) => return Ok(None),
            RunMode::PerUser { min_uid, cache } => (*min_uid, cache),
        };
        if let Some((looked_up, account)) = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(user)
            && looked_up.elapsed() < LOOKUP_TTL
        {
            return Ok(Some(account.clone()));
        }
        let account = lookup(user)?;
        // Root (uid 0) is refused whatever min_uid says.
        if account.uid == 0 || account.uid < min_uid {
            return Err(AccountError::BelowMinUid {
                name: account.name,
                uid: account.uid,
                min_uid: min_uid.max(1),
            });
        }
        cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(user.to_owned(), (Instant::now(), account.clone()));
        Ok(Some(account))
    }

    /// One line for the agent's start-up log.
    pub(crate) fn describe(&self) -> String {
        match self {
            RunMode::PerUser { min_uid, .. } => {
                format!("containers run as their users' Unix accounts (uid >= {min_uid}, never root)")
            }
            RunMode::SingleUser(account) => format!(
                "single-tenant: the agent is not root, so every container runs as its own account `{}` (uid {}), \
                 whoever submitted it; run the agent as root to isolate tenants",
                account.name, account.uid
            ),
        }
    }
}

/// The isolation a node reports: run mode plus how limits are applied.
pub(crate) fn isolation(run_mode: &RunMode, limits: String) -> NodeIsolation {
    NodeIsolation {
        run_as: run_mode.run_as(),
        limits,
    }
}

/// Looks `name` up in the account database (getpwnam_r, getgrouplist).
pub(crate) fn lookup(name: &str) -> Result<Account, AccountError> {
    let c_name = CString::new(name).map_err(|_| AccountError::InvalidName(format!("`{name}` contains a NUL byte")))?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter; the buffer outlives the call and the
    // fields we read are copied before it is dropped.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let status = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if status != 0 {
        return Err(AccountError::Lookup {
            name: name.to_owned(),
            reason: std::io::Error::from_raw_os_error(status).to_string(),
        });
    }
    if found.is_null() {
        return Err(AccountError::Unknown(name.to_owned()));
    }
    let (uid, gid) = (entry.pw_uid, entry.pw_gid);
    let groups = group_list(&c_name, gid).map_err(|reason| AccountError::Lookup {
        name: name.to_owned(),
        reason,
    })?;
    Ok(Account {
        name: name.to_owned(),
        uid,
        gid,
        groups,
    })
}

fn group_list(name: &CStr, primary: u32) -> Result<Vec<u32>, String> {
    let mut count: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; count as usize];
        let asked = count;
        // SAFETY: `groups` holds `count` entries; getgrouplist writes at most that many and
        // sets `count` to the number it has.
        let result = unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut count) };
        if result >= 0 {
            groups.truncate(count as usize);
            return Ok(groups);
        }
        if count <= asked {
            count = asked * 2;
        }
        if count as usize > MAX_GROUPS {
            return Err(format!("the account is in more than {MAX_GROUPS} groups"));
        }
    }
}

fn name_of_uid(uid: u32) -> Option<String> {
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as in `lookup`.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let status = unsafe { libc::getpwuid_r(uid, &mut entry, buffer.as_mut_ptr(), buffer.len(), &mut found) };
    if status != 0 || found.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buffer`, NUL-terminated.
    Some(unsafe { CStr::from_ptr(entry.pw_name) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_system_accounts_are_refused() {
        let mode = RunMode::PerUser {
            min_uid: 1000,
            cache: Mutex::new(HashMap::new()),
        };
        assert!(matches!(mode.account_for("root"), Err(AccountError::InvalidName(_))));
        // `daemon` (uid 1) and `nobody` (65534) exist on every Debian system.
        assert!(matches!(mode.account_for("daemon"), Err(AccountError::BelowMinUid { uid: 1, .. })));
        let nobody = mode.account_for("nobody").unwrap().unwrap();
        assert_eq!(nobody.uid, 65534);
        assert!(nobody.groups.contains(&nobody.gid));
        assert!(matches!(mode.account_for("no-such-account-here"), Err(AccountError::Unknown(_))));
    }

    #[test]
    fn a_single_user_agent_never_changes_identity() {
        let mode = RunMode::SingleUser(Account {
            name: "me".to_owned(),
            uid: 1234,
            gid: 1234,
            groups: Vec::new(),
        });
        assert_eq!(mode.account_for("alice").unwrap(), None);
        assert!(mode.account_for("root").is_err(), "still a bad name");
        assert!(mode.describe().contains("single-tenant"));
    }
}

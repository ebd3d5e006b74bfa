//! Unix accounts made for the test, and file modes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub(super) fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A Unix account made for a test.
#[derive(Debug, Clone)]
pub(super) struct UnixAccount {
    pub(super) name: String,
    pub(super) uid: u32,
}

/// Unix accounts made for one test (normal uids, no home, no login) and removed when it ends,
/// a failing one included.
pub(super) struct TestAccounts(pub(super) Vec<UnixAccount>);

impl TestAccounts {
    /// `spindle-<tag>-<pid>` for each tag, with free uids from 42000 + (pid % 1000) * 2 up.
    pub(super) fn create(tags: &[&str]) -> TestAccounts {
        let pid = std::process::id();
        let mut accounts = TestAccounts(Vec::new());
        let mut uid = 42_000 + (pid % 1000) * 2;
        for tag in tags {
            let name = format!("spindle-{tag}-{pid}");
            // A leftover of an earlier run that had this pid and was killed.
            let _ = Command::new("userdel").args(["-f", &name]).output();
            let mut tries = 0;
            loop {
                tries += 1;
                assert!(tries <= 40, "could not create the Unix account {name}");
                if uid_taken(uid) {
                    uid += 1;
                    continue;
                }
                let output = Command::new("useradd")
                    .args(["-M", "-N", "-s", "/usr/sbin/nologin", "-u", &uid.to_string(), &name])
                    .output()
                    .expect("run useradd");
                if output.status.success() {
                    accounts.0.push(UnixAccount { name, uid });
                    uid += 1;
                    break;
                }
                // The uid was taken meanwhile, or /etc/passwd was locked by another useradd.
                eprintln!(
                    "useradd {name} (uid {uid}) failed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                uid += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        accounts
    }
}

pub(super) fn uid_taken(uid: u32) -> bool {
    Command::new("getent")
        .args(["passwd", &uid.to_string()])
        .output()
        .is_ok_and(|output| output.status.success())
}

impl Drop for TestAccounts {
    fn drop(&mut self) {
        for account in &self.0 {
            match Command::new("userdel").args(["-f", &account.name]).output() {
                Ok(output) if output.status.success() => {}
                Ok(output) => eprintln!(
                    "userdel {} failed: {}",
                    account.name,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
                Err(err) => eprintln!("cannot run userdel {}: {err}", account.name),
            }
        }
    }
}

pub(super) fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("chmod {mode:o} {}: {err}", path.display()));
}

pub(super) fn make_dir(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).unwrap_or_else(|err| panic!("create {}: {err}", path.display()));
    set_mode(path, mode);
}

pub(super) fn write_file(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    set_mode(path, mode);
}

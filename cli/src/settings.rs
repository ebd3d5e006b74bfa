//! Where the client finds its RM and token: flags over environment over
//! `$SPINDLE_HOME/config.toml`, and `http://127.0.0.1:8088` when nothing says otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::error::UsageError;

/// The RM address a client uses when nothing else names one (YARN's port).
pub const DEFAULT_RM_URL: &str = "http://127.0.0.1:8088";

/// Environment variables the CLI reads.
pub mod env {
    pub const HOME: &str = "SPINDLE_HOME";
    pub const RM: &str = "SPINDLE_RM";
    pub const TOKEN: &str = "SPINDLE_TOKEN";
    pub const CLUSTER_SECRET: &str = "SPINDLE_CLUSTER_SECRET";
    pub const JOIN_TOKEN: &str = "SPINDLE_JOIN_TOKEN";
}

/// What a client talks to, once every source has been consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub rm_urls: Vec<String>,
    pub token: Option<String>,
}

/// One source of settings (file, environment or flags); `None` leaves the choice to a lower one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsLayer {
    pub rm_urls: Option<Vec<String>>,
    pub token: Option<String>,
}

/// `$SPINDLE_HOME/config.toml`, as `spindle local` writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfigFile {
    /// One URL or a list of them.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "one_or_many")]
    pub rm: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match OneOrMany::deserialize(deserializer) {
        Ok(OneOrMany::One(url)) => Ok(Some(split_urls(&url))),
        Ok(OneOrMany::Many(urls)) => Ok(Some(urls.iter().flat_map(|url| split_urls(url)).collect())),
        Err(_) => Err(serde::de::Error::custom("`rm` must be a URL or a list of URLs")),
    }
}

/// `a, b,,c` → `[a, b, c]`: the comma-separated form of `--rm` and `SPINDLE_RM`.
pub fn split_urls(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `$SPINDLE_HOME`, else `~/.spindle`; `None` when there is no home directory either.
pub fn spindle_home(lookup_env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    match lookup_env(env::HOME).filter(|home| !home.is_empty()) {
        Some(home) => Some(PathBuf::from(home)),
        None => std::env::home_dir().map(|home| home.join(".spindle")),
    }
}

/// The process environment, with empty variables counting as unset.
/// `SPINDLE_CLUSTER_SECRET` and `SPINDLE_JOIN_TOKEN` as the process started with them (see
/// `take_secrets_from_env`).
static CLUSTER_SECRET_ENV: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
static JOIN_TOKEN_ENV: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Reads `SPINDLE_CLUSTER_SECRET` and `SPINDLE_JOIN_TOKEN` and removes them from the process
/// environment, so nothing the daemon starts later (a container, a helper) can inherit them.
/// Call before any other thread exists: changing the environment races with threads that read it.
pub fn take_secrets_from_env() {
    for (name, taken) in [(env::CLUSTER_SECRET, &CLUSTER_SECRET_ENV), (env::JOIN_TOKEN, &JOIN_TOKEN_ENV)] {
        let value = process_env(name);
        if value.is_some() {
            // SAFETY: called first thing in `main`, before the runtime starts any thread.
            unsafe { std::env::remove_var(name) };
        }
        let _ = taken.set(value);
    }
}

/// The cluster secret from the environment: as taken at start, else (tests that call `run`
/// directly) as the environment has it now.
pub fn cluster_secret_env() -> Option<String> {
    CLUSTER_SECRET_ENV
        .get()
        .cloned()
        .flatten()
        .or_else(|| process_env(env::CLUSTER_SECRET))
}

/// The join token from the environment, like `cluster_secret_env`.
pub fn join_token_env() -> Option<String> {
    JOIN_TOKEN_ENV.get().cloned().flatten().or_else(|| process_env(env::JOIN_TOKEN))
}

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// The client config file under `home`.
pub fn client_config_path(home: &Path) -> PathBuf {
    home.join("config.toml")
}

impl SettingsLayer {
    /// The file's settings; a missing file is an empty layer, a broken one an error naming it.
    pub fn from_file(path: &Path) -> anyhow::Result<SettingsLayer> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(SettingsLayer::default()),
            Err(err) => return Err(UsageError::new(format!("cannot read {}: {err}", path.display())).into()),
        };
        let file: ClientConfigFile =
            toml::from_str(&text).map_err(|err| UsageError::new(format!("{}: {}", path.display(), err.to_string().trim_end())))?;
        Ok(SettingsLayer {
            rm_urls: file.rm,
            token: file.token,
        })
    }

    pub fn from_env(lookup_env: impl Fn(&str) -> Option<String>) -> SettingsLayer {
        SettingsLayer {
            rm_urls: lookup_env(env::RM).map(|urls| split_urls(&urls)).filter(|urls| !urls.is_empty()),
            token: lookup_env(env::TOKEN),
        }
    }

    pub fn from_flags(rm: Option<&str>, token: Option<&str>) -> SettingsLayer {
        SettingsLayer {
            rm_urls: rm.map(split_urls).filter(|urls| !urls.is_empty()),
            token: token.map(str::to_owned),
        }
    }

    /// This layer, with what it leaves open taken from `lower`.
    fn over(self, lower: SettingsLayer) -> SettingsLayer {
        SettingsLayer {
            rm_urls: self.rm_urls.or(lower.rm_urls),
            token: self.token.or(lower.token),
        }
    }
}

impl ClientSettings {
    /// Flags win over the environment, which wins over the file.
    pub fn resolve(file: SettingsLayer, env: SettingsLayer, flags: SettingsLayer) -> ClientSettings {
        let merged = flags.over(env).over(file);
        ClientSettings {
            rm_urls: merged.rm_urls.unwrap_or_else(|| vec![DEFAULT_RM_URL.to_owned()]),
            token: merged.token,
        }
    }

    /// Reads the real file and environment.
    pub fn load(rm_flag: Option<&str>, token_flag: Option<&str>) -> anyhow::Result<ClientSettings> {
        let file = match spindle_home(process_env) {
            Some(home) => SettingsLayer::from_file(&client_config_path(&home))?,
            None => SettingsLayer::default(),
        };
        let env = SettingsLayer::from_env(process_env);
        Ok(ClientSettings::resolve(file, env, SettingsLayer::from_flags(rm_flag, token_flag)))
    }
}

/// Writes `contents` to `path` readable by its owner only (0600), replacing it atomically; a
/// missing directory is created owner-only (0700). An existing directory keeps its mode.
pub fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty() && !dir.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            // mkdir's mode loses the umask's bits; this one is exact.
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let staging = path.with_extension("tmp");
    let _ = std::fs::remove_file(&staging);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staging)
        .with_context(|| format!("cannot write {}", staging.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", staging.display()))?;
    std::fs::rename(&staging, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(rm: Option<&str>, token: Option<&str>) -> SettingsLayer {
        SettingsLayer::from_flags(rm, token)
    }

    #[test]
    fn flags_beat_env_beat_file() {
        let file = layer(Some("file:1"), Some("file-token"));
        let env = layer(Some("env:1"), Some("env-token"));
        let flags = layer(Some("flag:1,flag:2"), Some("flag-token"));
        let settings = ClientSettings::resolve(file.clone(), env.clone(), flags);
        assert_eq!(settings.rm_urls, ["flag:1", "flag:2"]);
        assert_eq!(settings.token.as_deref(), Some("flag-token"));

        let settings = ClientSettings::resolve(file.clone(), env, SettingsLayer::default());
        assert_eq!(
            (settings.rm_urls[0].as_str(), settings.token.as_deref()),
            ("env:1", Some("env-token"))
        );

        let settings = ClientSettings::resolve(file, layer(None, Some("env-token")), SettingsLayer::default());
        assert_eq!(
            (settings.rm_urls[0].as_str(), settings.token.as_deref()),
            ("file:1", Some("env-token"))
        );
    }

    #[test]
    fn nothing_configured_means_the_local_default_and_no_token() {
        let settings = ClientSettings::resolve(SettingsLayer::default(), SettingsLayer::default(), SettingsLayer::default());
        assert_eq!(
            settings,
            ClientSettings {
                rm_urls: vec![DEFAULT_RM_URL.to_owned()],
                token: None
            }
        );
    }

    #[test]
    fn env_is_read_through_the_lookup_and_empty_lists_count_as_unset() {
        let env = SettingsLayer::from_env(|name| match name {
            env::RM => Some(" a:1 , b:2 ".to_owned()),
            env::TOKEN => Some("t".to_owned()),
            _ => None,
        });
        assert_eq!(
            env,
            SettingsLayer {
                rm_urls: Some(vec!["a:1".into(), "b:2".into()]),
                token: Some("t".into())
            }
        );
        assert_eq!(SettingsLayer::from_flags(Some(","), None), SettingsLayer::default());
    }

    #[test]
    fn the_file_takes_one_url_or_a_list_and_refuses_typos() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(SettingsLayer::from_file(&path).unwrap(), SettingsLayer::default());

        std::fs::write(&path, "rm = [\"http://a:1\", \"http://b:2\"]\ntoken = \"t\"\n").unwrap();
        let file = SettingsLayer::from_file(&path).unwrap();
        assert_eq!(file.rm_urls.unwrap(), ["http://a:1", "http://b:2"]);
        std::fs::write(&path, "rm = \"http://a:1\"\n").unwrap();
        assert_eq!(SettingsLayer::from_file(&path).unwrap().rm_urls.unwrap(), ["http://a:1"]);

        std::fs::write(&path, "rm = \"http://a:1\"\ntokn = \"t\"\n").unwrap();
        let err = SettingsLayer::from_file(&path).unwrap_err();
        assert!(err.is::<UsageError>());
        assert!(err.to_string().contains("tokn") && err.to_string().contains("config.toml"), "{err}");
    }

    #[test]
    fn private_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home/config.toml");
        write_private_file(&path, "token = \"x\"\n").unwrap();
        write_private_file(&path, "token = \"y\"\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "token = \"y\"\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}

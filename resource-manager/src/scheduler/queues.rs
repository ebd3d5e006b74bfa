//! The queue tree as written in the RM's TOML config, validated once into a flat, indexed
//! [`QueueTree`] the scheduler can walk without string look-ups.
//!
//! ```toml
//! [queues]
//! name = "root"
//! [[queues.children]]
//! name = "batch"
//! guaranteed_percent = 70
//! maximum_percent = 100
//! user_limit_percent = 50
//! submit_users = ["*"]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use spindle_protocol::Resources;

/// Who may do something: a list of user names, `*` meaning everyone.
const EVERYONE: &str = "*";

/// One queue as written in the config file; `children` makes it a parent queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Short name, `[a-z0-9_-]+`; apps name their leaf queue by it.
    pub name: String,
    /// Share of the parent's resources this queue is promised; required except on `root`.
    #[serde(default)]
    pub guaranteed_percent: Option<u32>,
    /// Share of the parent's resources this queue may grow to by borrowing idle capacity.
    #[serde(default = "default_maximum_percent")]
    pub maximum_percent: u32,
    /// Largest share of this queue's maximum that one user may hold.
    #[serde(default = "default_user_limit_percent")]
    pub user_limit_percent: u32,
    /// Largest share of this queue's maximum that AM containers may hold.
    #[serde(default = "default_am_share_percent")]
    pub am_share_percent: u32,
    /// Users allowed to submit to this queue (`*` = everyone).
    #[serde(default = "everyone")]
    pub submit_users: Vec<String>,
    /// Users allowed to administer this queue and its descendants (`*` = everyone).
    #[serde(default)]
    pub admin_users: Vec<String>,
    /// Node labels apps of this queue (and its descendants) may run on (`*` = all).
    #[serde(default)]
    pub accessible_labels: Vec<String>,
    /// Sub-queues; a queue without children is a leaf and the only kind that holds apps.
    #[serde(default)]
    pub children: Vec<QueueConfig>,
}

impl Default for QueueConfig {
    /// `root` with one leaf, `default`, that has the whole cluster: what an RM without a
    /// `[queues]` section runs with.
    fn default() -> Self {
        let leaf = |name: &str, guaranteed_percent| QueueConfig {
            name: name.to_owned(),
            guaranteed_percent,
            maximum_percent: default_maximum_percent(),
            user_limit_percent: default_user_limit_percent(),
            am_share_percent: default_am_share_percent(),
            submit_users: everyone(),
            admin_users: Vec::new(),
            accessible_labels: Vec::new(),
            children: Vec::new(),
        };
        QueueConfig {
            children: vec![leaf("default", Some(100))],
            ..leaf("root", None)
        }
    }
}

fn default_maximum_percent() -> u32 {
    100
}
fn default_user_limit_percent() -> u32 {
    100
}
fn default_am_share_percent() -> u32 {
    10
}
fn everyone() -> Vec<String> {
    vec![EVERYONE.to_owned()]
}

/// What is wrong with a queue config: the queue's path (`root.batch`) and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueConfigError {
    #[error("queue `{path}`: field `{field}`: {problem}")]
    InvalidField {
        path: String,
        field: &'static str,
        problem: String,
    },
    #[error("queue `{path}`: field `children`: guaranteed_percent of the children sums to {sum}, more than 100")]
    GuaranteesOverCommitted { path: String, sum: u32 },
    #[error("queue `{path}`: field `name`: leaf name `{name}` is already used by `{other_path}`; leaf names must be unique")]
    DuplicateLeafName { path: String, name: String, other_path: String },
}

/// Index of a queue in [`QueueTree::queues`]; the root is 0, parents come before children.
pub type QueueIndex = usize;

/// One validated queue, with its share of the whole cluster worked out.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    /// Dotted path from the root, e.g. `root.batch`; what messages show.
    pub path: String,
    pub name: String,
    pub parent: Option<QueueIndex>,
    pub children: Vec<QueueIndex>,
    /// Fraction of the cluster guaranteed: the product of the percentages down from the root.
    pub guaranteed_fraction: f64,
    /// Fraction of the cluster this queue may reach, bounded by every ancestor's maximum.
    pub maximum_fraction: f64,
    /// The configured percentages of the parent, as written (for reports).
    pub guaranteed_percent: u32,
    pub maximum_percent: u32,
    pub user_limit_percent: u32,
    pub am_share_percent: u32,
    pub submit_users: Vec<String>,
    pub admin_users: Vec<String>,
    /// Node labels this queue may use: its own list plus its ancestors'.
    pub accessible_labels: Vec<String>,
}

impl Queue {
    /// Whether apps of this queue may run on nodes carrying `label`.
    pub fn may_use_label(&self, label: &str) -> bool {
        allows(&self.accessible_labels, label)
    }

    pub fn is_leaf(&self) -> bool {
        self.children.is_empty()
    }
}

/// A queue's absolute resources for one cluster capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCapacity {
    pub guaranteed: Resources,
    pub maximum: Resources,
}

/// The validated queue tree: flat, parents before children, leaves findable by name.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueTree {
    /// All queues, root first, in config order (depth first).
    pub queues: Vec<Queue>,
    /// Leaf name → index; only leaves hold apps, so only leaves are here.
    leaves_by_name: BTreeMap<String, QueueIndex>,
}

impl QueueTree {
    /// Validates a config tree; every error names the queue path and the field.
    pub fn from_config(root: &QueueConfig) -> Result<QueueTree, QueueConfigError> {
        if root.name != "root" {
            return Err(invalid(
                "root",
                "name",
                format!("the top queue must be named `root`, not `{}`", root.name),
            ));
        }
        for (field, value) in [
            ("guaranteed_percent", root.guaranteed_percent.unwrap_or(100)),
            ("maximum_percent", root.maximum_percent),
        ] {
            if value != 100 {
                return Err(invalid("root", field, format!("root always has 100% of the cluster, not {value}")));
            }
        }
        let mut tree = QueueTree {
            queues: Vec::new(),
            leaves_by_name: BTreeMap::new(),
        };
        tree.add(root, None, "root".to_owned(), 1.0, 1.0)?;
        Ok(tree)
    }

    fn add(
        &mut self,
        config: &QueueConfig,
        parent: Option<QueueIndex>,
        path: String,
        guaranteed_fraction: f64,
        maximum_fraction: f64,
    ) -> Result<QueueIndex, QueueConfigError> {
        validate_own_fields(config, &path)?;
        let index = self.queues.len();
        self.queues.push(Queue {
            path: path.clone(),
            name: config.name.clone(),
            parent,
            children: Vec::new(),
            guaranteed_fraction,
            maximum_fraction,
            guaranteed_percent: config.guaranteed_percent.unwrap_or(100),
            maximum_percent: config.maximum_percent,
            user_limit_percent: config.user_limit_percent,
            am_share_percent: config.am_share_percent,
            submit_users: config.submit_users.clone(),
            admin_users: config.admin_users.clone(),
            accessible_labels: {
                let mut labels = parent
                    .map(|parent| self.queues[parent].accessible_labels.clone())
                    .unwrap_or_default();
                labels.extend(config.accessible_labels.iter().cloned());
                labels.sort();
                labels.dedup();
                labels
            },
        });
        if config.children.is_empty() {
            if let Some(&other) = self.leaves_by_name.get(&config.name) {
                return Err(QueueConfigError::DuplicateLeafName {
                    path,
                    name: config.name.clone(),
                    other_path: self.queues[other].path.clone(),
                });
            }
            self.leaves_by_name.insert(config.name.clone(), index);
            return Ok(index);
        }
        let sum: u32 = config.children.iter().map(|child| child.guaranteed_percent.unwrap_or(0)).sum();
        if sum > 100 {
            return Err(QueueConfigError::GuaranteesOverCommitted { path, sum });
        }
        let mut sibling_names = BTreeMap::new();
        for child in &config.children {
            let child_path = format!("{path}.{}", child.name);
            if sibling_names.insert(child.name.as_str(), ()).is_some() {
                return Err(invalid(&child_path, "name", "two children of one queue have this name".to_owned()));
            }
            let Some(guaranteed_percent) = child.guaranteed_percent else {
                return Err(invalid(
                    &child_path,
                    "guaranteed_percent",
                    "missing; every queue but root needs one".to_owned(),
                ));
            };
            let child_index = self.add(
                child,
                Some(index),
                child_path,
                guaranteed_fraction * f64::from(guaranteed_percent) / 100.0,
                maximum_fraction * f64::from(child.maximum_percent) / 100.0,
            )?;
            self.queues[index].children.push(child_index);
        }
        Ok(index)
    }

    /// Names of the leaf queues, sorted (for messages that list the choices).
    pub fn leaf_names(&self) -> impl Iterator<Item = &str> {
        self.leaves_by_name.keys().map(String::as_str)
    }

    /// The leaf queue called `name`; `None` for unknown names and for parent queues.
    pub fn leaf(&self, name: &str) -> Option<QueueIndex> {
        self.leaves_by_name.get(name).copied()
    }

    /// Absolute guaranteed and maximum resources of every queue (indexed like `queues`).
    pub fn capacities(&self, cluster: Resources) -> Vec<QueueCapacity> {
        self.queues
            .iter()
            .map(|queue| QueueCapacity {
                guaranteed: scale(cluster, queue.guaranteed_fraction),
                maximum: scale(cluster, queue.maximum_fraction),
            })
            .collect()
    }

    /// Whether `user` may submit to leaf `queue`: listed there, or an admin of it.
    pub fn can_submit(&self, queue: QueueIndex, user: &str) -> bool {
        allows(&self.queues[queue].submit_users, user) || self.can_administer(queue, user)
    }

    /// Whether `user` administers `queue`: listed as admin on it or on any ancestor.
    pub fn can_administer(&self, queue: QueueIndex, user: &str) -> bool {
        let mut current = Some(queue);
        while let Some(index) = current {
            if allows(&self.queues[index].admin_users, user) {
                return true;
            }
            current = self.queues[index].parent;
        }
        false
    }
}

/// `fraction` of `cluster`, rounded down so guarantees never sum past the cluster.
pub(crate) fn scale(cluster: Resources, fraction: f64) -> Resources {
    Resources::new(
        (f64::from(cluster.vcores) * fraction).floor() as u32,
        (cluster.memory_mb as f64 * fraction).floor() as u64,
    )
}

fn allows(list: &[String], user: &str) -> bool {
    list.iter().any(|entry| entry == EVERYONE || entry == user)
}

fn invalid(path: &str, field: &'static str, problem: String) -> QueueConfigError {
    QueueConfigError::InvalidField {
        path: path.to_owned(),
        field,
        problem,
    }
}

fn validate_own_fields(config: &QueueConfig, path: &str) -> Result<(), QueueConfigError> {
    let name_ok = !config.name.is_empty()
        && config
            .name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-');
    if !name_ok {
        return Err(invalid(path, "name", format!("`{}` must match [a-z0-9_-]+", config.name)));
    }
    if config.maximum_percent == 0 || config.maximum_percent > 100 {
        return Err(invalid(
            path,
            "maximum_percent",
            format!("{} is not in 1..=100", config.maximum_percent),
        ));
    }
    if let Some(guaranteed) = config.guaranteed_percent
        && guaranteed > config.maximum_percent
    {
        return Err(invalid(
            path,
            "guaranteed_percent",
            format!("{guaranteed} is above maximum_percent {}", config.maximum_percent),
        ));
    }
    for (field, value) in [
        ("user_limit_percent", config.user_limit_percent),
        ("am_share_percent", config.am_share_percent),
    ] {
        if value == 0 || value > 100 {
            return Err(invalid(path, field, format!("{value} is not in 1..=100")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<QueueTree, QueueConfigError> {
        let config: QueueConfig = toml::from_str(text).expect("config parses");
        QueueTree::from_config(&config)
    }

    const TWO_TEAMS: &str = r#"
        name = "root"
        [[children]]
        name = "prod"
        guaranteed_percent = 60
        [[children.children]]
        name = "streaming"
        guaranteed_percent = 50
        maximum_percent = 80
        am_share_percent = 20
        submit_users = ["alice"]
        [[children.children]]
        name = "etl"
        guaranteed_percent = 50
        [[children]]
        name = "batch"
        guaranteed_percent = 40
        maximum_percent = 50
        user_limit_percent = 25
        admin_users = ["bob"]
    "#;

    #[test]
    fn parses_a_tree_and_works_out_absolute_capacities() {
        let tree = parse(TWO_TEAMS).unwrap();
        let paths: Vec<&str> = tree.queues.iter().map(|q| q.path.as_str()).collect();
        assert_eq!(paths, ["root", "root.prod", "root.prod.streaming", "root.prod.etl", "root.batch"]);
        let streaming = tree.leaf("streaming").unwrap();
        assert_eq!(tree.leaf("prod"), None, "parents hold no apps");
        let capacities = tree.capacities(Resources::new(100, 100_000));
        assert_eq!(capacities[streaming].guaranteed, Resources::new(30, 30_000));
        assert_eq!(capacities[streaming].maximum, Resources::new(80, 80_000));
        assert_eq!(capacities[tree.leaf("batch").unwrap()].maximum, Resources::new(50, 50_000));
        assert_eq!(tree.queues[streaming].am_share_percent, 20);
        assert_eq!(tree.queues[tree.leaf("etl").unwrap()].am_share_percent, 10);
    }

    #[test]
    fn acls_allow_listed_users_admins_and_stars() {
        let tree = parse(TWO_TEAMS).unwrap();
        let streaming = tree.leaf("streaming").unwrap();
        let batch = tree.leaf("batch").unwrap();
        assert!(tree.can_submit(streaming, "alice"));
        assert!(!tree.can_submit(streaming, "mallory"));
        assert!(tree.can_submit(batch, "mallory"), "default submit list is *");
        assert!(tree.can_administer(batch, "bob"));
        assert!(!tree.can_administer(streaming, "bob"));
    }

    #[test]
    fn errors_name_the_queue_path_and_field() {
        let cases = [
            (
                TWO_TEAMS.replace("guaranteed_percent = 40", "guaranteed_percent = 41"),
                "queue `root`: field `children`",
            ),
            (
                TWO_TEAMS.replace("maximum_percent = 80", "maximum_percent = 40"),
                "queue `root.prod.streaming`: field `guaranteed_percent`",
            ),
            (
                TWO_TEAMS.replace("maximum_percent = 50", "maximum_percent = 0"),
                "queue `root.batch`: field `maximum_percent`",
            ),
            (
                TWO_TEAMS.replace("name = \"etl\"", "name = \"batch\""),
                "queue `root.batch`: field `name`: leaf name `batch` is already used by `root.prod.batch`",
            ),
            (
                TWO_TEAMS.replace("name = \"etl\"", "name = \"ETL\""),
                "queue `root.prod.ETL`: field `name`",
            ),
            (
                TWO_TEAMS.replace("user_limit_percent = 25", "user_limit_percent = 101"),
                "queue `root.batch`: field `user_limit_percent`",
            ),
            (
                TWO_TEAMS.replace("guaranteed_percent = 60", ""),
                "queue `root.prod`: field `guaranteed_percent`: missing",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{error:?} should start with {expected:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = toml::from_str::<QueueConfig>("name = \"root\"\ncapacity = 3\n").unwrap_err();
        assert!(error.to_string().contains("unknown field `capacity`"), "{error}");
    }
}

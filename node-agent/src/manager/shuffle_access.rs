//! The manager's side of the shuffle (`crate::shuffle`): who may read an app's map output, where
//! it lives, and deleting it once the RM says the app has ended.

use std::path::PathBuf;
use std::sync::Arc;

use spindle_protocol::{AppId, ContainerState};

use super::ContainerManager;
use crate::AgentError;
use crate::recovery;
use crate::shuffle;

impl ContainerManager {
    /// Admits the app's shuffle token only: the agent hands it to the app's own containers.
    pub(crate) fn authorize_shuffle(&self, app_id: AppId, bearer: &str) -> Result<(), AgentError> {
        let known = self
            .lock()
            .shuffle_tokens
            .get(&app_id)
            .is_some_and(|token| spindle_protocol::constant_time_eq(token.as_bytes(), bearer.as_bytes()));
        if known {
            return Ok(());
        }
        Err(AgentError::Unauthorized(format!(
            "the bearer token is not the shuffle token of app {app_id}: only its own tasks (SPINDLE_SHUFFLE_TOKEN) read its map output"
        )))
    }

    /// Tests write map output without launching a task of the app first.
    #[cfg(test)]
    pub(crate) fn learn_shuffle_token(&self, app_id: AppId, token: String) {
        self.lock().shuffle_tokens.insert(app_id, token);
    }

    /// `<work_dir>/shuffle/<app_id>`.
    pub(crate) fn app_shuffle_dir(&self, app_id: AppId) -> PathBuf {
        shuffle::app_shuffle_dir(&self.context.work_dir, app_id)
    }

    /// Deletes the shuffle data of `apps` in the background (the RM's `cleanup_apps`).
    pub(crate) fn start_shuffle_cleanup(self: &Arc<Self>, apps: Vec<AppId>) {
        if apps.is_empty() {
            return;
        }
        let manager = Arc::clone(self);
        self.tasks.spawn(async move {
            manager.clean_up_shuffle(&apps).await;
        });
    }

    /// Deletes the shuffle directories of `apps`, except those of apps that still have a
    /// container running here (the RM thinks otherwise, so it will kill it and list the app
    /// again); returns the apps whose directory is gone. Idempotent: the RM repeats its list.
    pub(crate) async fn clean_up_shuffle(&self, apps: &[AppId]) -> Vec<AppId> {
        let (doomed, busy): (Vec<AppId>, Vec<AppId>) = {
            let state = self.lock();
            apps.iter().partition(|app_id| {
                !state
                    .containers
                    .iter()
                    .any(|(container_id, record)| container_id.app == **app_id && record.status.state == ContainerState::Running)
            })
        };
        // The ended apps' shuffle tokens go with their data (a late reducer gets 401, as for
        // data that is gone).
        {
            let mut state = self.lock();
            for app_id in &doomed {
                state.shuffle_tokens.remove(app_id);
                recovery::forget_shuffle_token(&self.context.work_dir, *app_id);
            }
        }
        for app_id in busy {
            tracing::debug!(app_id = %app_id, "not deleting shuffle data: a container of the app still runs here");
        }
        let mut removed = Vec::with_capacity(doomed.len());
        for app_id in doomed {
            let dir = self.app_shuffle_dir(app_id);
            let result = tokio::task::spawn_blocking(move || shuffle::remove_app_shuffle_dir(&dir)).await;
            match result {
                Ok(Ok(0)) => removed.push(app_id),
                Ok(Ok(bytes)) => {
                    tracing::info!(app_id = %app_id, bytes, "deleted the shuffle data of an ended app");
                    removed.push(app_id);
                }
                Ok(Err(err)) => tracing::warn!(app_id = %app_id, error = %err, "cannot delete the shuffle data of an ended app"),
                Err(err) => tracing::warn!(app_id = %app_id, error = %err, "the shuffle clean-up task failed"),
            }
        }
        removed
    }
}

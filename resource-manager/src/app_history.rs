//! Reports of apps wherever they are: in memory, or (ended beyond `finished_apps_in_memory`)
//! only in the store. Memory is asked first, under the state lock; the store is read after the
//! lock is released and once what memory showed is durable, so a history read never holds up
//! heartbeats and allocates.

use spindle_protocol::{AppId, AppReport, ContainerId, ContainerReport};

use crate::cluster::{AppError, AppQuery, Caller, ContainerLocation, merge_app_pages};
use crate::service::ResourceManager;
use crate::store::StoreError;

/// Why a report could not be made: the app's own answer (not found, forbidden), or the store,
/// which holds the history, could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("cannot read the history of ended apps from the store ({0}); retry in a moment")]
    Store(#[from] StoreError),
}

impl ResourceManager {
    /// A page of apps, newest first, as `caller` may see them (see `Cluster::app_page_for`).
    pub async fn app_reports(&self, caller: &Caller, query: &AppQuery) -> Result<Vec<AppReport>, HistoryError> {
        let (memory, history) = self.read(|cluster| cluster.app_page_for(caller, query)).await;
        let Some(history) = history else {
            return Ok(memory);
        };
        let records = self.store.app_history(&history).await?;
        let cluster = self.state().lock().await;
        let stored = records
            .into_iter()
            .map(|record| cluster.stored_app_report_for(caller, record))
            .collect();
        Ok(merge_app_pages(memory, stored, query.limit))
    }

    /// One app's report as `caller` may see it.
    pub async fn app_report(&self, caller: &Caller, app_id: AppId) -> Result<AppReport, HistoryError> {
        if let Some(report) = self.read(|cluster| cluster.app_report_for(caller, app_id)).await {
            return Ok(report);
        }
        let (record, _) = self.stored_app(app_id).await?;
        Ok(self.state().lock().await.stored_app_report_for(caller, record))
    }

    /// One app's containers, by id, as `caller` may see them.
    pub async fn container_reports(&self, caller: &Caller, app_id: AppId) -> Result<Vec<ContainerReport>, HistoryError> {
        if let Some(reports) = self.read(|cluster| cluster.container_reports_for(caller, app_id)).await {
            return Ok(reports);
        }
        let (record, containers) = self.stored_app(app_id).await?;
        Ok(self.state().lock().await.stored_container_reports_for(caller, &record, containers))
    }

    /// Where a container runs or ran, if `caller` may read its logs.
    pub async fn container_location(&self, caller: &Caller, container_id: ContainerId) -> Result<ContainerLocation, HistoryError> {
        match self.read(|cluster| cluster.container_logs_location(caller, container_id)).await {
            Err(AppError::ContainerNotFound(_)) => {}
            answered => return Ok(answered?),
        }
        let not_found = || HistoryError::App(AppError::ContainerNotFound(container_id));
        let (app, containers) = self.stored_app(container_id.app).await.map_err(|err| match err {
            HistoryError::App(_) => not_found(),
            store => store,
        })?;
        let container = containers
            .iter()
            .find(|container| container.container_id == container_id)
            .ok_or_else(not_found)?;
        Ok(self.state().lock().await.stored_container_location(caller, &app, container)?)
    }

    /// Why `caller` cannot kill `app_id`, which memory does not hold: it ended and left
    /// memory (409, or 403 for who may not administer it, as while it was in memory), or it
    /// never was (404).
    pub async fn kill_refused_from_history(&self, caller: &Caller, app_id: AppId) -> HistoryError {
        match self.stored_app(app_id).await {
            Ok((record, _)) => {
                let cluster = self.state().lock().await;
                let refused = cluster.kill_refusal(caller, &record);
                HistoryError::App(refused.unwrap_or_else(|| {
                    // The store holds only ended apps that memory does not: a live one would be in memory.
                    AppError::Conflict(format!("{app_id} already ended as {}", record.state.as_str()))
                }))
            }
            Err(err) => err,
        }
    }

    /// An app that has left memory, with its containers, from the store; `NotFound` if the
    /// store has none either (never submitted, or purged by retention).
    async fn stored_app(&self, app_id: AppId) -> Result<(crate::records::AppRecord, Vec<crate::records::ContainerRecord>), HistoryError> {
        self.store
            .app_with_containers(app_id)
            .await?
            .ok_or(HistoryError::App(AppError::NotFound(app_id)))
    }
}

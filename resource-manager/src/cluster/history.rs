//! Ended apps leaving memory, and their reports read back from the store.
//!
//! Memory holds every app that has not ended and the last `finished_apps_in_memory` that did
//! (YARN's `max-completed-applications`), each with its containers; older ended apps leave it
//! (oldest first) and live on in the store until retention (`retain_finished`) purges them.
//! `newest_evicted` marks where memory stops being complete: a list of apps is answered from
//! memory alone when its page ends above that app, and is merged with the store's otherwise.
//! The service does the store reads (outside the state lock); this file only decides and
//! builds reports.

use std::collections::BTreeMap;

use spindle_protocol::{AppId, AppReport, ContainerId, ContainerReport};

use super::reports::{AppQuery, app_report, container_report};
use super::view_acl::{redact_app_report, redact_container_report};
use super::{App, AppError, Caller, Cluster, Container, ContainerLocation};
use crate::records::{AppRecord, ContainerRecord};

impl Cluster {
    /// An app's containers in memory, by id.
    pub(super) fn containers_of(&self, app_id: AppId) -> impl Iterator<Item = &Container> {
        let first = ContainerId {
            app: app_id,
            attempt: 0,
            epoch: 0,
            seq: 0,
        };
        self.containers
            .range(first..)
            .take_while(move |(id, _)| id.app == app_id)
            .map(|(_, container)| container)
    }

    /// Drops the ended apps beyond `finished_apps_in_memory`, oldest first, and returns them.
    /// Run at the start of a change (`tick`), when nothing is marked for the store, so no
    /// write of an evicted app is lost. An ended app whose AM container is still exiting stays
    /// (with the ones behind it) until that container's completion is in.
    pub(super) fn evict_finished(&mut self) -> Vec<AppId> {
        let mut evicted = Vec::new();
        while self.ended.len() > self.settings.finished_apps_in_memory {
            let app_id = self.ended[0];
            if self.apps.get(&app_id).is_some_and(|app| !app.live.is_empty()) {
                break;
            }
            self.ended.pop_front();
            if self.drop_app(app_id) {
                self.newest_evicted = self.newest_evicted.max(Some(app_id));
                evicted.push(app_id);
            }
        }
        evicted
    }

    /// Forgets an app and its containers (not its store rows); `false` if memory had no such app.
    pub(super) fn drop_app(&mut self, app_id: AppId) -> bool {
        let Some(app) = self.apps.remove(&app_id) else {
            return false;
        };
        if let Some(key) = app.record.submission_key {
            self.submission_keys.remove(&(app.record.user, key));
        }
        let ids: Vec<ContainerId> = self.containers_of(app_id).map(|container| container.record.container_id).collect();
        for id in ids {
            self.containers.remove(&id);
        }
        true
    }

    /// A page of `query` from memory, each report as `caller` may see it, and, when memory may
    /// miss some of the page (apps at or below `newest_evicted` left it), the query that asks
    /// the store for the rest; merge the two with [`merge_app_pages`].
    pub fn app_page_for(&self, caller: &Caller, query: &AppQuery) -> (Vec<AppReport>, Option<AppQuery>) {
        let reports = self.app_reports_for(caller, query);
        let Some(evicted) = self.newest_evicted else {
            return (reports, None);
        };
        let full_above_evicted = reports.len() == query.limit && reports.last().is_some_and(|last| last.app_id > evicted);
        if full_above_evicted {
            return (reports, None);
        }
        let below_evicted = AppId {
            seq: evicted.seq.saturating_add(1),
            ..evicted
        };
        let history = AppQuery {
            before: Some(query.before.map_or(below_evicted, |before| before.min(below_evicted))),
            ..query.clone()
        };
        (reports, Some(history))
    }

    /// The report of an app read from the store (not in memory), as `caller` may see it.
    pub fn stored_app_report_for(&self, caller: &Caller, record: AppRecord) -> AppReport {
        let may_view = self.may_administer_app(caller, &record.user, &record.spec.queue);
        let mut report = app_report(&App::new(record), &BTreeMap::new());
        if !may_view {
            redact_app_report(&mut report);
        }
        report
    }

    /// The container reports of an app read from the store, as `caller` may see them.
    pub fn stored_container_reports_for(&self, caller: &Caller, app: &AppRecord, containers: Vec<ContainerRecord>) -> Vec<ContainerReport> {
        let may_view = self.may_administer_app(caller, &app.user, &app.spec.queue);
        containers
            .into_iter()
            .map(|record| {
                let mut report = container_report(&Container { record, kill_reason: None });
                if !may_view {
                    redact_container_report(&mut report);
                }
                report
            })
            .collect()
    }

    /// Where a container of an app read from the store ran, if `caller` may read its logs
    /// (the same answers as `container_logs_location`).
    pub fn stored_container_location(
        &self,
        caller: &Caller,
        app: &AppRecord,
        container: &ContainerRecord,
    ) -> Result<ContainerLocation, AppError> {
        if !self.may_administer_app(caller, &app.user, &app.spec.queue) {
            return Err(super::view_acl::logs_forbidden(caller, container.container_id, app));
        }
        Ok(ContainerLocation {
            owner: app.user.clone(),
            node_id: container.node_id.clone(),
            node_address: container.node_address.clone(),
        })
    }
}

/// One page of apps, newest first, from what memory had and what the store had below the
/// apps that left memory: an app in both (still in memory) is taken from memory.
pub fn merge_app_pages(memory: Vec<AppReport>, stored: Vec<AppReport>, limit: usize) -> Vec<AppReport> {
    let mut page: BTreeMap<AppId, AppReport> = stored.into_iter().map(|report| (report.app_id, report)).collect();
    page.extend(memory.into_iter().map(|report| (report.app_id, report)));
    page.into_values().rev().take(limit).collect()
}

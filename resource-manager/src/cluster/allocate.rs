//! The AM protocol's `allocate`: asks, releases and progress in; grants and completions out,
//! numbered so a reply lost on the way is sent again.

use std::collections::{BTreeMap, HashMap};

use spindle_protocol::{
    AllocateReply, AllocateRequest, AppId, ContainerState, ExitReason, JobKind, Resources, SpecError, validate_resources,
};

use super::transitions;
use super::{AppError, Cluster};

/// Most preferred nodes (and racks) one ask may name: enough for any data-local read, small
/// enough that locality checks stay cheap.
const MAX_PREFERRED_NODES: usize = 1_000;
const MAX_PREFERRED_RACKS: usize = 100;

/// Locality preferences and labels must be few and non-empty.
fn validate_locality(index: usize, ask: &spindle_protocol::ResourceAsk) -> Result<(), SpecError> {
    let invalid = |field: &str, reason: String| SpecError {
        field: format!("asks[{index}].{field}"),
        reason,
    };
    if ask.nodes.len() > MAX_PREFERRED_NODES {
        return Err(invalid(
            "nodes",
            format!("{} preferred nodes; at most {MAX_PREFERRED_NODES}", ask.nodes.len()),
        ));
    }
    if ask.racks.len() > MAX_PREFERRED_RACKS {
        return Err(invalid(
            "racks",
            format!("{} preferred racks; at most {MAX_PREFERRED_RACKS}", ask.racks.len()),
        ));
    }
    if ask.nodes.iter().any(|node| node.0.trim().is_empty()) || ask.racks.iter().any(|rack| rack.trim().is_empty()) {
        return Err(invalid("nodes", "node and rack names must not be empty".to_owned()));
    }
    if ask.label.as_deref().is_some_and(|label| label.trim().is_empty()) {
        return Err(invalid("label", "must not be empty (leave it out for no label)".to_owned()));
    }
    Ok(())
}

impl Cluster {
    /// One allocate call: the last reply again if the AM did not get it (its `response_id` is
    /// one behind), else the AM's asks, releases and progress, and whatever news there is.
    /// `None`: nothing new, the caller may long-poll.
    pub fn allocate(&mut self, request: &AllocateRequest, now_ms: u64) -> Result<Option<AllocateReply>, AppError> {
        if let Some(mut lost) = self.lost_reply(request) {
            // The asks of this request were written without the lost grants: ignore them.
            // Releases and progress were never applied, since they came in no earlier request.
            self.apply_releases_and_progress(request, now_ms)?;
            // Not news but a desired state: the current one, not the one of the lost reply.
            lost.controls = self.app_controls(request.app_id);
            return Ok(Some(lost));
        }
        self.update_asks(request, now_ms)?;
        Ok(self.collect_news(request.app_id, request.attempt))
    }

    /// The last reply to this attempt, if the AM's `response_id` says it never arrived.
    fn lost_reply(&self, request: &AllocateRequest) -> Option<AllocateReply> {
        if self.current_attempt(request.app_id) != Some(request.attempt) {
            return None;
        }
        let received = request.response_id?;
        let last = self.apps.get(&request.app_id)?.last_reply.as_ref()?;
        (last.response_id == received + 1).then(|| last.clone())
    }

    /// Checks, then applies, a request's releases and progress: all or nothing.
    fn apply_releases_and_progress(&mut self, request: &AllocateRequest, now_ms: u64) -> Result<(), AppError> {
        // A container of no size fits anywhere any number of times: the scheduler would grant
        // the whole count (up to u32::MAX) in one round.
        for (index, ask) in request.asks.iter().enumerate() {
            validate_resources(&format!("asks[{index}].resources"), &ask.resources)?;
            validate_locality(index, ask)?;
        }
        if let Some(detail) = &request.detail {
            let kind = self.apps.get(&request.app_id).map_or(JobKind::Custom, |app| app.record.spec.kind);
            super::controls::validate_detail(detail, kind)?;
        }
        if let Some(foreign) = request.releases.iter().find(|release| release.app != request.app_id) {
            return Err(AppError::Forbidden(format!(
                "container {foreign} does not belong to {}",
                request.app_id
            )));
        }
        for release in &request.releases {
            self.kill_container(
                *release,
                ExitReason::KilledByApp,
                "released by the application master".to_owned(),
                now_ms,
            );
        }
        let app = self.apps.get_mut(&request.app_id).ok_or(AppError::NotFound(request.app_id))?;
        // NaN would not survive a JSON round trip through the store.
        let progress = if request.progress.is_finite() {
            request.progress.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if let Some(detail) = &request.detail {
            app.detail = Some(detail.clone());
        }
        if progress != app.record.progress {
            // Users see it in app reports, so it is committed like any other change.
            app.record.progress = progress;
            self.dirty.apps.insert(request.app_id);
        }
        Ok(())
    }

    /// Numbers a reply to the current attempt and keeps it, in case it is lost on the way.
    fn seal_reply(&mut self, app_id: AppId, mut reply: AllocateReply) -> AllocateReply {
        // Every reply lists all notices in force, so an AM that missed one still hears of it.
        reply.preempt = self.preempt_notices(app_id);
        reply.controls = self.app_controls(app_id);
        if let Some(app) = self.apps.get_mut(&app_id) {
            reply.response_id = app.last_reply.as_ref().map_or(1, |last| last.response_id + 1);
            app.last_reply = Some(reply.clone());
        }
        reply
    }

    /// Takes an AM's asks, releases and progress. Returns whether the app is still live.
    pub fn update_asks(&mut self, request: &AllocateRequest, now_ms: u64) -> Result<(), AppError> {
        if self.check_attempt(request.app_id, request.attempt).is_err() {
            // A superseded or ended attempt gets `shutdown` from `collect_news`, not an error.
            self.apps.get(&request.app_id).ok_or(AppError::NotFound(request.app_id))?;
            return Ok(());
        }
        self.apply_releases_and_progress(request, now_ms)?;
        let app = self.apps.get_mut(&request.app_id).expect("checked above");
        // Asks are absolute from the AM's point of view; grants it has not heard of yet are
        // already on their way to it, so they are subtracted here.
        let mut asks = request.asks.clone();
        for container_id in &app.undelivered {
            let Some(container) = self.containers.get(container_id) else {
                continue;
            };
            if let Some(ask) = asks
                .iter_mut()
                .find(|ask| ask.resources == container.record.resources && ask.count > 0)
            {
                ask.count -= 1;
            }
        }
        asks.retain(|ask| ask.count > 0);
        app.asks_since_ms = match app.asks_since_ms {
            _ if asks.is_empty() => None,
            Some(since) => Some(since),
            None => Some(now_ms),
        };
        app.asks = asks;
        self.round_due = true;
        self.schedule_soon(now_ms);
        Ok(())
    }

    /// What the AM has not heard yet: new grants (now ACQUIRED) and completions. `None` if
    /// there is nothing, so the caller may long-poll.
    pub fn collect_news(&mut self, app_id: AppId, attempt: u32) -> Option<AllocateReply> {
        let app = self.apps.get(&app_id)?;
        if self.current_attempt(app_id) != Some(attempt) {
            return Some(AllocateReply {
                shutdown: true,
                ..AllocateReply::default()
            });
        }
        if app.undelivered.is_empty() && app.completions.is_empty() && !app.preempt_news && !app.controls_news {
            return None;
        }
        let app = self.apps.get_mut(&app_id).expect("checked above");
        app.preempt_news = false;
        app.controls_news = false;
        let granted = std::mem::take(&mut app.undelivered);
        let unix_user = app.record.unix_user.clone();
        let completed = std::mem::take(&mut app.completions);
        let mut allocated = Vec::with_capacity(granted.len());
        for container_id in granted {
            let Some(container) = self.containers.get_mut(&container_id) else {
                continue;
            };
            if container.record.state != ContainerState::Allocated {
                continue;
            }
            transitions::transition(
                &container.record.container_id,
                &mut container.record.state,
                ContainerState::Acquired,
            );
            let record = &container.record;
            allocated.push(spindle_protocol::Allocation {
                container_id,
                node_id: record.node_id.clone(),
                node_address: record.node_address.clone(),
                resources: record.resources,
                token: self.settings.authority.sign_container(
                    spindle_protocol::ContainerGrant {
                        container_id,
                        node_id: record.node_id.clone(),
                        resources: record.resources,
                        user: unix_user.clone(),
                    },
                    record.launch_deadline_ms,
                ),
            });
            self.dirty.containers.insert(container_id);
        }
        let headroom = self.headroom(app_id);
        let reply = AllocateReply {
            allocated,
            completed,
            preempt: Vec::new(),
            headroom,
            shutdown: false,
            response_id: 0,
            controls: BTreeMap::new(),
        };
        Some(self.seal_reply(app_id, reply))
    }

    /// The answer to an allocate call that waited and heard nothing.
    pub fn idle_reply(&mut self, app_id: AppId, attempt: u32) -> AllocateReply {
        if self.current_attempt(app_id) != Some(attempt) {
            return AllocateReply {
                shutdown: true,
                ..AllocateReply::default()
            };
        }
        let reply = AllocateReply {
            headroom: self.headroom(app_id),
            ..AllocateReply::default()
        };
        self.seal_reply(app_id, reply)
    }

    /// What the app could still get: what is free on schedulable nodes, capped by what its
    /// leaf queue may still grow (its maximum less what the queue's apps hold), as of the
    /// last round. Only rounds grant, and every change that frees room makes one due, so the
    /// figure is at most a round behind; it saves two walks (every node, every app) per reply.
    fn headroom(&self, app_id: AppId) -> Resources {
        let basis = &self.headroom_basis;
        let queues = &self.settings.queues;
        let Some(leaf) = self.apps.get(&app_id).and_then(|app| queues.leaf(&app.record.spec.queue)) else {
            return basis.free;
        };
        let queue_used = basis.queue_used.get(&queues.queues[leaf].name).copied().unwrap_or(Resources::ZERO);
        let room = queues.capacities(basis.capacity)[leaf].maximum.saturating_sub(&queue_used);
        Resources::new(basis.free.vcores.min(room.vcores), basis.free.memory_mb.min(room.memory_mb))
    }

    /// Works out the headroom's totals again; at the end of each round.
    pub(super) fn refresh_headroom_basis(&mut self) {
        self.refresh_node_view();
        let (capacity, free) = self.node_view.totals();
        let mut basis = HeadroomBasis {
            capacity,
            free,
            queue_used: HashMap::new(),
        };
        for app in self.apps.values().filter(|app| !app.record.state.is_terminal()) {
            *basis.queue_used.entry(app.record.spec.queue.clone()).or_default() += app.allocated;
        }
        self.headroom_basis = basis;
    }
}

/// What headroom is worked out from: schedulable capacity, what of it is free, and what the
/// live apps of each queue hold.
#[derive(Debug, Default)]
pub(super) struct HeadroomBasis {
    capacity: Resources,
    free: Resources,
    queue_used: HashMap<String, Resources>,
}

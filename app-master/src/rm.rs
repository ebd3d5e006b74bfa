//! The AM's side of the AM ↔ RM protocol: register, allocate, finish, each retried across an RM
//! outage (work-preserving RM restart) and re-registering once the RM is back.

use std::future::Future;
use std::time::{Duration, Instant};

use spindle_protocol::{
    AllocateReply, AllocateRequest, AppId, ClientError, FinalStatus, FinishAmRequest, RegisterAmReply, RegisterAmRequest, RmClient,
};
use tokio_util::sync::CancellationToken;

use crate::error::AmError;

/// How an AM rides through an RM that is unreachable or answering 5xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How long one outage may last before the AM gives up (an RM restart takes seconds).
    pub outage_budget: Duration,
    /// The first pause after a failed call; it doubles up to `max_backoff`.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            outage_budget: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// One allocate round trip as the AM sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub reply: AllocateReply,
    /// Set when the RM was unreachable and the AM registered again before this allocate: the
    /// reply lists the attempt's containers the RM knows after its restart.
    pub reregistered: Option<RegisterAmReply>,
}

/// An AM attempt's connection to the RM (one per AM process).
#[derive(Debug)]
pub struct RmConnection {
    /// Typed client with the AM token; tries every RM URL in turn.
    client: RmClient,
    app_id: AppId,
    attempt: u32,
    /// Measures the current outage and paces the retries.
    outage: OutageClock,
    /// A call failed on the way (the RM may have restarted): register again before the next one.
    must_reregister: bool,
    /// The `response_id` of the last allocate reply received: sent with every allocate, so
    /// the RM sends a reply lost on the way again instead of losing its grants and completions.
    last_response_id: u64,
}

impl RmConnection {
    pub fn new(rm_urls: &[String], am_token: &str, app_id: AppId, attempt: u32, policy: RetryPolicy) -> Self {
        RmConnection {
            client: RmClient::new(rm_urls, Some(am_token.to_owned())),
            app_id,
            attempt,
            outage: OutageClock::new(policy),
            must_reregister: false,
            last_response_id: 0,
        }
    }

    /// Registers the attempt, retrying while the RM is unreachable.
    pub async fn register(&mut self, shutdown: &CancellationToken) -> Result<RegisterAmReply, AmError> {
        let reply = self.register_within_outage(shutdown).await?;
        self.outage.reset();
        Ok(reply)
    }

    /// Registers again in the middle of an outage of another call: success does not end the
    /// outage, so an RM that answers register but keeps failing allocate still runs out the budget.
    async fn register_within_outage(&mut self, shutdown: &CancellationToken) -> Result<RegisterAmReply, AmError> {
        let request = RegisterAmRequest {
            app_id: self.app_id,
            attempt: self.attempt,
        };
        loop {
            let RmConnection { client, outage, .. } = self;
            let sent = outage
                .send("register", shutdown, client.register_am(&request))
                .await
                .map_err(|error| attempt_error("register", error))?;
            if let Some(reply) = sent {
                self.must_reregister = false;
                return Ok(reply);
            }
        }
    }

    /// One long-polling allocate. After an outage it registers again first, and says so.
    pub async fn allocate(&mut self, request: &AllocateRequest, shutdown: &CancellationToken) -> Result<Heartbeat, AmError> {
        let request = &AllocateRequest {
            response_id: Some(self.last_response_id),
            ..request.clone()
        };
        let mut reregistered = None;
        loop {
            if self.must_reregister {
                tracing::info!(app_id = %self.app_id, "registering again after an RM outage");
                reregistered = Some(self.register_within_outage(shutdown).await?);
            }
            let RmConnection { client, outage, .. } = self;
            let sent = outage
                .send("allocate", shutdown, client.allocate(request))
                .await
                .map_err(|error| attempt_error("allocate", error))?;
            match sent {
                Some(reply) => {
                    self.outage.reset();
                    self.last_response_id = reply.response_id;
                    return Ok(Heartbeat { reply, reregistered });
                }
                // The RM may have restarted meanwhile: register before resending.
                None => self.must_reregister = true,
            }
        }
    }

    /// Reports the end of the job, retrying across an RM outage.
    pub async fn finish(&mut self, final_status: FinalStatus, diagnostics: &str, shutdown: &CancellationToken) -> Result<(), AmError> {
        let request = FinishAmRequest {
            app_id: self.app_id,
            attempt: self.attempt,
            final_status,
            diagnostics: diagnostics.to_owned(),
        };
        // Whether a finish failed on the way: it may have landed, so a refusal now means done.
        let mut sent_before = false;
        loop {
            if self.must_reregister {
                match self.register_within_outage(shutdown).await {
                    Err(AmError::AttemptInvalid { source, .. }) if sent_before => {
                        tracing::warn!(error = %source, "register refused after a finish that may have landed: taking the finish as recorded");
                        return Ok(());
                    }
                    other => other?,
                };
            }
            let RmConnection { client, outage, .. } = self;
            match outage.send("finish", shutdown, client.finish_am(&request)).await {
                Ok(Some(())) => {
                    self.outage.reset();
                    return Ok(());
                }
                Ok(None) => {
                    self.must_reregister = true;
                    sent_before = true;
                }
                Err(RetryError::Failed(error)) if sent_before && error.status() == Some(409) => {
                    tracing::warn!(%error, "finish refused after a retry: taking the first one as recorded");
                    return Ok(());
                }
                Err(error) => return Err(attempt_error("finish", error)),
            }
        }
    }
}

/// Why a call was given up.
enum RetryError {
    /// A final answer from the RM.
    Failed(ClientError),
    /// The RM stayed unreachable past the outage budget.
    OutageTooLong {
        waited: Duration,
        last: ClientError,
    },
    Cancelled,
}

fn attempt_error(call: &'static str, error: RetryError) -> AmError {
    match error {
        RetryError::Failed(source) if is_attempt_invalid(&source) => AmError::AttemptInvalid { call, source },
        RetryError::Failed(source) => AmError::Rejected { call, source },
        RetryError::OutageTooLong { waited, last } => AmError::RmUnreachable {
            call,
            waited,
            source: last,
        },
        RetryError::Cancelled => AmError::Cancelled,
    }
}

/// The clock of one RM outage: when it began and how long to pause before the next try.
#[derive(Debug)]
struct OutageClock {
    policy: RetryPolicy,
    /// The budget counts from the first failure of an outage, not per call.
    started: Option<Instant>,
    backoff: Duration,
}

impl OutageClock {
    fn new(policy: RetryPolicy) -> Self {
        OutageClock {
            policy,
            started: None,
            backoff: policy.initial_backoff,
        }
    }

    fn reset(&mut self) {
        self.started = None;
        self.backoff = self.policy.initial_backoff;
    }

    /// Sends one call. `Ok(None)`: it failed transiently and the backoff has passed, so the
    /// caller may try again (after registering again, if it wants).
    async fn send<T>(
        &mut self,
        call: &'static str,
        shutdown: &CancellationToken,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<Option<T>, RetryError> {
        let result = tokio::select! {
            result = request => result,
            () = shutdown.cancelled() => return Err(RetryError::Cancelled),
        };
        let error = match result.map_err(classify) {
            // The caller ends the outage: a register in the middle of one must not.
            Ok(value) => return Ok(Some(value)),
            Err(Failure::Final(error)) => {
                self.reset();
                return Err(RetryError::Failed(error));
            }
            Err(Failure::Transient(error)) => error,
        };
        let waited = self.started.get_or_insert_with(Instant::now).elapsed();
        if waited >= self.policy.outage_budget {
            return Err(RetryError::OutageTooLong { waited, last: error });
        }
        tracing::warn!(call, %error, retry_in_ms = self.backoff.as_millis() as u64, "the RM did not answer; retrying");
        tokio::select! {
            () = tokio::time::sleep(self.backoff) => {}
            () = shutdown.cancelled() => return Err(RetryError::Cancelled),
        }
        self.backoff = (self.backoff * 2).min(self.policy.max_backoff);
        Ok(None)
    }
}

/// What one failed call means for the caller.
enum Failure {
    /// The RM is down or restarting: wait and try again.
    Transient(ClientError),
    /// An answer that will not change by retrying.
    Final(ClientError),
}

fn classify(error: ClientError) -> Failure {
    match &error {
        // A garbled body is most likely a connection cut mid-answer by a stopping RM.
        ClientError::Unreachable { .. } | ClientError::Decode { .. } => Failure::Transient(error),
        ClientError::Api { status, .. } if *status >= 500 || matches!(status, 408 | 429) => Failure::Transient(error),
        ClientError::Api { .. } => Failure::Final(error),
    }
}

/// Whether an answer says this attempt is no longer the app's current, live attempt.
fn is_attempt_invalid(error: &ClientError) -> bool {
    matches!(error.status(), Some(401 | 403 | 404 | 409))
}

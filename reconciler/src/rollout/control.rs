//! Requests from a person (`flotilla rollout pause|resume|abort|rollback`, or the daemon's
//! API): read, changed and written in one transaction. A running engine merges requests the
//! same way (see `Engine::record`), so neither side loses the other's write.

use flotilla_state::{StateError, Store};

use super::model::{Event, Phase, Rollout, StopRequest};

/// What a person asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
    Abort,
    Rollback,
}

impl Request {
    pub fn parse(text: &str) -> Option<Request> {
        match text {
            "pause" => Some(Request::Pause),
            "resume" => Some(Request::Resume),
            "abort" => Some(Request::Abort),
            "rollback" => Some(Request::Rollback),
            _ => None,
        }
    }
}

/// Why a request was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("placement {0}: no rollout recorded")]
    NoRollout(String),
    #[error("rollout {id} is {phase}: nothing to do")]
    Final { id: String, phase: &'static str },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Records `request` on the placement's rollout (and an event saying so); returns what
/// happens next, in words. `now` is RFC 3339.
pub fn request(
    store: &Store,
    placement: &str,
    request: Request,
    now: &str,
) -> Result<String, ControlError> {
    store.write(|tx| {
        let Some(mut r) = tx.rollout::<Rollout>(placement)? else {
            return Ok(Err(ControlError::NoRollout(placement.to_string())));
        };
        if r.phase.is_final() {
            return Ok(Err(ControlError::Final {
                id: r.id,
                phase: r.phase.label(),
            }));
        }
        let note = match request {
            Request::Pause => {
                r.pause_requested = true;
                "pause requested: the rollout pauses after its current step (a soak within 2 s)"
            }
            Request::Resume => {
                r.pause_requested = false;
                if r.phase == Phase::Paused {
                    r.phase = Phase::Progressing;
                }
                "resumed: the daemon (or the next `flotilla apply`) continues it"
            }
            Request::Abort => {
                r.stop_requested = Some(StopRequest::Abort);
                "abort requested: clusters stay as they are"
            }
            Request::Rollback => {
                r.stop_requested = Some(StopRequest::Rollback);
                r.pause_requested = false;
                if r.phase == Phase::Paused {
                    r.phase = Phase::Progressing;
                }
                "rollback requested: the next step puts every touched cluster back on its last good revision"
            }
        };
        let event = Event {
            at: now.to_string(),
            placement: r.placement.clone(),
            rollout: r.id.clone(),
            kind: "request".into(),
            batch: None,
            cluster: None,
            message: note.into(),
        };
        tx.put_rollout(placement, &r)?;
        tx.append_rollout_event(&event.rollout, &event)?;
        Ok(Ok(format!("rollout {}: {note}", r.id)))
    })?
}

/// A placement's rollout record and its own events (oldest first), in one read.
pub fn history(
    store: &Store,
    placement: &str,
) -> Result<Option<(Rollout, Vec<Event>)>, StateError> {
    store.read(|tx| {
        let Some(r) = tx.rollout::<Rollout>(placement)? else {
            return Ok(None);
        };
        // Through the index: the rollout's own events, however long the log is.
        let mut events: Vec<Event> = tx
            .rollout_events::<Event>(&r.id)?
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        if events.is_empty() {
            // A rollout recorded before the index existed: the whole log, filtered.
            events = tx
                .events::<Event>(0, usize::MAX)?
                .into_iter()
                .map(|(_, e)| e)
                .filter(|e| e.rollout == r.id)
                .collect();
        }
        Ok(Some((r, events)))
    })
}

/// The phase a rollout is in after an event of this kind, when the event says so (progress
/// views follow rollouts through their events).
pub fn phase_after(kind: &str) -> Option<Phase> {
    Some(match kind {
        "started" | "batch-applying" | "window-open" => Phase::Progressing,
        "waiting" => Phase::Waiting,
        "paused" => Phase::Paused,
        "rolling-back" => Phase::RollingBack,
        "rolled-back-all" => Phase::RolledBack,
        "rollback-stopped" => Phase::RollbackFailed,
        "succeeded" => Phase::Succeeded,
        "superseded" => Phase::Superseded,
        "aborted" => Phase::Aborted,
        "failed" => Phase::Failed,
        _ => return None,
    })
}

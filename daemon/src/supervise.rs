//! No daemon task dies unseen. [`spawn`] runs a task (a placement worker, a drift check, an
//! image scan, a prune) in a child task and watches it: a panic is caught (tokio turns it into
//! a `JoinError`), reported through the caller's `report` (log, metric, status API), and a
//! long-lived task is started again after an exponential backoff (reset once it ran longer
//! than the cap). A task that returns normally, or is aborted, is not restarted; aborting
//! the supervisor aborts the child with it. Other tasks never notice.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// How a supervised task restarts after a panic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Restart {
    /// Restart at all (long-lived workers), or report only (one-shot jobs).
    pub again: bool,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Restart {
    pub(crate) const WORKER: Restart = Restart {
        again: true,
        first_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(60),
    };
    pub(crate) const ONCE: Restart = Restart {
        again: false,
        first_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
    };
}

/// A panic of a supervised task, as reported.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    /// The panic message (or "unknown panic payload").
    pub message: String,
    /// How many times this task failed so far (1 for the first).
    pub failures: u64,
    /// When it is started again (`None`: not restarted).
    pub restart_in: Option<Duration>,
}

/// Runs `fut` once as a supervised job: a panic is reported, not restarted.
pub(crate) fn spawn_once(
    fut: impl Future<Output = ()> + Send + 'static,
    report: impl Fn(&Failure) + Send + 'static,
) -> JoinHandle<()> {
    let slot = std::sync::Mutex::new(Some(fut));
    spawn(
        Restart::ONCE,
        move || {
            let fut = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            async move {
                if let Some(f) = fut {
                    f.await
                }
            }
        },
        report,
    )
}

/// The standard report of a daemon task's failure: an error log line (task, placement,
/// message, restart), `flotilla_task_failures_total{task, outcome="panic"}`, and for a
/// placement worker its status in the API (`error`, `running: false`).
pub(crate) fn report_to(
    shared: std::sync::Arc<crate::run::Shared>,
    task: &'static str,
    placement: Option<String>,
) -> impl Fn(&Failure) + Send + 'static {
    move |f: &Failure| {
        let restart = match f.restart_in {
            Some(d) => format!("restarting in {d:?}"),
            None => "not restarted".to_string(),
        };
        tracing::error!(
            task,
            placement = placement.as_deref(),
            failures = f.failures,
            "task panicked ({restart}): {}",
            f.message
        );
        shared
            .metrics
            .task_failures
            .get_or_create(&crate::metrics::labels(&[
                ("task", task),
                ("outcome", "panic"),
            ]))
            .inc();
        if let Some(name) = &placement {
            let mut s = shared.status_mut();
            let p = s.placements.entry(name.clone()).or_default();
            p.running = false;
            p.error = Some(format!(
                "the placement worker panicked ({} times; {restart}): {}",
                f.failures, f.message
            ));
        }
    }
}

/// The injected fault (`Config::fault_panic_placement`): panics the first time the named
/// placement's worker is about to run its engine in this process.
pub(crate) fn injected_fault(shared: &crate::run::Shared, placement: &str) {
    static FIRED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if shared.config.fault_panic_placement.as_deref() == Some(placement)
        && !FIRED.swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        panic!("injected fault: placement {placement:?} worker panics once");
    }
}

/// Runs `f` on the current thread, turning a panic into its message (for the Git thread,
/// which is not a tokio task: a panicking render must not end it).
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".into());
        flotilla_spec::diag::cap_message(message)
    })
}

/// Reports a panic caught on the Git thread (log and metric; the commit is rejected).
pub(crate) fn git_thread_panicked(shared: &crate::run::Shared, message: &str) {
    tracing::error!(
        task = "git",
        "checking or rendering a commit panicked (commit rejected): {message}"
    );
    shared
        .metrics
        .task_failures
        .get_or_create(&crate::metrics::labels(&[
            ("task", "git"),
            ("outcome", "panic"),
        ]))
        .inc();
}

/// Aborts the child when the supervisor is dropped or aborted.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `make()` as a supervised task; see the module documentation.
pub(crate) fn spawn<F, Fut>(
    restart: Restart,
    make: F,
    report: impl Fn(&Failure) + Send + 'static,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut failures = 0u64;
        let mut backoff = restart.first_backoff;
        loop {
            let started = Instant::now();
            let mut child = AbortOnDrop(tokio::spawn(make()));
            let ended = (&mut child.0).await;
            let Err(e) = ended else {
                return;
            };
            if !e.is_panic() {
                return;
            }
            failures += 1;
            if started.elapsed() > restart.max_backoff {
                backoff = restart.first_backoff;
            }
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            report(&Failure {
                message: flotilla_spec::diag::cap_message(message),
                failures,
                restart_in: restart.again.then_some(backoff),
            });
            if !restart.again {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(restart.max_backoff);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    const FAST: Restart = Restart {
        again: true,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
    };

    #[test]
    fn catch_turns_a_panic_into_its_message() {
        assert_eq!(catch(|| 5), Ok(5));
        assert_eq!(
            catch(|| -> u8 { panic!("render blew up: {}", 7) }),
            Err("render blew up: 7".to_string())
        );
        let long = catch(|| -> u8 { panic!("{}", "x".repeat(100_000)) }).expect_err("panics");
        assert!(
            long.len() < 1100 && long.ends_with("more bytes)"),
            "{}",
            long.len()
        );
    }

    #[tokio::test]
    async fn a_panicking_task_is_reported_and_restarted_with_backoff_until_it_succeeds() {
        let runs = Arc::new(AtomicU64::new(0));
        let reports = Arc::new(Mutex::new(Vec::<Failure>::new()));
        let r = runs.clone();
        let seen = reports.clone();
        let handle = spawn(
            FAST,
            move || {
                let r = r.clone();
                async move {
                    let n = r.fetch_add(1, Ordering::SeqCst);
                    if n < 3 {
                        panic!("injected fault {n}");
                    }
                }
            },
            move |f| {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(f.clone())
            },
        );
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("the supervisor ends once the task returns")
            .expect("the supervisor itself never panics");
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        let reports = reports.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let messages: Vec<&str> = reports.iter().map(|f| f.message.as_str()).collect();
        assert_eq!(
            messages,
            ["injected fault 0", "injected fault 1", "injected fault 2"]
        );
        let backoffs: Vec<_> = reports.iter().map(|f| f.restart_in).collect();
        assert_eq!(
            backoffs,
            [
                Some(Duration::from_millis(10)),
                Some(Duration::from_millis(20)),
                Some(Duration::from_millis(40))
            ]
        );
        assert_eq!(reports.last().map(|f| f.failures), Some(3));
    }

    #[tokio::test]
    async fn a_panic_does_not_stop_other_tasks_and_one_shot_jobs_are_not_restarted() {
        let ticks = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        let steady = spawn(
            FAST,
            move || {
                let t = t.clone();
                async move {
                    loop {
                        t.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            },
            |_| {},
        );
        let reported = Arc::new(AtomicU64::new(0));
        let rep = reported.clone();
        let once = spawn(
            Restart::ONCE,
            || async { panic!("{}", String::from("boom")) },
            move |f| {
                assert_eq!(f.message, "boom");
                assert_eq!(f.restart_in, None);
                rep.fetch_add(1, Ordering::SeqCst);
            },
        );
        tokio::time::timeout(Duration::from_secs(5), once)
            .await
            .expect("ends")
            .expect("no panic escapes");
        assert_eq!(reported.load(Ordering::SeqCst), 1);
        let before = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            ticks.load(Ordering::SeqCst) > before,
            "the other task stopped"
        );
        // Aborting a supervisor stops its child too.
        steady.abort();
        let _ = steady.await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let stopped = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), stopped);
    }
}

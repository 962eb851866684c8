//! Jsonnet in a worker process that can be limited and killed.
//!
//! jrsonnet can be neither interrupted nor capped in-process: a runaway program grows until
//! the machine runs out of memory, and a timed-out evaluation keeps running. So, as Argo CD
//! isolates renders in its repo-server, evaluations run in a child process of the
//! `flotilla` binary (`flotilla __render-jsonnet`): its address space is capped (`ulimit -v`
//! through `sh`, i.e. RLIMIT_AS, set before the worker starts), it is killed when its time is
//! up, and it gets each request (files, ext vars, TLAs) on stdin and answers on stdout
//! (length-prefixed frames), so it reads nothing else. A worker serves one evaluation after
//! another (up to `MAX_USES`), so a render pass pays for a process start once, not per
//! evaluation. The executable is configured explicitly: in tests and `flotilla demo`
//! the daemon library runs inside other programs, whose `current_exe()` is not `flotilla`.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_renderers::jsonnet::{Evaluator, JsonnetError, Request, Response};
use serde_json::Value;

/// The hidden subcommand that runs a worker.
pub const SUBCOMMAND: &str = "__render-jsonnet";

/// Default address-space cap of a worker.
pub const DEFAULT_MAX_MEMORY: u64 = 2 << 30;

/// The largest answer read from a worker, and the largest request a worker reads.
const MAX_FRAME: u64 = 512 << 20;

/// A worker serves at most this many evaluations before it is replaced (so whatever an
/// evaluation leaves behind in the worker cannot add up against its memory cap).
const MAX_USES: usize = 1_000;

/// How much of a worker's stderr is kept (the end of it), for the error when it dies.
const STDERR_TAIL: usize = 16 << 10;

/// Runs evaluations in `exe __render-jsonnet` worker processes, capped and killed on timeout.
/// One worker is kept and reused (a process start costs a few milliseconds, an evaluation of
/// a typical bundle about one); an evaluation that finds it busy (another thread evaluating)
/// gets a worker of its own for that evaluation. A worker that times out is killed, one that
/// dies (its memory cap) is reported, and the next evaluation starts a new one.
#[derive(Debug, Clone)]
pub struct ProcessEvaluator {
    pub exe: PathBuf,
    /// Address-space limit of the worker, in bytes.
    pub max_memory: u64,
    kept: Arc<Mutex<Option<Worker>>>,
    spawned: Arc<AtomicUsize>,
}

impl ProcessEvaluator {
    pub fn new(exe: PathBuf) -> ProcessEvaluator {
        ProcessEvaluator {
            exe,
            max_memory: DEFAULT_MAX_MEMORY,
            kept: Arc::new(Mutex::new(None)),
            spawned: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How many worker processes this evaluator (and its clones) started so far.
    pub fn workers_started(&self) -> usize {
        self.spawned.load(Ordering::SeqCst)
    }

    fn spawn(&self, main: &str) -> Result<Worker, JsonnetError> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v {} && exec \"$0\" {SUBCOMMAND}",
                (self.max_memory / 1024).max(1)
            ))
            .arg(&self.exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("FLOTILLA_LOG")
            .spawn()
            .map_err(|e| {
                eval_err(
                    main,
                    format!(
                        "cannot start the Jsonnet worker {}: {e}",
                        self.exe.display()
                    ),
                )
            })?;
        self.spawned.fetch_add(1, Ordering::SeqCst);
        let stdin = child.stdin.take();
        let (tx, answers) = channel();
        if let Some(mut stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                loop {
                    let frame = read_frame(&mut stdout);
                    let done = frame.is_err();
                    if tx.send(frame).is_err() || done {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let tail = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    t.extend(&buf[..n]);
                    while t.len() > STDERR_TAIL {
                        t.pop_front();
                    }
                }
            });
        }
        Ok(Worker {
            child,
            stdin,
            answers,
            stderr,
            uses: 0,
        })
    }

    /// One evaluation on `worker`; `Err(None)` when the worker could not even take the request
    /// (it died while idle: worth one retry on a fresh worker).
    fn run(
        &self,
        worker: &mut Worker,
        main: &str,
        input: &[u8],
        timeout: Duration,
    ) -> Result<Result<Value, JsonnetError>, Option<JsonnetError>> {
        worker.uses += 1;
        let sent = worker
            .stdin
            .as_mut()
            .map(|w| write_frame(w, input))
            .unwrap_or_else(|| Err(std::io::Error::other("no stdin")));
        if sent.is_err() {
            return Err(None);
        }
        match worker.answers.recv_timeout(timeout) {
            Ok(Ok(out)) => Ok(match serde_json::from_slice::<Response>(&out) {
                Ok(Response::Ok(v)) => Ok(v),
                Ok(Response::Err(message)) => Err(JsonnetError::Eval(message)),
                Err(e) => Err(eval_err(
                    main,
                    format!("unreadable answer from the Jsonnet worker: {e}"),
                )),
            }),
            Err(RecvTimeoutError::Timeout) => {
                worker.kill();
                tracing::warn!(file = %main, ?timeout, "Jsonnet worker timed out; killed");
                Err(Some(JsonnetError::Timeout {
                    path: main.to_string(),
                    seconds: timeout.as_secs_f64(),
                }))
            }
            Ok(Err(_)) | Err(RecvTimeoutError::Disconnected) => {
                let status = worker.kill();
                let err = worker.stderr_tail();
                let last = err.lines().last().unwrap_or("").trim().to_string();
                Err(Some(eval_err(
                    main,
                    format!(
                        "the Jsonnet worker failed ({}; its memory is capped at {} MiB){}",
                        status.map_or_else(|| "no exit status".to_string(), |s| s.to_string()),
                        self.max_memory >> 20,
                        if last.is_empty() {
                            String::new()
                        } else {
                            format!(": {last}")
                        }
                    ),
                )))
            }
        }
    }
}

fn eval_err(main: &str, message: impl std::fmt::Display) -> JsonnetError {
    JsonnetError::Eval(format!("{main}: {message}"))
}

/// A running worker: its stdin, the answers its stdout gives (read by a thread of its own,
/// so a wait can time out), and the end of its stderr.
#[derive(Debug)]
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: Receiver<std::io::Result<Vec<u8>>>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    uses: usize,
}

impl Worker {
    /// Kills (if still running) and reaps the process.
    fn kill(&mut self) -> Option<ExitStatus> {
        self.stdin = None;
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }

    fn stderr_tail(&self) -> String {
        // The reader thread may still be draining the pipe of a process that just died.
        std::thread::sleep(Duration::from_millis(20));
        let t = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&t.iter().copied().collect::<Vec<u8>>()).into_owned()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A frame: the length (8 bytes, big endian), then the bytes.
fn write_frame(w: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_be_bytes())?;
    w.write_all(bytes)?;
    w.flush()
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let len = u64::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes is over the limit of {MAX_FRAME}"
        )));
    }
    let mut out = Vec::new();
    r.take(len).read_to_end(&mut out)?;
    if out.len() as u64 != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(out)
}

impl Evaluator for ProcessEvaluator {
    fn evaluate(&self, request: Request, timeout: Duration) -> Result<Value, JsonnetError> {
        let main = request.main.clone();
        let input = serde_json::to_vec(&request).map_err(|e| eval_err(&main, e))?;
        // The kept worker, or (when another thread holds it) one for this evaluation only.
        let mut own = None;
        let mut guard = self.kept.try_lock().ok();
        let slot: &mut Option<Worker> = match guard.as_deref_mut() {
            Some(kept) => kept,
            None => &mut own,
        };
        for attempt in 0..2 {
            if slot.as_ref().is_none_or(|w| w.uses >= MAX_USES) {
                *slot = Some(self.spawn(&main)?);
            }
            let Some(worker) = slot.as_mut() else {
                break;
            };
            match self.run(worker, &main, &input, timeout) {
                Ok(result) => return result,
                Err(failed) => {
                    *slot = None;
                    match failed {
                        Some(e) => return Err(e),
                        // It died while idle: once more on a fresh one.
                        None if attempt == 0 => continue,
                        None => break,
                    }
                }
            }
        }
        Err(eval_err(&main, "the Jsonnet worker does not take requests"))
    }
}

/// The worker's side: requests on stdin, answers on stdout, one frame each, until stdin ends.
pub fn serve() -> std::io::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    loop {
        let input = match read_frame(&mut stdin) {
            Ok(input) => input,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        };
        let response = match serde_json::from_slice::<Request>(&input) {
            Ok(r) => flotilla_renderers::jsonnet::evaluate_request(r),
            Err(e) => Response::Err(format!("unreadable Jsonnet request: {e}")),
        };
        let out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        write_frame(&mut stdout, &out)?;
    }
}

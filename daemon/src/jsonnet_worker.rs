//! Jsonnet in a worker process that can be limited and killed.
//!
//! jrsonnet can be neither interrupted nor capped in-process: a runaway program grows until
//! the machine runs out of memory, and a timed-out evaluation keeps running. So, as Argo CD
//! isolates renders in its repo-server, each evaluation runs in a child process of the
//! `flotilla` binary (`flotilla __render-jsonnet`): its address space is capped (`ulimit -v`
//! through `sh`, i.e. RLIMIT_AS, set before the worker starts), it is killed when its time is
//! up, and it gets the request (files, ext vars, TLAs) on stdin and answers on stdout, so it
//! reads nothing else. The executable is configured explicitly: in tests and `flotilla demo`
//! the daemon library runs inside other programs, whose `current_exe()` is not `flotilla`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_renderers::jsonnet::{Evaluator, JsonnetError, Request, Response};
use serde_json::Value;

/// The hidden subcommand that runs one evaluation.
pub const SUBCOMMAND: &str = "__render-jsonnet";

/// Default address-space cap of a worker.
pub const DEFAULT_MAX_MEMORY: u64 = 2 << 30;

/// The largest answer read from a worker.
const MAX_OUTPUT: u64 = 512 << 20;

/// Runs each evaluation in `exe __render-jsonnet`, capped and killed on timeout.
#[derive(Debug, Clone)]
pub struct ProcessEvaluator {
    pub exe: PathBuf,
    /// Address-space limit of the worker, in bytes.
    pub max_memory: u64,
}

impl ProcessEvaluator {
    pub fn new(exe: PathBuf) -> ProcessEvaluator {
        ProcessEvaluator {
            exe,
            max_memory: DEFAULT_MAX_MEMORY,
        }
    }
}

fn eval_err(main: &str, message: impl std::fmt::Display) -> JsonnetError {
    JsonnetError::Eval(format!("{main}: {message}"))
}

impl Evaluator for ProcessEvaluator {
    fn evaluate(&self, request: Request, timeout: Duration) -> Result<Value, JsonnetError> {
        let main = request.main.clone();
        let input = serde_json::to_vec(&request).map_err(|e| eval_err(&main, e))?;
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
                    &main,
                    format!(
                        "cannot start the Jsonnet worker {}: {e}",
                        self.exe.display()
                    ),
                )
            })?;
        let stdin = child.stdin.take();
        let writer = std::thread::spawn(move || {
            if let Some(mut stdin) = stdin {
                // A worker that died early closes the pipe: its exit status tells why.
                let _ = stdin.write_all(&input);
            }
        });
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(s) = stdout {
                let _ = s.take(MAX_OUTPUT).read_to_end(&mut out);
            }
            out
        });
        let stderr = child.stderr.take();
        let err_reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(s) = stderr {
                let _ = s.take(64 << 10).read_to_end(&mut out);
            }
            out
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() >= timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = writer.join();
                    let _ = reader.join();
                    let _ = err_reader.join();
                    tracing::warn!(file = %main, ?timeout, "Jsonnet worker timed out; killed");
                    return Err(JsonnetError::Timeout {
                        path: main,
                        seconds: timeout.as_secs_f64(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
                Err(e) => return Err(eval_err(&main, format!("the Jsonnet worker: {e}"))),
            }
        };
        let _ = writer.join();
        let out = reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        if !status.success() {
            let err = String::from_utf8_lossy(&err);
            let last = err.lines().last().unwrap_or("").trim();
            return Err(eval_err(
                &main,
                format!(
                    "the Jsonnet worker failed ({status}; its memory is capped at {} MiB){}",
                    self.max_memory >> 20,
                    if last.is_empty() {
                        String::new()
                    } else {
                        format!(": {last}")
                    }
                ),
            ));
        }
        match serde_json::from_slice::<Response>(&out) {
            Ok(Response::Ok(v)) => Ok(v),
            Ok(Response::Err(message)) => Err(JsonnetError::Eval(message)),
            Err(e) => Err(eval_err(
                &main,
                format!("unreadable answer from the Jsonnet worker: {e}"),
            )),
        }
    }
}

/// The worker's side: one request on stdin, one answer on stdout.
pub fn serve_one() -> std::io::Result<()> {
    let mut input = Vec::new();
    std::io::stdin().lock().read_to_end(&mut input)?;
    let response = match serde_json::from_slice::<Request>(&input) {
        Ok(r) => flotilla_renderers::jsonnet::evaluate_request(r),
        Err(e) => Response::Err(format!("unreadable Jsonnet request: {e}")),
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &response).map_err(std::io::Error::other)?;
    stdout.flush()
}

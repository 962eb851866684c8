//! A real `flotilla agent` process for the integration tests: its stderr in a log file, short
//! intervals, killed (by PID) and reaped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// `flotilla agent --cluster CLUSTER`, the management cluster and its own cluster given as
    /// (kubeconfig, context); polls every 200 ms, heals every second, reports twice a second.
    pub fn spawn(cluster: &str, log: &Path, hub: (&str, &str), own: (&str, &str)) -> AgentProcess {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["agent", "--cluster", cluster])
            .args(["--hub-kubeconfig", hub.0, "--hub-context", hub.1])
            .args(["--kubeconfig", own.0, "--context", own.1])
            .args(["--poll", "200ms", "--heal-interval", "1s"])
            .args(["--report-interval", "500ms"])
            .env_remove("KUBECONFIG")
            .env("FLOTILLA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("flotilla agent starts");
        AgentProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Everything the agent wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (`None`: still running after `within`).
    pub fn terminate(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(term.success());
        let until = std::time::Instant::now() + within;
        while std::time::Instant::now() < until {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return Some(s);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        None
    }

    /// kill -9, and reaped.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

//! Child processes a test starts: logged to a file, stopped by PID when dropped (also when
//! the test fails), so no server outlives the test that made it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child process, its stderr in a log file.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `command` with stdout discarded and stderr written to `log`.
    pub fn spawn(mut command: Command, log: &Path) -> Proc {
        let stderr =
            File::create(log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        Proc { child: Some(child), log: log.to_path_buf() }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What it has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: Signal) {
        let pid = i32::try_from(self.pid()).unwrap_or_else(|_| panic!("pid {}", self.pid()));
        kill(Pid::from_raw(pid), signal).unwrap_or_else(|e| panic!("kill {pid}: {e}"));
    }

    /// Waits up to `limit` for it to exit; panics with its log if it does not.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap_or_else(|| panic!("already reaped"));
        loop {
            if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("wait: {e}")) {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "pid {} did not exit within {limit:?}; its log:\n{}",
                    self.pid(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn a_child_is_signalled_reaped_and_killed_on_drop() {
        let dir = TempDir::new("kit-proc");
        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let mut proc = Proc::spawn(sleeper, &dir.join("log"));
        assert!(proc.is_running());
        proc.signal(Signal::SIGTERM);
        assert!(!proc.wait_exit(crate::wait::DEADLINE).success());
        assert!(!proc.is_running());
        let mut again = Command::new("sleep");
        again.arg("30");
        let pid = Proc::spawn(again, &dir.join("log2")).pid();
        // Dropped at once: killed and reaped, so the PID is gone.
        let gone = kill(Pid::from_raw(pid as i32), None).is_err();
        assert!(gone, "pid {pid} outlived its Proc");
    }
}

//! Server processes the benchmarks start: the `syncjobs` binary (configured only through its
//! environment, as an operator would) and the bare baseline server of #2. Each listens on
//! 127.0.0.1 only; dropping a [`ServerProcess`] kills it, so no benchmark leaves one behind,
//! whether it ends, fails or is interrupted.

use crate::client::Api;
use crate::error::{BenchError, Result};
use crate::machine::Memory;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(10);
/// How long a graceful stop may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running server: its process, address and log.
pub struct ServerProcess {
    child: Child,
    pid: u32,
    pub base_url: String,
    log: PathBuf,
    spawned: Instant,
}

/// The settings of one `syncjobs serve`.
pub struct SyncjobsServer<'a> {
    pub bin: &'a Path,
    pub data_dir: &'a Path,
    pub api_key: &'a str,
    /// Extra `SYNCJOBS_*` variables.
    pub env: Vec<(&'static str, String)>,
}

impl ServerProcess {
    /// Starts `syncjobs serve` on a free port of 127.0.0.1, logging to `data_dir/../server.log`.
    pub fn syncjobs(s: SyncjobsServer<'_>) -> Result<ServerProcess> {
        let port = free_port()?;
        let log = s.data_dir.parent().unwrap_or(s.data_dir).join("server.log");
        let mut cmd = Command::new(s.bin);
        // Only what the benchmark sets: no relay (NATS_URL), no settings of the caller's shell.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("SYNCJOBS_") || name == "NATS_URL" {
                cmd.env_remove(name);
            }
        }
        cmd.arg("serve")
            .env("SYNCJOBS_BIND", format!("127.0.0.1:{port}"))
            .env("SYNCJOBS_DATA_DIR", s.data_dir)
            .env("SYNCJOBS_BOOTSTRAP_API_KEY", s.api_key)
            .env("SYNCJOBS_HTTP_WORKERS", http_workers().to_string());
        for (name, value) in s.env {
            cmd.env(name, value);
        }
        ServerProcess::spawn(cmd, port, log)
    }

    /// Starts the bare baseline server of #2 serving `body` on a free port.
    pub fn baseline(bench_bin: &Path, body: &Path, log: PathBuf) -> Result<ServerProcess> {
        let port = free_port()?;
        let mut cmd = Command::new(bench_bin);
        cmd.arg("baseline-server")
            .arg("--port")
            .arg(port.to_string())
            .arg("--body")
            .arg(body)
            .arg("--workers")
            .arg(http_workers().to_string());
        ServerProcess::spawn(cmd, port, log)
    }

    fn spawn(mut cmd: Command, port: u16, log: PathBuf) -> Result<ServerProcess> {
        // The child's stdout/stderr need a std file; creating it is one quick metadata write.
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        let spawned = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            BenchError::failed(format!(
                "cannot start {:?}: {e}",
                cmd.as_std().get_program()
            ))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::failed("the server exited at once"))?;
        Ok(ServerProcess {
            child,
            pid,
            base_url: format!("http://127.0.0.1:{port}"),
            log,
            spawned,
        })
    }

    pub fn memory(&self) -> Result<Memory> {
        Ok(Memory::of(self.pid)?)
    }

    /// CPU time the server has used so far (user + system, all threads).
    pub fn cpu_time(&self) -> Result<std::time::Duration> {
        Ok(crate::machine::cpu_time_of(self.pid)?)
    }

    /// Waits until `GET /health` answers 200 with the read model caught up (lag 0, and at
    /// least at `position`); returns the time since the process was started.
    pub async fn wait_ready(
        &mut self,
        api: &Api,
        position: u64,
        timeout: Duration,
    ) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(health) = api.health().await {
                let lag = health["projection"]["lag"].as_u64();
                let at = health["projection"]["position"].as_u64().unwrap_or(0);
                let ready = health["ready"].as_bool().unwrap_or(true);
                if ready && lag == Some(0) && at >= position {
                    return Ok(self.spawned.elapsed());
                }
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(self.failure(format!("not ready after {timeout:?}")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `path` answers 200 (servers without a `/health`).
    pub async fn wait_answering(&mut self, path: &str, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{}{path}", self.base_url);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(self.failure(format!("{path} did not answer within {timeout:?}")));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `error` of a request to this server, with whether the server still runs and the end
    /// of its log: a benchmark that fails says why the server failed it.
    pub fn explain(&mut self, error: BenchError) -> BenchError {
        match self.child.try_wait() {
            Ok(Some(status)) => self.failure(format!("exited ({status}); the request: {error}")),
            Ok(None) => self.failure(format!("still runs; the request failed: {error}")),
            Err(e) => self.failure(format!("cannot be checked ({e}); the request: {error}")),
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => Err(self.failure(format!("exited ({status})"))),
            None => Ok(()),
        }
    }

    /// An error naming the server and quoting the end of its log.
    fn failure(&self, what: String) -> BenchError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        BenchError::failed(format!(
            "server {} {what}; end of {}:\n{}",
            self.base_url,
            self.log.display(),
            tail.join("\n")
        ))
    }

    /// The file the server's stdout and stderr go to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL: the process dies without a word (no final event, no cleanup), as a machine
    /// that loses power; reaped before this returns.
    pub async fn kill(mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill().await?;
        }
        Ok(())
    }

    /// Stops the server as an operator would (SIGTERM: graceful, it writes its read-model
    /// checkpoint), killing it if it takes longer than [`STOP_TIMEOUT`].
    pub async fn stop(mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid =
            libc::pid_t::try_from(self.pid).map_err(|_| BenchError::failed("pid out of range"))?;
        // SAFETY: kill(2) with a pid we spawned and have not reaped (try_wait said it runs).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                Err(BenchError::failed(format!(
                    "server {} ignored SIGTERM for {STOP_TIMEOUT:?}; killed",
                    self.base_url
                )))
            }
        }
    }
}

/// The HTTP workers of every server: one per core, stated explicitly so that the server and
/// its baseline always get the same number.
pub fn http_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A port free right now on 127.0.0.1 (the OS picks it; the server binds it a moment later).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

//! What the figures were measured on: cores, memory, kernel, the disk under the work
//! directory, and the load average (the machine may be shared, so it goes with every figure).
//! Everything is read from /proc, which the kernel serves from memory: no disk I/O, so these
//! small reads are fine on async threads.

use std::fmt;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_bytes: u64,
    pub kernel: String,
    /// Device and file system of the work directory: fsync on tmpfs costs nothing.
    pub work_disk: String,
}

impl Machine {
    pub fn describe(work_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_string(), |(_, m)| m.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_string(), |k| k.trim().to_string());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_bytes,
            kernel,
            work_disk: disk_of(work_dir),
        }
    }
}

/// The mount holding `dir`: the longest mount point that prefixes its canonical path.
fn disk_of(dir: &Path) -> String {
    let path = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let best = mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .filter(|(_, point, _)| path.starts_with(point))
        .max_by_key(|(_, point, _)| point.len());
    match best {
        Some((device, point, fs)) => {
            format!("{} ({device} mounted on {point}, {fs})", path.display())
        }
        None => path.display().to_string(),
    }
}

/// The 1, 5 and 15 minute load averages.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadAvg(pub [f64; 3]);

impl LoadAvg {
    pub fn now() -> LoadAvg {
        let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let mut out = [0.0; 3];
        for (slot, field) in out.iter_mut().zip(text.split_whitespace()) {
            *slot = field.parse().unwrap_or(0.0);
        }
        LoadAvg(out)
    }
}

impl fmt::Display for LoadAvg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2} {:.2} {:.2}", self.0[0], self.0[1], self.0[2])
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kb: u64,
    /// VmHWM: the most it was ever resident.
    pub hwm_kb: u64,
}

impl Memory {
    pub fn of(pid: u32) -> std::io::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(Memory {
            rss_kb: field("VmRSS:"),
            hwm_kb: field("VmHWM:"),
        })
    }

    pub fn rss_mb(&self) -> f64 {
        self.rss_kb as f64 / 1024.0
    }

    pub fn hwm_mb(&self) -> f64 {
        self.hwm_kb as f64 / 1024.0
    }
}

/// CPU time (user + system) this process has used so far, all threads: compared with the
/// wall time of a run it tells whether the run was bound by the CPU or waited (on fsync).
pub fn process_cpu_time() -> std::time::Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer we pass; on failure we read zeros.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time (user + system, all threads) another process has used so far, from
/// `/proc/<pid>/stat`: a server's CPU per request, apart from the load tool's, which shares
/// the cores with it.
pub fn cpu_time_of(pid: u32) -> std::io::Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, ticks) = stat_ticks(&stat)
        .ok_or_else(|| std::io::Error::other(format!("/proc/{pid}/stat: unexpected layout")))?;
    Ok(ticks_to_duration(ticks[0] + ticks[1]))
}

/// CPU time every process named `postgres` on this machine has used so far, with what
/// their reaped children used (a backend that exited counts in the postmaster's): a
/// run's delta is the server's share of the two cores, when the server is local. None
/// when no such process is visible (a remote server).
pub fn postgres_cpu_time() -> Option<std::time::Duration> {
    let mut total = 0;
    let mut seen = false;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue; // not a process, or gone meanwhile
        };
        if let Some(("postgres", ticks)) = stat_ticks(&stat) {
            seen = true;
            total += ticks.iter().sum::<u64>();
        }
    }
    seen.then(|| ticks_to_duration(total))
}

/// The command name and the utime, stime, cutime and cstime (clock ticks) of a
/// `/proc/<pid>/stat` line.
fn stat_ticks(stat: &str) -> Option<(&str, [u64; 4])> {
    // The command name sits in parentheses and may hold spaces; the fields after it start
    // at field 3 (state); utime, stime, cutime and cstime are fields 14 to 17.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((name, [tick(11)?, tick(12)?, tick(13)?, tick(14)?]))
}

fn ticks_to_duration(ticks: u64) -> std::time::Duration {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    std::time::Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_second)
}

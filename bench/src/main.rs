//! syncjobs-bench: the benchmarks of BENCHMARKS.md. `bench/run` builds everything in release
//! mode and calls this binary; it runs the benchmarks asked for (all by default), each against
//! a baseline measured in the same run, and writes the report (`bench/results/latest.md`).
//!
//! #1 and #6 drive the library in process (embedded store, pipeline); #2-#5 drive the
//! `syncjobs` binary over HTTP on 127.0.0.1, as a client would. Every server this starts is
//! stopped when its benchmark ends, fails, or the run is interrupted.
//!
//! - The benchmarks, one module each: [`append`] (#1), [`http_get`] (#2), [`cancel`] (#3),
//!   [`recovery`] (#4), [`scale`] (#5), [`pipeline`] (#6), [`growth`] (#7), [`streams`] (#8),
//!   [`delete`] (#9), [`stall`] (#10, run only when named or with `--history`), [`postgres`]
//!   (#11 and #12: the PostgreSQL store), [`webhooks`] (#13: webhook delivery), [`cluster`]
//!   (#14: API and worker nodes in separate processes).
//! - Their baselines: [`raw`] (plain rusqlite doing the same physical work) and
//!   [`baseline_server`] (#2's bare actix-web server).
//! - What they drive: [`server`] (starts and stops the processes), [`client`] (the REST API),
//!   [`wrk`] (the HTTP load tool), [`workload`] (the events the service records),
//!   [`history`] (stores that already hold N jobs).
//! - What they report: [`stats`] (percentiles), [`machine`] (what it ran on), [`report`]
//!   (`bench/results/latest.md`), [`error`] (why a benchmark could not run).

mod append;
mod baseline_server;
mod cancel;
mod client;
mod cluster;
mod delete;
mod error;
mod growth;
mod history;
mod http_get;
mod machine;
mod pipeline;
mod postgres;
mod raw;
mod recovery;
mod report;
mod scale;
mod server;
mod stall;
mod stats;
mod streams;
mod webhooks;
mod workload;
mod wrk;

use clap::{Args, Parser, Subcommand};
use error::{BenchError, Result};
use machine::{LoadAvg, Machine};
use report::{Outcome, Report, Section, Verdict};
use std::path::PathBuf;

/// The service's allocator (see `src/main.rs`), so that #1 and #6, which drive the library in
/// this process, measure what the service runs; the baselines share it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "syncjobs-bench",
    about = "The syncjobs benchmarks (see BENCHMARKS.md); normally started by bench/run",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// The bare actix-web server of benchmark #2's baseline (started by the benchmark).
    #[command(hide = true)]
    BaselineServer(baseline_server::Args),
    /// Writes the store of #4 into a data directory and keeps it, e.g. to profile a start:
    /// `perf record -g -- syncjobs serve` with `SYNCJOBS_DATA_DIR` pointing at it.
    GenerateStore(recovery::GenerateArgs),
    /// The other process of #11's follower delay (started by the benchmark).
    #[command(hide = true)]
    PgFollow(postgres::FollowArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Benchmarks to run, by number; when none is given, all but #10, which runs only with
    /// `--history` (it compares a fresh store with one with history, for 2 minutes).
    benches: Vec<u8>,
    /// Smaller sizes and shorter runs: a quick look, not figures to record.
    #[arg(long)]
    quick: bool,
    /// Run #2, #3 and #5 (and #10 beside a fresh store) on a store that already holds this
    /// many completed jobs (0: a fresh store). Each size is generated once and kept under
    /// the work directory.
    #[arg(long, default_value_t = 0)]
    history: u64,
    /// Where the report goes.
    #[arg(long, default_value = "bench/results/latest.md")]
    out: PathBuf,
    /// Scratch space for stores and servers; put it on the disk that matters (fsync on
    /// tmpfs costs nothing).
    #[arg(long, default_value = "bench/results/work")]
    work_dir: PathBuf,
    /// The `syncjobs` binary (default: beside this one, i.e. the same release build).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The HTTP load tool of #2.
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    /// The PostgreSQL server of #11, #12 and #14 (a role that may create databases; each
    /// run makes fresh ones and drops them).
    #[arg(
        long,
        env = "SYNCJOBS_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// The command line to record in the report.
    #[arg(long, default_value = "bench/run")]
    command_line: String,
    /// The source revision to record in the report.
    #[arg(long, default_value = "unknown")]
    revision: String,
}

/// What every benchmark gets.
pub struct Config {
    pub quick: bool,
    /// Jobs of history under #2, #3, #5 and #10 (0: a fresh store).
    pub history: u64,
    pub work_dir: PathBuf,
    pub server_bin: PathBuf,
    /// This binary, for the baseline server of #2.
    pub bench_bin: PathBuf,
    pub wrk: PathBuf,
    /// The PostgreSQL server of #11, #12 and #14.
    pub postgres: String,
}

/// The benchmarks `--history` puts on a store with history.
const HISTORY_BENCHES: [u8; 3] = [2, 3, 5];
/// Left out of a run that names no benchmark unless `--history` is given.
const NEEDS_HISTORY: [u8; 1] = [10];

struct Bench {
    number: u8,
    title: &'static str,
    target: &'static str,
}

const BENCHES: [Bench; 14] = [
    Bench {
        number: 1,
        title: "durable appends/s, 1/16/256 concurrent appenders",
        target: ">= 0.8 x raw rusqlite at 256",
    },
    Bench {
        number: 2,
        title: "GET one job over HTTP, 64 connections",
        target: ">= 0.7 x bare actix-web",
    },
    Bench {
        number: 3,
        title: "cancel latency (POST cancel -> `cancelled` observed)",
        target: "p99 <= 3 x two durable commits, at 1000 jobs",
    },
    Bench {
        number: 4,
        title: "recovery: start on 100k jobs / 1M events until ready",
        target: "<= 2 x raw sequential scan",
    },
    Bench {
        number: 5,
        title: "scale: 10,000 jobs running at once",
        target: "RSS <= 300 MB, p99 of GET one job and of a list <= 10 ms",
    },
    Bench {
        number: 6,
        title: "pipeline entities/s, 10 x 10,000 timed entities",
        target: ">= 0.5 x raw batched inserts",
    },
    Bench {
        number: 7,
        title: "start-up and memory against history (10k, 100k, 1M jobs)",
        target: "at 1M jobs: RSS <= 200 MB, start until healthy <= 2 s (issue #13)",
    },
    Bench {
        number: 8,
        title: "write load with 1,000 open event streams (start/cancel jobs)",
        target: ">= 0.9 x the events/s with no stream open (issue #18)",
    },
    Bench {
        number: 9,
        title: "delete a source connection with 100,000 jobs, under probes",
        target: "done (answered, rows gone) <= 1 s, no probe past 10 ms meanwhile (issue #13)",
    },
    Bench {
        number: 10,
        title: "no periodic stall: cancel and run for 2 minutes, fresh vs history",
        target: "p99 of each command with history <= 2 x fresh (issue #13)",
    },
    Bench {
        number: 11,
        title:
            "PostgreSQL: durable appends/s (1/16/256 appenders), follower delay across processes",
        target: ">= 0.8 x raw INSERTs at 256 appenders (issue #14)",
    },
    Bench {
        number: 12,
        title: "PostgreSQL: first start on 100k jobs / 1M events until ready",
        target: "<= 2 x a raw COPY of the events table (issue #14)",
    },
    Bench {
        number: 13,
        title: "webhooks: events to deliveries/s with 100 subscriptions, commit -> delivery",
        target: "p99 commit -> delivery <= 1 s at 100 subscriptions (issue #17)",
    },
    Bench {
        number: 14,
        title: "API and worker processes: cancel across nodes, rescue of a killed worker, 1,000 claims",
        target: "cancel p99 <= 3 x (2 commits + a wake-up); rescue <= timeout + 2 s; each job claimed once (issue #15)",
    },
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| eprintln!("syncjobs-bench: cannot start a runtime: {e}"))
    };
    match cli.command {
        Some(Command::BaselineServer(args)) => {
            return match baseline_server::serve(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("baseline server: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::GenerateStore(args)) => {
            let Ok(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            return match rt.block_on(recovery::generate_command(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("syncjobs-bench: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::PgFollow(args)) => {
            let Ok(rt) = runtime() else {
                return ExitCode::FAILURE;
            };
            return match rt.block_on(postgres::follow_command(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("syncjobs-bench pg-follow: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let Ok(runtime) = runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(cli.run)) {
        Ok(report) => {
            print!("{}", report.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("syncjobs-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<Report> {
    let selected: Vec<u8> = if args.benches.is_empty() {
        BENCHES
            .iter()
            .map(|b| b.number)
            .filter(|n| args.history > 0 || !NEEDS_HISTORY.contains(n))
            .collect()
    } else {
        args.benches.clone()
    };
    if let Some(n) = selected
        .iter()
        .find(|n| !BENCHES.iter().any(|b| b.number == **n))
    {
        let numbers: Vec<String> = BENCHES.iter().map(|b| b.number.to_string()).collect();
        return Err(BenchError::failed(format!(
            "no benchmark #{n} (there are {})",
            numbers.join(", ")
        )));
    }
    tokio::fs::create_dir_all(&args.work_dir).await?;
    let bench_bin = std::env::current_exe()?;
    let config = Config {
        quick: args.quick,
        history: args.history,
        work_dir: args.work_dir.clone(),
        server_bin: args
            .server_bin
            .clone()
            .unwrap_or_else(|| bench_bin.with_file_name("syncjobs")),
        bench_bin,
        wrk: args.wrk.clone(),
        postgres: args.postgres.clone(),
    };
    let mut report = Report {
        machine: Machine::describe(&args.work_dir),
        command: args.command_line.clone(),
        revision: args.revision.clone(),
        quick: args.quick,
        started: chrono::Utc::now(),
        sections: Vec::new(),
    };
    for bench in BENCHES.iter().filter(|b| selected.contains(&b.number)) {
        eprintln!("== #{} {}", bench.number, bench.title);
        let load_before = LoadAvg::now();
        let started = Instant::now();
        let outcome = tokio::select! {
            result = run_one(bench.number, &config) => match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    eprintln!("   #{} could not run: {e}", bench.number);
                    Outcome {
                        headline: format!("could not run: {e}"),
                        verdict: Verdict::NotRun,
                        body: format!("The benchmark could not run: {e}\n"),
                    }
                }
            },
            // Dropping the benchmark's future stops every server it started.
            signal = interrupted() => {
                report.write(&args.out).await?;
                return Err(BenchError::failed(format!("interrupted by {signal}")));
            }
        };
        let mut outcome = outcome;
        if config.history > 0 && HISTORY_BENCHES.contains(&bench.number) {
            outcome.headline = format!(
                "{} [on {} jobs of history]",
                outcome.headline, config.history
            );
        }
        eprintln!("   {}", outcome.headline);
        report.sections.push(Section {
            number: bench.number,
            title: bench.title,
            target: bench.target,
            outcome,
            load_before,
            load_after: LoadAvg::now(),
            took: started.elapsed(),
        });
        report.write(&args.out).await?;
    }
    Ok(report)
}

async fn run_one(number: u8, config: &Config) -> Result<Outcome> {
    match number {
        1 => append::run(config).await,
        2 => http_get::run(config).await,
        3 => cancel::run(config).await,
        4 => recovery::run(config).await,
        5 => scale::run(config).await,
        6 => pipeline::run(config).await,
        7 => growth::run(config).await,
        8 => streams::run(config).await,
        9 => delete::run(config).await,
        10 => stall::run(config).await,
        11 => postgres::run(config).await,
        12 => postgres::recovery(config).await,
        13 => webhooks::run(config).await,
        14 => cluster::run(config).await,
        n => Err(BenchError::failed(format!("no benchmark #{n}"))),
    }
}

/// Resolves on SIGINT or SIGTERM with the signal's name.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action (exit) applies; servers die with their
        // process group when the terminal sends the signal.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

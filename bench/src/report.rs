//! The report: one markdown section per benchmark plus a summary table, written to
//! `bench/results/latest.md` after every benchmark so an interrupted run keeps what it measured.

use crate::machine::{LoadAvg, Machine};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Whether a benchmark met its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// It could not run; the headline says why.
    NotRun,
}

impl Verdict {
    /// `Met` when `ok`, else `Missed`.
    pub fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn label(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "**missed**",
            Verdict::NotRun => "**not run**",
        }
    }
}

/// What one benchmark found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The figure that decides the verdict, in a few words (`0.91 x raw at 256 appenders`).
    pub headline: String,
    pub verdict: Verdict,
    /// Tables and notes, markdown.
    pub body: String,
}

/// One benchmark's section of the report.
#[derive(Debug, Clone)]
pub struct Section {
    pub number: u8,
    pub title: &'static str,
    pub target: &'static str,
    pub outcome: Outcome,
    pub load_before: LoadAvg,
    pub load_after: LoadAvg,
    pub took: Duration,
}

/// The whole report of one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub revision: String,
    pub quick: bool,
    pub started: chrono::DateTime<chrono::Utc>,
    pub sections: Vec<Section>,
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(out, "# syncjobs benchmarks: latest run\n");
        let _ = writeln!(out, "- date: {} UTC", self.started.format("%Y-%m-%d %H:%M"));
        let _ = writeln!(out, "- command: `{}`", self.command);
        let _ = writeln!(out, "- revision: {}", self.revision);
        let _ = writeln!(
            out,
            "- sizes: {}",
            if self.quick {
                "quick (`--quick`: smaller sizes, figures are indicative only)"
            } else {
                "full"
            }
        );
        let _ = writeln!(
            out,
            "- machine: {} cores ({}), {:.1} GiB memory, Linux {}",
            m.cores,
            m.cpu_model,
            m.memory_bytes as f64 / f64::from(1u32 << 30),
            m.kernel
        );
        let _ = writeln!(out, "- work directory: {}", m.work_disk);
        let _ = writeln!(out, "\n## Summary\n");
        let mut summary = Table::new(&["#", "what", "result", "target", "verdict"]);
        for s in &self.sections {
            summary.row(vec![
                s.number.to_string(),
                s.title.to_string(),
                s.outcome.headline.clone(),
                s.target.to_string(),
                s.outcome.verdict.label().to_string(),
            ]);
        }
        out.push_str(&summary.render());
        for s in &self.sections {
            let _ = writeln!(out, "\n## {}. {}\n", s.number, s.title);
            let _ = writeln!(
                out,
                "Target: {}. Verdict: {} ({}).\n",
                s.target,
                s.outcome.verdict.label(),
                s.outcome.headline
            );
            let _ = writeln!(
                out,
                "Load average (1/5/15 min) before: {}, after: {}; took {:.0} s.\n",
                s.load_before,
                s.load_after,
                s.took.as_secs_f64()
            );
            out.push_str(s.outcome.body.trim_end());
            out.push('\n');
        }
        out
    }

    /// Writes the report, creating the directory if needed.
    pub async fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        tokio::fs::write(path, self.render()).await
    }
}

/// A markdown table.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        out.push_str(&line(&self.header));
        out.push_str(&line(&vec!["---".to_string(); self.header.len()]));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

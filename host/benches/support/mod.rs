//! What every benchmark shares: where a figure comes from (commit, machine, backend and
//! its durability settings), statistics over several runs, the table printer, and a few
//! Kafka chores.

#![allow(dead_code)] // each bench target uses its own part of this module

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use switchyard::config::Routing;
use switchyard::store::Db;

/// `cargo bench` passes `--bench`; `cargo test --benches` (or `--all-targets`) runs the
/// same binary without it. Benchmarks are never part of a test run, so without the flag
/// the target only says so and exits.
pub fn run_by_cargo_bench(target: &str) -> bool {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        println!("{target}: a benchmark; run it with `just {target}` (cargo bench), not as a test");
    }
    bench
}

/// The commit the figures belong to: `git rev-parse --short HEAD`, with `+dirty` when
/// tracked files differ from it.
pub fn commit(workspace: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{head}+dirty"),
        _ => head,
    }
}

/// CPU time this process has used so far (user + system, all threads), in seconds: what
/// a change costs in work, which on a shared machine wanders less than wall time.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The CPU time of each live thread of this process, in nanoseconds, with its name:
/// from `/proc/self/task/*/schedstat` (nanosecond clock; `stat`'s ticks are 10 ms).
#[derive(Debug, Clone, Default)]
pub struct ThreadCpu(std::collections::HashMap<u32, (String, u64)>);

impl ThreadCpu {
    pub fn now() -> ThreadCpu {
        let mut threads = std::collections::HashMap::new();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return ThreadCpu(threads);
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let read = |file: &str| std::fs::read_to_string(task.path().join(file)).ok();
            // A thread that ended between the listing and the read is skipped.
            let (Some(name), Some(schedstat)) = (read("comm"), read("schedstat")) else {
                continue;
            };
            let Some(ns) = schedstat.split_whitespace().next().and_then(|n| n.parse().ok()) else {
                continue;
            };
            threads.insert(tid, (name.trim().to_string(), ns));
        }
        ThreadCpu(threads)
    }

    /// Each thread alive now, by name, with the CPU seconds it spent since `earlier`; a
    /// thread started since (or a reused id under another name) counts from zero.
    pub fn since<'a>(&'a self, earlier: &'a ThreadCpu) -> impl Iterator<Item = (&'a str, f64)> {
        self.0.iter().map(|(tid, (name, ns))| {
            let before = earlier.0.get(tid).filter(|(n, _)| n == name).map_or(0, |(_, ns)| *ns);
            (name.as_str(), ns.saturating_sub(before) as f64 / 1e9)
        })
    }
}

/// CPUs and the load average when the run started: on a shared machine the second says
/// how much the figures were disturbed.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into());
    format!("{cpus} CPUs, load average {load} at start")
}

/// The backend and the settings that decide whether a commit survives a power loss,
/// read from the live connection (SQLite `synchronous` is per connection), or from
/// the server (PostgreSQL `synchronous_commit`, `fsync`).
pub async fn durability(db: &Db) -> anyhow::Result<String> {
    match (db.sqlite_pool(), db.postgres_pool()) {
        (Some(pool), _) => {
            let (level,): (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(pool).await?;
            let (journal,): (String,) = sqlx::query_as("PRAGMA journal_mode").fetch_one(pool).await?;
            let level = match level {
                0 => "OFF",
                1 => "NORMAL",
                2 => "FULL",
                3 => "EXTRA",
                _ => "?",
            };
            Ok(format!("SQLite synchronous={level} journal_mode={journal}"))
        }
        (_, Some(pool)) => {
            let show = |name: &'static str| async move {
                let (value,): (String,) = sqlx::query_as(&format!("SHOW {name}")).fetch_one(pool).await?;
                anyhow::Ok(value)
            };
            let version = show("server_version").await?;
            let version = version.split_whitespace().next().unwrap_or_default().to_string();
            Ok(format!(
                "PostgreSQL {version} synchronous_commit={} fsync={}",
                show("synchronous_commit").await?,
                show("fsync").await?
            ))
        }
        _ => unreachable!("a database is SQLite or PostgreSQL"),
    }
}

/// Values of one case over several runs, reported as min / median / max.
#[derive(Debug, Clone, Default)]
pub struct Spread(Vec<f64>);

impl Spread {
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut values = self.0.clone();
        values.sort_by(f64::total_cmp);
        values
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn median(&self) -> f64 {
        let values = self.sorted();
        match values.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => values[n / 2],
            n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    /// The value a share `q` (0–1) of the runs is at or below, interpolated between ranks.
    pub fn quantile(&self, q: f64) -> f64 {
        let values = self.sorted();
        if values.is_empty() {
            return f64::NAN;
        }
        let rank = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
        let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
        values[low] + (values[high] - values[low]) * (rank - low as f64)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// The same runs through `f` (e.g. seconds per event → events per second).
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Spread {
        Spread(self.0.iter().map(|v| f(*v)).collect())
    }

    pub fn runs(&self) -> usize {
        self.0.len()
    }

    /// Each run over the run of `base` pushed at the same position (the same round of
    /// runs taken in turn), minus one: the overhead of this case over `base` per round.
    /// A drift in the machine's load between rounds cancels out of these ratios, which
    /// it does not from the ratio of two medians.
    pub fn paired_overhead(&self, base: &Spread) -> Spread {
        Spread(self.0.iter().zip(&base.0).map(|(v, b)| v / b - 1.0).collect())
    }

    /// Like [`Spread::paired_overhead`], as a difference: each run less `base`'s run of the
    /// same round.
    pub fn paired_difference(&self, base: &Spread) -> Spread {
        Spread(self.0.iter().zip(&base.0).map(|(v, b)| v - b).collect())
    }

    /// `median (min-max)`, each value through `show`.
    pub fn show(&self, show: impl Fn(f64) -> String) -> String {
        format!("{} ({}–{})", show(self.median()), show(self.min()), show(self.max()))
    }
}

/// Nearest-rank percentile `p` (0-100] of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A Markdown table, columns sized to their widest cell.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub fn new(title: impl Into<String>, header: &[&str]) -> Table {
        Table {
            title: title.into(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "row width");
        self.rows.push(cells);
    }

    /// A line printed under the table (what a column means, what was left out).
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn print(&self) {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|c| {
                std::iter::once(&self.header[c])
                    .chain(self.rows.iter().map(|r| &r[c]))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let cells: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, w))| {
                    let pad = w - cell.chars().count();
                    if i == 0 {
                        format!("{cell}{}", " ".repeat(pad))
                    } else {
                        format!("{}{cell}", " ".repeat(pad))
                    }
                })
                .collect();
            println!("| {} |", cells.join(" | "));
        };
        println!("\n{}\n", self.title);
        line(&self.header);
        // The first column reads left-aligned, figures right-aligned.
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    "-".repeat(w + 2)
                } else {
                    format!("{}:", "-".repeat(w + 1))
                }
            })
            .collect();
        println!("|{}|", rule.join("|"));
        for row in &self.rows {
            line(row);
        }
        for note in &self.notes {
            println!("- {note}");
        }
    }
}

/// Resident and peak resident memory of a process, KiB (`/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

pub fn mib(kib: u64) -> String {
    format!("{:.0} MiB", kib as f64 / 1024.0)
}

/// The high watermark of every partition of `topic`. Right after a topic is created its
/// leader may not answer yet (NotLeaderForPartition), so this asks again for a while.
pub fn end_offsets(base: &ClientConfig, topic: &str, partitions: i32) -> anyhow::Result<Vec<i64>> {
    let consumer: BaseConsumer = base.create().context("creating a metadata consumer")?;
    (0..partitions)
        .map(|partition| {
            let start = Instant::now();
            loop {
                match consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                    Ok((_, high)) => return Ok(high),
                    Err(_) if start.elapsed() < Duration::from_secs(30) => {
                        std::thread::sleep(Duration::from_millis(200))
                    }
                    Err(err) => anyhow::bail!("watermarks of {topic}[{partition}]: {err}"),
                }
            }
        })
        .collect()
}

/// Commits the end of each route's topic for its group, so that the run's fresh groups
/// skip what earlier runs left on a shared broker instead of replaying it.
pub fn start_groups_at_the_end(base: &ClientConfig, routing: &Routing) -> anyhow::Result<()> {
    for route in &routing.routes {
        let partitions = routing.topics[&route.topic].partitions as i32;
        let ends = end_offsets(base, route.topic.as_str(), partitions)?;
        let mut offsets = TopicPartitionList::new();
        for (partition, high) in ends.into_iter().enumerate() {
            offsets.add_partition_offset(route.topic.as_str(), partition as i32, Offset::Offset(high))?;
        }
        let mut config = base.clone();
        config.set("group.id", &route.group);
        let consumer: BaseConsumer = config.create()?;
        let start = Instant::now();
        while let Err(err) = consumer.commit(&offsets, CommitMode::Sync) {
            if start.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("committing start offsets of group {}: {err}", route.group);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

//! The standard process series (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`,
//! `process_start_time_seconds`), read from `/proc/self` at each scrape, with the names and
//! meanings of the Prometheus client libraries' process collectors.
//!
//! Owns: parsing `/proc/self/stat`, `/proc/self/limits` and `/proc/stat`. Must never: fail a
//! scrape (a file that cannot be read or parsed leaves its series out).

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// What `/proc/self/stat` says about the process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Threads.
    pub threads: u64,
    /// Start, in clock ticks after boot.
    pub start_ticks: u64,
    /// Virtual memory size, bytes.
    pub vsize: u64,
    /// Resident set size, pages.
    pub rss_pages: u64,
}

/// Parses the text of `/proc/<pid>/stat` (see proc(5)). The command name (field 2) is in
/// parentheses and may hold spaces and parentheses: fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0.
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: num(14)? + num(15)?,
        threads: num(20)?,
        start_ticks: num(22)?,
        vsize: num(23)?,
        rss_pages: num(24)?,
    })
}

/// The soft limit of open files from the text of `/proc/<pid>/limits`.
pub fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?;
    // "unlimited" is not a number: the series is left out.
    soft.parse().ok()
}

/// The boot time (seconds since the epoch) from the text of `/proc/stat`.
pub fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The collector: reads `/proc/self` at each scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    ticks_per_second: f64,
    page_size: u64,
    boot_time: Option<u64>,
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessCollector {
    /// Reads what does not change while the process runs (clock tick, page size, boot time).
    pub fn new() -> Self {
        // SAFETY: sysconf reads a configuration value; no memory is passed.
        let (tck, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        ProcessCollector {
            ticks_per_second: if tck > 0 { tck as f64 } else { 100.0 },
            page_size: if page > 0 { page as u64 } else { 4096 },
            boot_time: fs::read_to_string("/proc/stat")
                .ok()
                .as_deref()
                .and_then(parse_boot_time),
        }
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stat = fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(parse_stat);
        if let Some(s) = stat {
            let cpu = ConstCounter::new(s.cpu_ticks as f64 / self.ticks_per_second);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let e = &mut encoder;
            gauge(
                e,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                (s.rss_pages * self.page_size) as f64,
            )?;
            gauge(
                e,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.vsize as f64,
            )?;
            gauge(
                e,
                "process_threads",
                "Number of OS threads",
                s.threads as f64,
            )?;
            if let Some(boot) = self.boot_time {
                let start = boot as f64 + s.start_ticks as f64 / self.ticks_per_second;
                gauge(
                    e,
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds",
                    start,
                )?;
            }
        }
        if let Ok(dir) = fs::read_dir("/proc/self/fd") {
            // Counts the descriptor read_dir itself holds open, as other collectors do.
            let open = dir.count();
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                open as f64,
            )?;
        }
        let max = fs::read_to_string("/proc/self/limits")
            .ok()
            .as_deref()
            .and_then(parse_max_fds);
        if let Some(max) = max {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                max as f64,
            )?;
        }
        Ok(())
    }
}

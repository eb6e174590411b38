//! Progress of long stages for people and for logs.
//!
//! On a terminal a stage shows an `indicatif` bar. Without one (a batch job, a log
//! file) a background thread writes one `tracing` line per interval — done/total,
//! rate, ETA — whether or not the stage advanced, so a stalled stage is visible too.
//! The interval is [`interval`]: `--progress-interval` or
//! `OVERINTERP_PROGRESS_INTERVAL` (seconds, fractions allowed), 30 s by default.
//! A cluster leader reports the same through [`leader_hook`], with each worker's
//! throughput.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use overinterp_cluster::net::ProgressHook;
use overinterp_cluster::proto::JobStatus;

/// Environment variable giving the log interval in seconds.
pub const INTERVAL_ENV: &str = "OVERINTERP_PROGRESS_INTERVAL";
/// The log interval when neither the flag nor the variable sets one.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

static INTERVAL: OnceLock<Duration> = OnceLock::new();

/// Sets the log interval for this process (the CLI's `--progress-interval`); the
/// first call wins. Later [`Progress`]es use it.
pub fn set_interval(every: Duration) {
    let _ = INTERVAL.set(every.max(Duration::from_millis(10)));
}

/// Parses an interval in seconds (`30`, `0.5`).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!(
            "progress interval {s:?} is not a positive number of seconds"
        )),
    }
}

/// The log interval: set by [`set_interval`], else [`INTERVAL_ENV`], else 30 s. A
/// malformed variable is reported once and ignored.
pub fn interval() -> Duration {
    *INTERVAL.get_or_init(|| match std::env::var(INTERVAL_ENV) {
        Ok(v) => parse_interval(&v).unwrap_or_else(|e| {
            tracing::warn!("{INTERVAL_ENV}: {e}; using {}s", DEFAULT_INTERVAL.as_secs());
            DEFAULT_INTERVAL
        }),
        Err(_) => DEFAULT_INTERVAL,
    })
}

/// Whether stderr (where logs and bars go) is a terminal.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Seconds as people read them: `42s`, `3m 07s`, `5h 02m`, `2d 04h`.
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "unknown".into();
    }
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Rate and ETA of `done` of `total` after `elapsed` seconds: (per second, ETA text).
pub fn rate_and_eta(done: u64, total: u64, elapsed: f64) -> (f64, String) {
    let rate = done as f64 / elapsed.max(1e-9);
    let eta = if done == 0 {
        "unknown".to_string()
    } else if done >= total {
        "0s".to_string()
    } else {
        human_duration(total.saturating_sub(done) as f64 / rate)
    };
    (rate, eta)
}

/// What the log thread reads.
struct Shared {
    what: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
    /// Set by `finish`/drop; wakes the log thread.
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    fn log_line(&self) {
        let done = self.done.load(Ordering::Relaxed);
        let elapsed = self.started.elapsed().as_secs_f64();
        let (rate, eta) = rate_and_eta(done, self.total, elapsed);
        tracing::info!(
            stage = %self.what,
            done,
            total = self.total,
            rate = format!("{rate:.2}/s"),
            elapsed = %human_duration(elapsed),
            eta = %eta,
            "progress"
        );
    }
}

/// Progress of one long loop: a bar on a terminal, a log line per [`interval`]
/// otherwise (see the module doc). Finishes on [`finish`](Self::finish) or drop.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    shared: Arc<Shared>,
    logger: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts tracking `total` units of the stage `what` ("sis", "epoch 3/200").
    pub fn new(what: &str, total: u64) -> Self {
        Self::with_output(what, total, stderr_is_terminal(), interval())
    }

    /// As [`new`](Self::new), choosing bar or log lines explicitly.
    pub fn with_output(what: &str, total: u64, terminal: bool, every: Duration) -> Self {
        let shared = Arc::new(Shared {
            what: what.to_string(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}",
                )
                .expect("static template is valid")
                .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
            bar
        });
        let logger = (!terminal).then(|| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || log_every(&shared, every))
                .expect("spawning the progress thread")
        });
        Self {
            bar,
            shared,
            logger,
        }
    }

    /// Counts `n` more units done.
    pub fn inc(&mut self, n: u64) {
        self.shared.done.fetch_add(n, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.shared.done.load(Ordering::Relaxed)
    }

    /// Ends the bar or the log thread.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(logger) = self.logger.take() {
            *self
                .shared
                .stopped
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = true;
            self.shared.wake.notify_all();
            let _ = logger.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The log thread: a line per `every` until stopped.
fn log_every(shared: &Shared, every: Duration) {
    let mut next = Instant::now() + every;
    let mut stopped = shared.stopped.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let now = Instant::now();
        if *stopped {
            return;
        }
        if now >= next {
            drop(stopped);
            shared.log_line();
            next += every;
            stopped = shared.stopped.lock().unwrap_or_else(|p| p.into_inner());
            continue;
        }
        stopped = shared
            .wake
            .wait_timeout(stopped, next - now)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// The leader's progress: a bar on a terminal (updated every second), otherwise a
/// log line per [`interval`] with the job's done/total, rate, ETA, shards and each
/// worker's throughput.
pub fn leader_hook(what: &str) -> ProgressHook {
    let what = what.to_string();
    if stderr_is_terminal() {
        let bar = Mutex::new(None::<indicatif::ProgressBar>);
        return ProgressHook {
            every: Duration::from_secs(1),
            report: Arc::new(move |s: &JobStatus| {
                let mut bar = bar.lock().unwrap_or_else(|p| p.into_inner());
                let bar = bar.get_or_insert_with(|| {
                    let b = indicatif::ProgressBar::new(s.images_total);
                    b.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg} [{bar:30}] {pos}/{len} {wide_msg}",
                        )
                        .expect("static template is valid")
                        .progress_chars("=> "),
                    );
                    b
                });
                bar.set_length(s.images_total);
                bar.set_position(s.images_done);
                bar.set_message(format!(
                    "{what} {:.2} img/s ETA {} {} worker(s)",
                    s.images_per_s,
                    s.eta_s.map_or("unknown".into(), human_duration),
                    s.workers.len()
                ));
            }),
        };
    }
    ProgressHook {
        every: interval(),
        report: Arc::new(move |s: &JobStatus| log_job_status(&what, s)),
    }
}

/// One progress line for a cluster job's status.
pub fn log_job_status(what: &str, s: &JobStatus) {
    tracing::info!(
        stage = %what,
        done = s.images_done,
        total = s.images_total,
        resumed = s.images_resumed,
        rate = format!("{:.2}/s", s.images_per_s),
        elapsed = %human_duration(s.elapsed_s),
        eta = %s.eta_s.map_or("unknown".into(), human_duration),
        shards = format!(
            "{} done, {} syncing, {} leased, {} pending",
            s.shards.done, s.shards.syncing, s.shards.leased, s.shards.pending
        ),
        workers = %worker_rates(s),
        "progress"
    );
}

/// `name rate/s (images)` for each connected worker, comma-separated.
pub fn worker_rates(s: &JobStatus) -> String {
    if s.workers.is_empty() {
        return "none connected".into();
    }
    s.workers
        .iter()
        .map(|w| {
            format!(
                "{} {:.2}/s ({} images)",
                w.name, w.images_per_s, w.images_accepted
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(59.0), "59s");
        assert_eq!(human_duration(187.0), "3m 07s");
        assert_eq!(human_duration(5.0 * 3600.0 + 125.0), "5h 02m");
        assert_eq!(human_duration(2.0 * 86400.0 + 4.0 * 3600.0), "2d 04h");
        assert_eq!(human_duration(f64::INFINITY), "unknown");
    }

    #[test]
    fn eta_is_the_remaining_work_at_the_mean_rate() {
        // 25 of 100 in 10 s: 2.5/s, 75 left → 30 s.
        let (rate, eta) = rate_and_eta(25, 100, 10.0);
        assert!((rate - 2.5).abs() < 1e-12);
        assert_eq!(eta, "30s");
        assert_eq!(rate_and_eta(0, 100, 10.0).1, "unknown");
        assert_eq!(rate_and_eta(100, 100, 10.0).1, "0s");
    }

    #[test]
    fn intervals_parse_as_seconds() {
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("30"), Ok(Duration::from_secs(30)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("soon").unwrap_err().contains("\"soon\""));
    }
}

//! The human study end to end on real Fashion-MNIST: two small CNNs, their SIS
//! stores, `overinterp human build`, and `overinterp human serve` as a real process.
//!
//! - Two participants click through the study in headless Chromium (Debian's
//!   `chromium` + `chromium-driver`, driven over WebDriver); the server is killed with
//!   SIGKILL mid-study and restarted; they continue; `human report`'s numbers are
//!   checked against accuracies computed here from the logged clicks and the
//!   manifest; every byte the browser received (recorded by a proxy) is scanned for
//!   labels and predictions, and every image it received is compared with a
//!   rendering computed here from the dataset and the store.
//! - The server's robustness: admin token, body limits, path traversal, answers only
//!   for the participant's current image, idempotent re-submits, one answer per
//!   image, unknown codes — over raw HTTP, exactly as written.
//!
//! Set `OVERINTERP_SCREENSHOTS=DIR` to keep screenshots of the study and the report.

mod common;
#[path = "human/http.rs"]
mod http;
#[path = "human/proxy.rs"]
mod proxy;
#[path = "human/webdriver.rs"]
mod webdriver;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use common::cli::{run_ok, BIN, DATA};
use serde_json::Value;

/// Models, stores and a built study, made once per test binary.
struct Fixture {
    _dir: tempfile::TempDir,
    study: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// Two small CNNs (seeds 1 and 2, 2 epochs on 3,000 training images), their
/// gradient-BackSelect stores (k = 32) on 128 test images, and a study of one image per
/// class (subsets of 5%, 30%, 50%) built from both with both models evaluated.
fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut stores = Vec::new();
        let mut models = Vec::new();
        for seed in ["1", "2"] {
            let model = dir.path().join(format!("model-{seed}"));
            run_ok(
                Command::new(BIN)
                    .args([
                        "train",
                        "--arch",
                        "small-cnn",
                        "--data",
                        "fashion-mnist?limit=3000",
                    ])
                    .args([
                        "--epochs",
                        "2",
                        "--lr",
                        "0.02",
                        "--milestones",
                        "5",
                        "--no-augment",
                    ])
                    .args(["--no-eval", "--threads", "1", "--seed", seed, "--out"])
                    .arg(&model),
                "overinterp train",
            );
            let store = dir.path().join(format!("store-{seed}"));
            run_ok(
                Command::new(BIN)
                    .args(["sis", "--model"])
                    .arg(&model)
                    .args([
                        "--data", DATA, "--split", "test", "--method", "gradient", "--k", "32",
                    ])
                    .args([
                        "--threshold",
                        "0.3",
                        "--batch",
                        "32",
                        "--no-collection",
                        "--threads",
                        "1",
                    ])
                    .arg("--out")
                    .arg(&store),
                "overinterp sis",
            );
            stores.push(store.display().to_string());
            models.push(model);
        }
        let study = dir.path().join("study");
        let mut build = Command::new(BIN);
        build
            .args([
                "human",
                "build",
                "--stores",
                &stores.join(","),
                "--data",
                DATA,
            ])
            .args([
                "--per-class",
                "1",
                "--min-confidence",
                "0.5",
                "--seed",
                "5",
                "--threads",
                "1",
            ]);
        for m in &models {
            build.arg("--model").arg(m);
        }
        run_ok(build.arg("--out").arg(&study), "overinterp human build");
        Fixture { _dir: dir, study }
    })
}

/// A fresh copy of the fixture study (no answers yet) in `dir/study`.
fn copy_study(dir: &Path) -> PathBuf {
    let from = &fixture().study;
    let to = dir.join("study");
    std::fs::create_dir_all(to.join("images")).unwrap();
    for f in ["study.json", "consent.txt"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    for e in std::fs::read_dir(from.join("images")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join("images").join(e.file_name())).unwrap();
    }
    to
}

fn manifest(study: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(study.join("study.json")).unwrap()).unwrap()
}

/// A running `overinterp human serve`.
struct Server {
    child: Child,
    addr: String,
    admin_url: String,
    token: String,
}

impl Server {
    fn start(study: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["human", "serve"])
            .arg(study)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start overinterp human serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut addr, mut admin_url, mut token) = (None, None, None);
        while token.is_none() {
            let line = lines
                .next()
                .expect("server exited before printing its URLs")
                .unwrap();
            if let Some(u) = line.strip_prefix("participants: http://") {
                addr = Some(u.trim_end_matches('/').to_string());
            } else if let Some(u) = line.strip_prefix("admin:") {
                admin_url = Some(u.trim().to_string());
            } else if let Some(t) = line.strip_prefix("admin token:") {
                token = Some(t.trim().to_string());
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr: addr.expect("participants URL"),
            admin_url: admin_url.expect("admin URL"),
            token: token.unwrap(),
        }
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// The answers as the admin CSV lists them: (participant, trial, choice).
    fn csv_answers(&self) -> Vec<(String, String, i64)> {
        let auth = self.bearer();
        let r = http::get(&self.addr, "/admin/results", &[("Authorization", &auth)]);
        assert_eq!(r.status(), 200, "{}", r.text());
        let text = r.text();
        let mut lines = text.lines();
        assert!(lines
            .next()
            .unwrap()
            .starts_with("participant,position,trial,"));
        lines
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), f[2].to_string(), f[7].parse().unwrap())
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the manifest says about a trial.
#[derive(Clone, Copy, Debug)]
struct TrialFacts {
    image: usize,
    fraction: usize,
    label: i64,
    store: usize,
}

fn trial_facts(m: &Value) -> HashMap<String, TrialFacts> {
    let mut out = HashMap::new();
    for (i, image) in m["images"].as_array().unwrap().iter().enumerate() {
        for (f, t) in image["trials"].as_array().unwrap().iter().enumerate() {
            out.insert(
                t["id"].as_str().unwrap().to_string(),
                TrialFacts {
                    image: i,
                    fraction: f,
                    label: image["label"].as_i64().unwrap(),
                    store: image["store"].as_u64().unwrap() as usize,
                },
            );
        }
    }
    out
}

fn classes(m: &Value) -> Vec<i64> {
    m["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_i64().unwrap())
        .collect()
}

// ---------------------------------------------------------------- the browser study

/// One logged click.
#[derive(Clone, Debug)]
struct Click {
    code: String,
    trial: String,
    choice: i64,
}

fn screenshot(s: &webdriver::Session, name: &str) {
    if let Ok(dir) = std::env::var("OVERINTERP_SCREENSHOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(Path::new(&dir).join(name), s.screenshot()).unwrap();
    }
}

/// The trial id the page shows (from the image's src), or `None` on the end page.
fn shown_trial(s: &webdriver::Session) -> Option<String> {
    let src = s.wait_for("a trial or the end page", |p| {
        p.contains("id=\"stimulus\"") || p.contains("Thank you")
    });
    if src.contains("Thank you") {
        return None;
    }
    let img = s.find("#stimulus").expect("stimulus image");
    let path = s.attribute(&img, "src").expect("src");
    Some(
        path.strip_prefix("/img/")
            .unwrap()
            .strip_suffix(".png")
            .unwrap()
            .to_string(),
    )
}

/// Starts a participant on the welcome page; returns their code.
fn start_participant(s: &webdriver::Session, base: &str, shot: Option<&str>) -> String {
    s.goto(&format!("{base}/"));
    s.wait_for("the welcome page", |p| p.contains("Which object is it?"));
    if let Some(name) = shot {
        screenshot(s, name);
    }
    s.click(&s.find("button.start").expect("start button"));
    s.wait_for("the first image", |p| p.contains("id=\"stimulus\""));
    s.url().rsplit("/p/").next().unwrap().to_string()
}

/// Answers `n` images as participant `who` (0 or 1): correct with a probability
/// that grows with the fraction, by button or by number key, logging each click.
#[allow(clippy::too_many_arguments)]
fn answer(
    s: &webdriver::Session,
    who: usize,
    code: &str,
    n: usize,
    facts: &HashMap<String, TrialFacts>,
    classes: &[i64],
    rng: &mut overinterp::util::SplitMix64,
    log: &mut Vec<Click>,
    total: usize,
) {
    const P_CORRECT: [[f64; 3]; 2] = [[0.2, 0.5, 0.8], [0.3, 0.6, 0.9]];
    for _ in 0..n {
        let trial = shown_trial(s).expect("an image to answer");
        let done = log.iter().filter(|c| c.code == code).count();
        assert!(
            !log.iter().any(|c| c.code == code && c.trial == trial),
            "participant {code} was shown an image they already answered"
        );
        let page = s.source();
        assert!(
            page.contains(&format!("Image {} of {total}", done + 1)),
            "progress of {code} at {done}"
        );
        let f = facts[&trial];
        let correct = rng.unit() <= P_CORRECT[who][f.fraction];
        let choice = if correct {
            f.label
        } else {
            let others: Vec<i64> = classes.iter().copied().filter(|&c| c != f.label).collect();
            others[rng.below(others.len())]
        };
        let key = classes.iter().position(|&c| c == choice).unwrap();
        if log.len().is_multiple_of(3) {
            s.press_key(&key.to_string());
        } else {
            s.click(
                &s.find(&format!("button[value=\"{choice}\"]"))
                    .expect("class button"),
            );
        }
        log.push(Click {
            code: code.to_string(),
            trial: trial.clone(),
            choice,
        });
        s.wait_for("the next page", |p| {
            !p.contains(&format!("/img/{trial}.png"))
        });
    }
}

#[test]
fn two_participants_in_chromium_survive_a_sigkill_and_the_report_matches_their_clicks() {
    let dir = tempfile::tempdir().unwrap();
    let study = copy_study(dir.path());
    let m = manifest(&study);
    let facts = trial_facts(&m);
    let classes = classes(&m);
    let total = facts.len();
    assert_eq!(total, 30, "10 classes × 1 image × 3 fractions");

    let mut server = Server::start(&study);
    let proxy = proxy::Proxy::start(server.addr.parse().unwrap());
    let base = format!("http://{}", proxy.addr);
    let driver = webdriver::Driver::start();
    let a = driver.session(1280, 1000);
    let b = driver.session(1280, 1000);
    let code_a = start_participant(&a, &base, Some("welcome.png"));
    screenshot(&a, "first-image.png");
    let code_b = start_participant(&b, &base, None);
    assert_ne!(code_a, code_b);

    let mut rng = overinterp::util::SplitMix64::new(42);
    let mut log = Vec::new();
    answer(
        &a, 0, &code_a, 10, &facts, &classes, &mut rng, &mut log, total,
    );
    screenshot(&a, "new-batch.png");
    answer(
        &a, 0, &code_a, 2, &facts, &classes, &mut rng, &mut log, total,
    );
    answer(
        &b, 1, &code_b, 7, &facts, &classes, &mut rng, &mut log, total,
    );

    // SIGKILL mid-study: both participants have a page open and answers stored.
    server.child.kill().unwrap();
    let status = server.child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "the server died of SIGKILL");
    drop(server);
    let server = Server::start(&study);
    proxy.set_target(server.addr.parse().unwrap());
    // Every acknowledged answer survived the kill, exactly once.
    let mut stored = server.csv_answers();
    let mut clicked: Vec<(String, String, i64)> = log
        .iter()
        .map(|c| (c.code.clone(), c.trial.clone(), c.choice))
        .collect();
    stored.sort();
    clicked.sort();
    assert_eq!(stored, clicked, "answers stored before the kill");

    // A comes back through the start page with their code (typed in lower case);
    // B reloads the page they were on.
    a.goto(&format!("{base}/"));
    a.wait_for("the welcome page", |p| p.contains("Which object is it?"));
    a.type_into(&a.find("input[name=code]").unwrap(), &code_a.to_lowercase());
    a.click(&a.find("form[action=\"/continue\"] button").unwrap());
    a.wait_for("A's next image", |p| p.contains("Image 13 of 30"));
    b.goto(&b.url());
    b.wait_for("B's next image", |p| p.contains("Image 8 of 30"));
    answer(
        &a, 0, &code_a, 18, &facts, &classes, &mut rng, &mut log, total,
    );
    answer(
        &b, 1, &code_b, 23, &facts, &classes, &mut rng, &mut log, total,
    );
    assert_eq!(shown_trial(&a), None);
    assert_eq!(shown_trial(&b), None);
    screenshot(&a, "done.png");

    // Each participant saw every trial once, batches in increasing fraction, and the
    // two saw the first batch in different orders.
    for code in [&code_a, &code_b] {
        let mine: Vec<&Click> = log.iter().filter(|c| &c.code == code).collect();
        let ids: HashSet<&str> = mine.iter().map(|c| c.trial.as_str()).collect();
        assert_eq!(ids.len(), total);
        let fractions: Vec<usize> = mine.iter().map(|c| facts[&c.trial].fraction).collect();
        assert!(fractions.windows(2).all(|w| w[0] <= w[1]), "{fractions:?}");
    }
    let first_batch = |code: &str| -> Vec<usize> {
        log.iter()
            .filter(|c| c.code == code)
            .take(10)
            .map(|c| facts[&c.trial].image)
            .collect()
    };
    assert_ne!(first_batch(&code_a), first_batch(&code_b));

    let report = dir.path().join("report");
    run_ok(
        Command::new(BIN)
            .args(["human", "report"])
            .arg(&study)
            .arg("--out")
            .arg(&report),
        "overinterp human report",
    );
    check_report(&report, &m, &facts, &log);
    scan_what_the_browser_received(&proxy, &m, &facts, &server, &[&code_a, &code_b]);

    if std::env::var("OVERINTERP_SCREENSHOTS").is_ok() {
        let r = driver.session(1280, 1600);
        r.goto(&format!("file://{}", report.join("report.html").display()));
        r.wait_for("the report", |p| p.contains("Table S3"));
        screenshot(&r, "report.png");
    }
}

/// Mean and sample std, computed here.
fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, if xs.len() > 1 { var.sqrt() } else { 0.0 })
}

fn close(a: f64, b: &Value, what: &str) {
    let b = b
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {b} is not a number"));
    assert!(
        (a - b).abs() < 1e-12,
        "{what}: expected {a}, report has {b}"
    );
}

/// The report's numbers against the same numbers computed from the clicks the test
/// logged and the manifest.
fn check_report(report: &Path, m: &Value, facts: &HashMap<String, TrialFacts>, log: &[Click]) {
    let j: Value =
        serde_json::from_slice(&std::fs::read(report.join("human.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    let fractions: Vec<f64> = m["fractions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_f64().unwrap())
        .collect();
    // Per participant and fraction: (correct, answered).
    let mut counts: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for c in log {
        let f = facts[&c.trial];
        let e = counts
            .entry(&c.code)
            .or_insert_with(|| vec![(0, 0); fractions.len()]);
        e[f.fraction].0 += u64::from(c.choice == f.label);
        e[f.fraction].1 += 1;
    }
    assert_eq!(j["answers"].as_u64(), Some(log.len() as u64));
    let mut points = Vec::new();
    for (f, q) in fractions.iter().enumerate() {
        let accs: Vec<f64> = counts
            .values()
            .map(|v| v[f].0 as f64 / v[f].1 as f64)
            .collect();
        points.extend(accs.iter().map(|&a| (*q, a)));
        let (mean, std) = mean_std(&accs);
        let row = &j["table"][f];
        close(mean, &row["mean"], "Table S3 mean");
        close(std, &row["std"], "Table S3 std");
        assert_eq!(row["participants"].as_u64(), Some(2));
        let line = format!(
            "| {} | 2 | 20 | {:.2} ± {:.2} |",
            (q * 100.0).round(),
            mean * 100.0,
            std * 100.0
        );
        assert!(md.contains(&line), "report.md lacks {line:?}:\n{md}");
    }
    // Least squares on the per-participant points, R² = 1 − SSres/SStot.
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let ss_res: f64 = points
        .iter()
        .map(|p| (p.1 - intercept - slope * p.0).powi(2))
        .sum();
    close(slope, &j["fit"]["slope"], "slope");
    close(intercept, &j["fit"]["intercept"], "intercept");
    close(1.0 - ss_res / syy, &j["fit"]["r2"], "R²");
    assert!(md.contains(&format!("R² = {:.3}", 1.0 - ss_res / syy)));
    // Confusion matrices.
    let classes = classes(m);
    for (f, _) in fractions.iter().enumerate() {
        for (t, &tc) in classes.iter().enumerate() {
            for (a, &ac) in classes.iter().enumerate() {
                let n = log
                    .iter()
                    .filter(|c| {
                        facts[&c.trial].fraction == f
                            && facts[&c.trial].label == tc
                            && c.choice == ac
                    })
                    .count() as u64;
                assert_eq!(
                    j["confusion"][f][t][a].as_u64(),
                    Some(n),
                    "confusion[{f}][{t}][{a}]"
                );
            }
        }
    }
    // Humans by the store that chose the subsets (pooled).
    for row in j["by_store"].as_array().unwrap() {
        let (s, q) = (
            row["store"].as_u64().unwrap() as usize,
            row["fraction"].as_f64().unwrap(),
        );
        let f = fractions.iter().position(|x| *x == q).unwrap();
        let mine: Vec<&Click> = log
            .iter()
            .filter(|c| facts[&c.trial].store == s && facts[&c.trial].fraction == f)
            .collect();
        assert_eq!(row["answers"].as_u64(), Some(mine.len() as u64));
        let ok = mine
            .iter()
            .filter(|c| c.choice == facts[&c.trial].label)
            .count() as u64;
        assert_eq!(row["correct"].as_u64(), Some(ok));
    }
    // Models beside humans: each model on the other store's images vs. on its own.
    let images = m["images"].as_array().unwrap();
    let models = m["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for (k, model) in models.iter().enumerate() {
        let own_store = model["store"]
            .as_u64()
            .expect("each model chose one store's subsets") as usize;
        for (f, _) in fractions.iter().enumerate() {
            let row = j["models"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["model"] == k && r["fraction"].as_f64() == Some(fractions[f]))
                .unwrap();
            let (mut other, mut other_ok, mut own, mut own_ok, mut h_n, mut h_ok) =
                (0, 0, 0, 0, 0u64, 0u64);
            for image in images {
                let label = image["label"].as_i64().unwrap();
                let trial = &image["trials"][f];
                let ok = (trial["predictions"][k].as_i64().unwrap() == label) as usize;
                if image["store"].as_u64().unwrap() as usize == own_store {
                    own += 1;
                    own_ok += ok;
                } else {
                    other += 1;
                    other_ok += ok;
                    for c in log
                        .iter()
                        .filter(|c| c.trial == trial["id"].as_str().unwrap())
                    {
                        h_n += 1;
                        h_ok += u64::from(c.choice == label);
                    }
                }
            }
            assert_eq!(row["other_images"].as_u64(), Some(other));
            assert_eq!(row["own_images"].as_u64(), Some(own));
            close(
                other_ok as f64 / other as f64,
                &row["other_accuracy"],
                "model on others' subsets",
            );
            close(
                own_ok as f64 / own as f64,
                &row["own_accuracy"],
                "model on own subsets",
            );
            assert_eq!(
                (row["human_answers"].as_u64(), row["human_correct"].as_u64()),
                (Some(h_n), Some(h_ok))
            );
        }
    }
    assert!(md.contains("near-tautological"));
    // Response times: every answer was timed in the browser.
    let timed: u64 = j["response_times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["from_browser"].as_u64().unwrap())
        .sum();
    assert_eq!(timed, log.len() as u64);
}

/// Every response the browser received, as recorded by the proxy: no labels, no
/// predictions, no study files; trial pages identical apart from the image id and
/// counters; every image exactly the subset rendering computed here.
fn scan_what_the_browser_received(
    proxy: &proxy::Proxy,
    m: &Value,
    facts: &HashMap<String, TrialFacts>,
    server: &Server,
    codes: &[&str],
) {
    let mut forbidden: Vec<String> = vec![
        "overinterp-human-study".into(),
        "predict".into(),
        "confidence".into(),
        "\"label\"".into(),
        "name=\"label\"".into(),
        "data-label".into(),
        "\"predictions\"".into(),
        "kept_pixels".into(),
        server.token.clone(),
        m["dataset"].as_str().unwrap().into(),
    ];
    for s in m["stores"].as_array().unwrap() {
        forbidden.push(s["path"].as_str().unwrap().into());
        forbidden.push(s["model_sha256"].as_str().unwrap().into());
    }
    for model in m["models"].as_array().unwrap() {
        forbidden.push(model["describe"].as_str().unwrap().into());
    }
    let source =
        overinterp::data::open_dataset(&DATA.parse().unwrap(), overinterp::data::Split::Test)
            .unwrap();
    let stores: Vec<overinterp::store::StoreReader> = m["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| overinterp::store::StoreReader::open(s["path"].as_str().unwrap()).unwrap())
        .collect();
    let mut trial_pages = HashSet::new();
    let mut images_seen = HashSet::new();
    let mut responses = 0;
    for (to_server, to_browser) in proxy.recorded() {
        let requests = http::parse_all(&to_server, false);
        for (req, resp) in requests.iter().zip(http::parse_all(&to_browser, true)) {
            responses += 1;
            let mut all = resp.start.clone();
            for (k, v) in &resp.headers {
                all.push_str(&format!("\n{k}: {v}"));
            }
            all.push_str(&String::from_utf8_lossy(&resp.body));
            for f in &forbidden {
                assert!(
                    !all.contains(f.as_str()),
                    "{} {}: the browser received {f:?}",
                    req.start,
                    resp.status()
                );
            }
            match resp.header("content-type") {
                Some("image/png") => {
                    let id = req
                        .path()
                        .strip_prefix("/img/")
                        .unwrap()
                        .strip_suffix(".png")
                        .unwrap();
                    check_png(&resp.body, facts[id], m, source.as_ref(), &stores);
                    images_seen.insert(id.to_string());
                }
                Some(t) if t.starts_with("text/html") && all.contains("id=\"stimulus\"") => {
                    let mut page = resp.text();
                    for code in codes {
                        page = page.replace(code, "<CODE>");
                    }
                    trial_pages.insert(normalize_trial_page(&page));
                }
                _ => {}
            }
        }
    }
    assert!(responses > 120, "only {responses} responses recorded");
    assert_eq!(
        images_seen.len(),
        facts.len(),
        "every trial image went through the proxy"
    );
    // With ids, codes and numbers blanked, a trial page is one of two texts (with or
    // without the new-batch banner): nothing on it depends on the image.
    assert!(
        trial_pages.len() <= 2,
        "trial pages differ beyond id and counters:\n{trial_pages:#?}"
    );
}

/// A trial page with trial ids (16 hex digits) and numbers blanked.
fn normalize_trial_page(page: &str) -> String {
    let mut out = String::new();
    let chars = page.chars();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.len() == 16 && word.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push_str("<ID>");
        } else {
            // Every run of digits becomes one '#': "Image 9" and "Image 10" match.
            let mut in_digits = false;
            for c in word.chars() {
                if c.is_ascii_digit() {
                    if !in_digits {
                        out.push('#');
                    }
                    in_digits = true;
                } else {
                    out.push(c);
                    in_digits = false;
                }
            }
        }
        word.clear();
    };
    for c in chars {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// A received PNG: only IHDR/IDAT/IEND chunks, and pixels equal to the image with
/// only its backselect subset visible (masked pixels at the Fashion-MNIST mean,
/// 0.2860 · 255 = 72.93 → 73), upscaled by the manifest's scale.
fn check_png(
    bytes: &[u8],
    f: TrialFacts,
    m: &Value,
    source: &dyn overinterp::data::ImageSource,
    stores: &[overinterp::store::StoreReader],
) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let mut at = 8;
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        assert!(
            [&b"IHDR"[..], b"IDAT", b"IEND"].contains(&kind),
            "PNG chunk {:?}",
            String::from_utf8_lossy(kind)
        );
        at += 12 + len;
    }
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; dec.output_buffer_size().unwrap()];
    let info = dec.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let image = &m["images"][f.image];
    let index = image["index"].as_u64().unwrap();
    let q = m["fractions"][f.fraction].as_f64().unwrap();
    let kept: HashSet<u32> = stores[f.store]
        .top_fraction_pixels(index, q)
        .unwrap()
        .into_iter()
        .collect();
    let mut raw = vec![0u8; 28 * 28];
    source.read_pixels(&[index as usize], &mut raw).unwrap();
    let scale = m["scale"].as_u64().unwrap() as usize;
    assert_eq!(
        (info.width as usize, info.height as usize),
        (28 * scale, 28 * scale)
    );
    for y in 0..28 * scale {
        for x in 0..28 * scale {
            let p = (y / scale) * 28 + x / scale;
            let want = if kept.contains(&(p as u32)) {
                raw[p]
            } else {
                73
            };
            let at = (y * 28 * scale + x) * 3;
            assert_eq!(
                &buf[at..at + 3],
                &[want; 3],
                "pixel ({x},{y}) of image {index} at {q}"
            );
        }
    }
}

// ---------------------------------------------------------------- robustness

fn new_participant(s: &Server) -> String {
    let r = http::post_form(&s.addr, "/start", "", &[]);
    assert_eq!(r.status(), 303);
    r.header("location")
        .unwrap()
        .strip_prefix("/p/")
        .unwrap()
        .to_string()
}

fn current_trial(s: &Server, code: &str) -> String {
    let page = http::get(&s.addr, &format!("/p/{code}"), &[]).text();
    let at = page.find("name=\"trial\" value=\"").expect("a trial page") + 20;
    page[at..at + 16].to_string()
}

#[test]
fn admin_pages_answer_401_without_the_token_and_403_with_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&copy_study(dir.path()));
    assert!(
        !s.admin_url.contains(&s.token),
        "the admin URL carries the token"
    );
    for path in ["/admin", "/admin/results"] {
        let r = http::get(&s.addr, path, &[]);
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.header("www-authenticate").is_some());
        assert!(!r.text().contains("participant,position"));
        for (k, v) in [
            ("Authorization", "Bearer 0123456789abcdef0123456789abcdef"),
            ("Cookie", "overinterp_admin=nope"),
        ] {
            let r = http::get(&s.addr, path, &[(k, v)]);
            assert_eq!(r.status(), 403, "{path} with {k}");
            assert!(!r.text().contains("participant,position"));
        }
    }
    let auth = s.bearer();
    let r = http::get(&s.addr, "/admin/results", &[("Authorization", &auth)]);
    assert_eq!(r.status(), 200);
    assert!(r.text().starts_with("participant,position,trial,"));

    let r = http::post_form(&s.addr, "/admin/login", "token=wrong", &[]);
    assert_eq!(r.status(), 403);
    assert!(r.header("set-cookie").is_none());
    let r = http::post_form(&s.addr, "/admin/login", &format!("token={}", s.token), &[]);
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.header("location"),
        Some("/admin"),
        "no token in the redirect"
    );
    let cookie = r.header("set-cookie").unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let r = http::get(&s.addr, "/admin", &[("Cookie", pair)]);
    assert_eq!(r.status(), 200);
    assert!(r.text().contains("participant(s)"));
    assert_eq!(
        http::get(&s.addr, "/admin/results", &[("Cookie", pair)]).status(),
        200
    );
    let mode = std::fs::metadata(dir.path().join("study/admin-token"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
}

#[test]
fn oversized_bodies_get_413_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&copy_study(dir.path()));
    let code = new_participant(&s);
    let trial = current_trial(&s, &code);
    let big = format!("trial={trial}&choice=0&pad={}", "a".repeat(1 << 20));
    let h = [("Content-Type", "application/x-www-form-urlencoded")];
    for path in [format!("/p/{code}/answer"), "/admin/login".to_string()] {
        let r = http::request(&s.addr, "POST", &path, &h, big.as_bytes()).unwrap();
        assert_eq!(r.status(), 413, "{path}");
    }
    assert!(s.csv_answers().is_empty(), "an oversized answer was stored");
    // Just under the limit is an ordinary answer.
    let fits = format!("trial={trial}&choice=0&pad={}", "a".repeat(3900));
    let r = http::request(
        &s.addr,
        "POST",
        &format!("/p/{code}/answer"),
        &h,
        fits.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(s.csv_answers().len(), 1);
}

#[test]
fn no_request_reaches_a_file_outside_the_study_images() {
    let dir = tempfile::tempdir().unwrap();
    let study = copy_study(dir.path());
    let s = Server::start(&study);
    let m = manifest(&study);
    let id = m["images"][0]["trials"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http::get(&s.addr, &format!("/img/{id}.png"), &[]);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.body,
        std::fs::read(study.join(format!("images/{id}.png"))).unwrap()
    );
    let _ = new_participant(&s); // creates responses.sqlite content
    let secrets = [
        "overinterp-human-study",
        s.token.as_str(),
        "root:x:",
        "SQLite format",
    ];
    let attacks = [
        "/img/../study.json".to_string(),
        "/img/..%2fstudy.json".into(),
        "/img/%2e%2e%2fstudy.json".into(),
        "/img/..%2F..%2F..%2F..%2Fetc%2Fpasswd".into(),
        "/img/%2e%2e/%2e%2e/etc/passwd".into(),
        "/../../../../etc/passwd".into(),
        "/img/....//....//study.json".into(),
        "/img/..\\study.json".into(),
        format!("/img/{id}.png/../../study.json"),
        format!("/img/{id}.png%00.json"),
        format!("/img/{}.png", id.to_uppercase()),
        "/img/0123456789abcdef.png".into(),
        format!("/images/{id}.png"),
        "/study.json".into(),
        "/responses.sqlite".into(),
        "/admin-token".into(),
        "/p/..%2fadmin-token".into(),
        "/p/%2e%2e%2f%2e%2e%2fstudy.json/answer".into(),
        "//etc/passwd".into(),
    ];
    for path in &attacks {
        let r = http::request(&s.addr, "GET", path, &[], b"").unwrap();
        assert!(
            matches!(r.status(), 400 | 404 | 405),
            "{path} answered {}",
            r.status()
        );
        let text = r.text();
        for secret in secrets {
            assert!(!text.contains(secret), "{path} leaked {secret:?}");
        }
        assert_ne!(r.header("content-type"), Some("image/png"), "{path}");
    }
}

#[test]
fn answers_count_once_and_only_for_the_participants_current_image() {
    let dir = tempfile::tempdir().unwrap();
    let study = copy_study(dir.path());
    let s = Server::start(&study);
    let m = manifest(&study);
    let classes = classes(&m);
    let code = new_participant(&s);
    let answer = |trial: &str, choice: &str| {
        http::post_form(
            &s.addr,
            &format!("/p/{code}/answer"),
            &format!("trial={trial}&choice={choice}&rt_ms=850"),
            &[],
        )
    };
    let trial = current_trial(&s, &code);
    let later = trial_facts(&m).into_keys().find(|t| *t != trial).unwrap();
    assert_eq!(
        answer(&later, "0").status(),
        409,
        "an image that is not the current one"
    );
    assert_eq!(
        answer("0000000000000000", "0").status(),
        400,
        "an image not in the study"
    );
    assert_eq!(answer("../../etc/passwd", "0").status(), 400);
    assert_eq!(answer(&trial, "42").status(), 400, "a class not offered");
    assert_eq!(answer(&trial, "two").status(), 400);
    assert!(s.csv_answers().is_empty());

    let c0 = classes[0].to_string();
    let r = answer(&trial, &c0);
    assert_eq!(r.status(), 303);
    assert_eq!(r.header("location"), Some(format!("/p/{code}").as_str()));
    assert_eq!(
        answer(&trial, &c0).status(),
        303,
        "re-submitting the same answer is accepted"
    );
    assert_eq!(
        answer(&trial, &classes[1].to_string()).status(),
        409,
        "a changed answer is refused"
    );
    assert_eq!(
        s.csv_answers(),
        vec![(code.clone(), trial.clone(), classes[0])]
    );

    // Eight identical submissions at once: one answer. Eight different ones: one wins.
    let next = current_trial(&s, &code);
    assert_ne!(next, trial);
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..8)
            .map(|_| sc.spawn(|| answer(&next, &c0).status()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(statuses.iter().all(|&st| st == 303), "{statuses:?}");
    let third = current_trial(&s, &code);
    let statuses: Vec<u16> = std::thread::scope(|sc| {
        let hs: Vec<_> = classes[..8]
            .iter()
            .map(|c| {
                let c = c.to_string();
                let third = third.clone();
                let answer = &answer;
                sc.spawn(move || answer(&third, &c).status())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|&&st| st == 303).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&st| st == 409).count(),
        7,
        "{statuses:?}"
    );
    let stored = s.csv_answers();
    assert_eq!(stored.len(), 3);
    let ids: HashSet<&str> = stored.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(
        ids,
        HashSet::from([trial.as_str(), next.as_str(), third.as_str()])
    );

    // Unknown codes get a clear page, never an answer.
    for r in [
        http::get(&s.addr, "/p/ZZZZZZZZ", &[]),
        http::post_form(
            &s.addr,
            "/p/ZZZZZZZZ/answer",
            &format!("trial={trial}&choice={c0}"),
            &[],
        ),
        http::get(&s.addr, "/continue?code=nope", &[]),
        http::get(
            &s.addr,
            "/continue?code=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
            &[],
        ),
    ] {
        assert_eq!(r.status(), 404);
        assert!(
            r.text().contains("We do not know this code"),
            "{}",
            r.text()
        );
        assert!(!r.text().contains("<script>alert"));
    }
    assert_eq!(s.csv_answers().len(), 3);
    let r = http::get(
        &s.addr,
        &format!("/continue?code={}", code.to_lowercase()),
        &[],
    );
    assert_eq!(
        (r.status(), r.header("location")),
        (303, Some(format!("/p/{code}").as_str()))
    );
}

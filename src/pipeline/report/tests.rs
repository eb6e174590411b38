//! Tests of the report: formats, findings, round trips through both renderers.

use super::*;
use crate::pipeline::analyses::Table1Row;
use crate::pipeline::analyses::{
    ConfidenceDrop, CorrectVsWrong, Gallery, Heatmap, SisSizeCurve, TransferMatrix,
};
use std::collections::HashMap;

fn stat(mean: f64, std: f64, n: usize) -> Stat {
    Stat {
        mean,
        std,
        n,
        min: mean - std,
        max: mean + std,
        count: None,
    }
}

/// One model's accuracy: `k` of `n` test images right.
fn one(k: usize, n: usize) -> Stat {
    let mean = k as f64 / n as f64;
    Stat {
        mean,
        std: 0.0,
        n: 1,
        min: mean,
        max: mean,
        count: Some((k, n)),
    }
}

/// A mean over `n` images with a made-up interval of ±`half`.
fn ci(mean: f64, half: f64, n: usize) -> MeanCi {
    MeanCi {
        mean,
        lo: mean - half,
        hi: mean + half,
        n,
    }
}

fn evals(cols: &[(&str, Stat)]) -> Vec<(String, Stat)> {
    cols.iter()
        .map(|(n, s)| (n.to_string(), s.clone()))
        .collect()
}

/// A 28×28 heatmap: `base` everywhere, 1.0 in a 3×3 block at (row, col).
fn heatmap(model: &str, class: Option<i64>, row: usize, col: usize, base: f32) -> Heatmap {
    let mut values = vec![base; 28 * 28];
    for r in row..row + 3 {
        for c in col..col + 3 {
            values[r * 28 + c] = 1.0;
        }
    }
    Heatmap {
        model: model.into(),
        class,
        height: 28,
        width: 28,
        values,
        images: 100 + class.unwrap_or(0) as usize,
    }
}

/// Two models, each with full / BS / random training rows, SIS curves,
/// correct-vs-wrong, heatmaps for all images and 3 classes, a 2×2
/// transfer matrix and one gallery.
fn sample() -> Analyses {
    let mut table1 = Vec::new();
    for (m, base, right) in [("small-cnn", 0.0, 1775), ("wide-cnn", 0.02, 1815)] {
        table1.push(Table1Row {
            model: m.into(),
            train_on: "Full".into(),
            eval_on: evals(&[
                ("Full test", stat(0.91234 + base, 0.00456, 3)),
                ("BS 5% test", one(right, 2000)),
                ("Random 5% test", stat(0.10017, 0.00031, 3)),
            ]),
        });
        table1.push(Table1Row {
            model: m.into(),
            train_on: "BS 5%".into(),
            eval_on: evals(&[("BS 5% test", stat(0.84129 + base, 0.01234, 5))]),
        });
        table1.push(Table1Row {
            model: m.into(),
            train_on: "Random 5%".into(),
            eval_on: evals(&[("Random 5% test", stat(0.30996, 0.02005, 5))]),
        });
    }
    Analyses {
        name: "fashion-demo".into(),
        dataset: "fashion-mnist?limit=10000".into(),
        train_images: 10000,
        test_images: 2000,
        class_names: crate::data::idx::FASHION_CLASSES
            .iter()
            .map(|c| c.to_string())
            .collect(),
        fraction: 0.05,
        settings: vec![
            ("k (pixels removed per step)".into(), "8".into()),
            ("epochs".into(), "3".into()),
            ("replicates".into(), "5".into()),
        ],
        table1,
        corruption: Vec::new(),
        stability: Vec::new(),
        confidence: vec![
            ConfidenceDrop {
                model: "small-cnn".into(),
                full: ci(0.93111, 0.004, 2000),
                backselect: ci(0.90555, 0.006, 2000),
                random: ci(0.31234, 0.01, 2000),
            },
            ConfidenceDrop {
                model: "wide-cnn".into(),
                full: ci(0.95, 0.003, 2000),
                backselect: ci(0.41, 0.02, 2000),
                random: ci(0.2, 0.015, 1),
            },
        ],
        sis_size: vec![
            SisSizeCurve {
                model: "small-cnn".into(),
                thresholds: vec![0.5, 0.7, 0.9, 0.99],
                mean_fraction: vec![0.0123, 0.0234, 0.0456, 0.0891],
                images_with_sis: vec![1990, 1900, 1700, 1200],
            },
            SisSizeCurve {
                model: "wide-cnn".into(),
                thresholds: vec![0.5, 0.7, 0.9, 0.99],
                mean_fraction: vec![0.02, 0.031, 0.0512, 0.12345],
                images_with_sis: vec![1995, 1910, 1750, 1300],
            },
        ],
        correct_vs_wrong: vec![
            CorrectVsWrong {
                model: "small-cnn".into(),
                threshold: 0.9,
                correct: Some(MeanCi {
                    mean: 0.0512,
                    lo: 0.0498,
                    hi: 0.0526,
                    n: 1650,
                }),
                wrong: Some(MeanCi {
                    mean: 0.0311,
                    lo: 0.0280,
                    hi: 0.0342,
                    n: 50,
                }),
                increase: Some(MeanCi {
                    mean: 0.6463,
                    lo: 0.4501,
                    hi: 0.8425,
                    n: 1700,
                }),
            },
            CorrectVsWrong {
                model: "wide-cnn".into(),
                threshold: 0.9,
                correct: Some(MeanCi {
                    mean: 0.06,
                    lo: 0.055,
                    hi: 0.065,
                    n: 1700,
                }),
                wrong: None,
                increase: None,
            },
        ],
        heatmaps: vec![
            heatmap("small-cnn", None, 5, 20, 0.1),
            heatmap("small-cnn", Some(0), 0, 0, 0.05),
            heatmap("small-cnn", Some(1), 12, 12, 0.05),
            heatmap("small-cnn", Some(2), 25, 25, 0.05),
            heatmap("wide-cnn", None, 12, 0, 0.2),
            heatmap("wide-cnn", Some(0), 0, 25, 0.0),
            heatmap("wide-cnn", Some(1), 25, 0, 0.0),
            heatmap("wide-cnn", Some(2), 5, 5, 0.0),
        ],
        corrupted_correct_vs_wrong: vec![CorrectVsWrong {
            model: "small-cnn".into(),
            threshold: 0.9,
            correct: Some(MeanCi {
                mean: 0.0432,
                lo: 0.0401,
                hi: 0.0463,
                n: 900,
            }),
            wrong: Some(MeanCi {
                mean: 0.0234,
                lo: 0.0211,
                hi: 0.0257,
                n: 600,
            }),
            increase: Some(MeanCi {
                mean: 0.8462,
                lo: 0.7012,
                hi: 0.9912,
                n: 1500,
            }),
        }],
        confidence_history: Vec::new(),
        transfer: Some(TransferMatrix {
            sources: vec!["small-cnn".into(), "wide-cnn".into()],
            evaluators: vec!["small-cnn".into(), "wide-cnn".into()],
            accuracy: vec![vec![0.88765, 0.4012], vec![0.3333, 0.90765]],
        }),
        galleries: vec![Gallery {
            model: "small-cnn".into(),
            threshold: 0.9,
            png: "galleries/small-cnn.png".into(),
            rows: vec![(17, 3, 3), (42, 7, 7)],
            checked: 3,
            verified: 2,
        }],
        spec: "name = \"fashion-demo\"\n[dataset]\nspec = \"fashion-mnist?limit=10000\"\n".into(),
    }
}

/// Decodes an RGB PNG: (width, height, pixels).
fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::io::BufReader::new(fs::File::open(path).unwrap());
    let mut reader = png::Decoder::new(file).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Parses report.md's tables, keyed by the `## ` heading above each.
fn md_tables(md: &str) -> HashMap<String, Vec<Vec<String>>> {
    let mut out: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    let mut heading = String::new();
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            heading = h.to_string();
        } else if line.starts_with('|') && !line.starts_with("|---") {
            let cells = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect();
            out.entry(heading.clone()).or_default().push(cells);
        }
    }
    out
}

/// Asserts a report cell (percent, two decimals) shows fraction `x`.
fn assert_pct(cell: &str, x: f64) {
    let v: f64 = cell
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {cell:?}"));
    assert!((v - 100.0 * x).abs() <= 0.005 + 1e-9, "{cell} shows {x}");
    assert_eq!(cell.split('.').nth(1).map(str::len), Some(2), "{cell}");
}

/// A replicate statistic as the report's conventions say: `mean ± std (n)` from 3
/// replicates, `mean (min–max)` with 2, one model's accuracy with its 95% Wilson
/// interval (computed here from the textbook formula, z = 1.959964).
fn assert_stat(cell: &str, s: &Stat) {
    match s.n {
        1 => {
            let (k, n) = s.count.expect("one model's accuracy carries its count");
            let (mean, rest) = cell.split_once(" [").unwrap();
            let (lo, hi) = rest.trim_end_matches(']').split_once(", ").unwrap();
            let (p, n, z) = (k as f64 / n as f64, n as f64, 1.959964f64);
            let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
            let half = z / (1.0 + z * z / n) * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
            assert_pct(mean, s.mean);
            assert_pct(lo, centre - half);
            assert_pct(hi, centre + half);
        }
        2 => {
            let (mean, rest) = cell.split_once(" (").unwrap();
            let (lo, hi) = rest.trim_end_matches(')').split_once('–').unwrap();
            assert_pct(mean, s.mean);
            assert_pct(lo, s.min);
            assert_pct(hi, s.max);
        }
        _ => {
            let (mean, rest) = cell.split_once(" ± ").unwrap();
            let (std, n) = rest.split_once(" (").unwrap();
            assert_pct(mean, s.mean);
            assert_pct(std, s.std);
            assert_eq!(n.trim_end_matches(')').parse::<usize>().unwrap(), s.n);
        }
    }
}

/// A mean over images: `mean [lo, hi] (n)`, or `mean (too few images, n = 1)`.
fn assert_ci(cell: &str, m: &MeanCi) {
    if m.n < 2 {
        let (mean, rest) = cell.split_once(" (").unwrap();
        assert_pct(mean, m.mean);
        assert_eq!(rest, format!("too few images, n = {})", m.n));
        return;
    }
    let (mean, rest) = cell.split_once(" [").unwrap();
    let (lo, rest) = rest.split_once(", ").unwrap();
    let (hi, n) = rest.split_once("] (").unwrap();
    assert_pct(mean, m.mean);
    assert_pct(lo, m.lo);
    assert_pct(hi, m.hi);
    assert_eq!(n.trim_end_matches(')'), m.n.to_string());
}

fn table<'a>(t: &'a HashMap<String, Vec<Vec<String>>>, prefix: &str) -> &'a Vec<Vec<String>> {
    t.iter()
        .find(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no table under {prefix}"))
}

fn write_sample(a: &Analyses) -> (tempfile::TempDir, ReportFiles) {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("galleries")).unwrap();
    // A tiny gallery stand-in: 3 panels of 28×28 with a bright square.
    let (w, h) = (84u32, 28u32);
    let mut rgb = vec![30u8; (w * h * 3) as usize];
    for y in 10..18 {
        for x in 38..46 {
            let i = ((y * w + x) * 3) as usize;
            rgb[i..i + 3].copy_from_slice(&[230, 40, 40]);
        }
    }
    figures_test_png(&dir.path().join("galleries/small-cnn.png"), w, h, &rgb);
    let files = write_report(a, dir.path()).unwrap();
    (dir, files)
}

fn figures_test_png(path: &Path, w: u32, h: u32, rgb: &[u8]) {
    let mut e = png::Encoder::new(fs::File::create(path).unwrap(), w, h);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    e.write_header().unwrap().write_image_data(rgb).unwrap();
}

#[test]
fn writes_all_files_and_figures_decode_with_content() {
    let a = sample();
    let (dir, files) = write_sample(&a);
    for p in [&files.markdown, &files.html, &files.json] {
        assert!(p.is_file(), "{}", p.display());
    }
    // Exact: serde_json's float_roundtrip feature parses the shortest
    // representation back to the same f64.
    let back: Analyses = serde_json::from_str(&fs::read_to_string(&files.json).unwrap()).unwrap();
    assert_eq!(back, a);
    // Expected sizes from each figure's layout (hand-computed):
    // accuracy: 6 groups → max(190·6+160, 800) = 1300 × 600;
    // curves 900 × 560; correct-vs-wrong: max(260·2+200, 700) = 720 × 560, on the
    // corrupted set (one model) max(260+200, 700) = 700 × 560;
    // heatmaps: 4 columns → cell = clamp(1100/4, 72, 160) = 160,
    //   150 + 4·170 + 130 = 960 wide, 60 + 2·(160+36+10) + 20 = 492 tall;
    // transfer: cell = clamp(700/2, 70, 150) = 150, 200+300+160 = 660 × 110+300+50 = 460.
    let expected = [
        ("accuracy.png", 1300, 600),
        ("sis_size_vs_threshold.png", 900, 560),
        ("sis_size_correct_vs_wrong.png", 720, 560),
        ("sis_size_correct_vs_wrong_corrupted.png", 700, 560),
        ("pixel_heatmaps.png", 960, 492),
        ("transfer_matrix.png", 660, 460),
    ];
    assert_eq!(files.figures.len(), expected.len());
    for (p, (name, w, h)) in files.figures.iter().zip(expected) {
        assert_eq!(p.file_name().unwrap(), name);
        let (pw, ph, px) = decode(p);
        assert_eq!((pw, ph), (w, h), "{name}");
        let non_white = px.chunks(3).filter(|c| c != &[255, 255, 255]).count();
        let frac = non_white as f64 / (pw * ph) as f64;
        assert!(frac > 0.02, "{name} is nearly blank: {frac}");
        let mut colours: Vec<&[u8]> = px.chunks(3).collect();
        colours.sort();
        colours.dedup();
        assert!(
            colours.len() > 20,
            "{name} has only {} colours",
            colours.len()
        );
    }
    // The planted hot block of small-cnn's overall heatmap (rows 5..8,
    // cols 20..23, value 1.0 = the maximum) is drawn at the top of viridis
    // (253, 231, 37); the panel starts at x = 150, y = 60 + 36 = 96 and one
    // source pixel is 160/28 ≈ 5.71 px, so pixel (21, 6) → (150+122, 96+37).
    let (w, _, px) = decode(&dir.path().join("figures/pixel_heatmaps.png"));
    let at = |x: u32, y: u32| &px[((y * w + x) * 3) as usize..((y * w + x) * 3 + 3) as usize];
    assert_eq!(at(150 + 122, 96 + 37), &[253, 231, 37]);
    // A background pixel there (value 0.1 of max 1.0) is dark.
    assert!(at(150 + 10, 96 + 150)[0] < 100);

    let md = fs::read_to_string(&files.markdown).unwrap();
    let html = fs::read_to_string(&files.html).unwrap();
    for f in [
        "figures/accuracy.png",
        "figures/pixel_heatmaps.png",
        "galleries/small-cnn.png",
    ] {
        assert!(md.contains(&format!("]({f})")), "{f} missing in md");
        assert!(
            html.contains(&format!("src=\"{f}\"")),
            "{f} missing in html"
        );
    }
    // The 84×28 gallery is shown 5× (480/84 = 5) and pixelated.
    assert!(html.contains("src=\"galleries/small-cnn.png\" width=\"420\" height=\"140\""));
    assert!(md.contains("```toml\nname = \"fashion-demo\""));
    assert!(html.contains("name = &quot;fashion-demo&quot;"));
}

#[test]
fn every_table_number_round_trips_to_the_analyses() {
    let a = sample();
    let (_dir, files) = write_sample(&a);
    let md = fs::read_to_string(&files.markdown).unwrap();
    let t = md_tables(&md);

    // Table 1: "mean ± std (n)" per evaluation column.
    let t1 = table(&t, "Accuracy by training");
    let header = &t1[0];
    assert_eq!(t1.len(), a.table1.len() + 1);
    let mut checked = 0;
    for r in &a.table1 {
        let row = t1
            .iter()
            .find(|c| c[0] == r.model && c[1] == r.train_on)
            .unwrap_or_else(|| panic!("no row {} {}", r.model, r.train_on));
        for (e, s) in &r.eval_on {
            let j = header
                .iter()
                .position(|h| h == &format!("Evaluated on {e}") || h == e)
                .unwrap();
            assert_stat(&row[j], s);
            checked += 1;
        }
        // Columns this row has no number for show a dash, not a number.
        let shown = row[2..].iter().filter(|c| c.as_str() != "—").count();
        assert_eq!(shown, r.eval_on.len());
    }
    assert_eq!(checked, 10);

    let conf = table(&t, "Confidence");
    for c in &a.confidence {
        let row = conf.iter().find(|r| r[0] == c.model).unwrap();
        for (cell, m) in [
            (&row[1], &c.full),
            (&row[2], &c.backselect),
            (&row[3], &c.random),
        ] {
            assert_ci(cell, m);
        }
        assert_pct(&row[4], c.full.mean - c.backselect.mean);
    }

    let sis = table(&t, "SIS size vs. threshold");
    for (k, c) in a.sis_size.iter().enumerate() {
        for (i, &tau) in c.thresholds.iter().enumerate() {
            let row = sis.iter().find(|r| r[0] == format!("{tau}")).unwrap();
            let (m, n) = row[k + 1].split_once(" (").unwrap();
            assert_pct(m, c.mean_fraction[i]);
            assert_eq!(n.trim_end_matches(')'), c.images_with_sis[i].to_string());
        }
    }

    for (heading, rows) in [
        (
            "SIS size of correct vs. wrong predictions (",
            &a.correct_vs_wrong,
        ),
        (
            "SIS size of correct vs. wrong predictions on the corrupted set",
            &a.corrupted_correct_vs_wrong,
        ),
    ] {
        let cvw = table(&t, heading);
        assert_eq!(
            cvw.len(),
            rows.len() + 1,
            "{heading}: header and one row per model"
        );
        for c in rows {
            let row = cvw.iter().find(|r| r[0] == c.model).unwrap();
            assert_eq!(row[1], format!("{}", c.threshold));
            for (cell, m) in [(&row[2], &c.correct), (&row[3], &c.wrong)] {
                match m {
                    None => assert_eq!(cell, "—"),
                    Some(m) => assert_ci(cell, m),
                }
            }
        }
    }

    let tr = table(&t, "Transfer");
    let tm = a.transfer.as_ref().unwrap();
    for (i, s) in tm.sources.iter().enumerate() {
        let row = tr.iter().find(|r| &r[0] == s).unwrap();
        for j in 0..tm.evaluators.len() {
            assert_eq!(tr[0][j + 1], tm.evaluators[j]);
            assert_pct(&row[j + 1], tm.accuracy[i][j]);
        }
    }

    let settings = table(&t, "Settings");
    assert!(settings.iter().any(|r| r[0] == "epochs" && r[1] == "3"));
    assert!(settings
        .iter()
        .any(|r| r[0] == "test images" && r[1] == "2000"));
}

#[test]
fn every_findings_number_is_an_analyses_number() {
    let a = sample();
    let text = findings(&a);
    // Values the findings may quote, as fractions: every table mean and
    // confidence, and the transfer diagonal/off-diagonal means computed here.
    let mut allowed: Vec<f64> = a
        .table1
        .iter()
        .flat_map(|r| r.eval_on.iter().map(|(_, s)| s.mean))
        .collect();
    for c in &a.confidence {
        allowed.extend([c.full.mean, c.backselect.mean, c.random.mean]);
    }
    for c in a
        .correct_vs_wrong
        .iter()
        .chain(&a.corrupted_correct_vs_wrong)
    {
        allowed.extend(c.correct.iter().chain(&c.wrong).map(|m| m.mean));
        allowed.extend(c.increase.iter().flat_map(|m| [m.mean, m.lo, m.hi]));
    }
    allowed.push((0.88765 + 0.90765) / 2.0);
    allowed.push((0.4012 + 0.3333) / 2.0);
    let mut seen = 0;
    for word in text.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
        let word = word.trim_matches('.');
        if word.split('.').nth(1).map(str::len) == Some(2) {
            let v: f64 = word.parse().unwrap();
            assert!(
                allowed
                    .iter()
                    .any(|x| (v - 100.0 * x).abs() <= 0.005 + 1e-9),
                "{word} in findings is not an analyses number:\n{text}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 10, "{text}");
    // The example wording from the data.
    assert!(
        text.contains("small-cnn reaches 84.13% test accuracy"),
        "{text}"
    );
    assert!(
        text.contains("trained on random 5% subsets it reaches 31.00%"),
        "{text}"
    );
}

#[test]
fn findings_wording_follows_the_numbers() {
    let a = sample();
    let far = findings(&a);
    assert!(
        far.contains("carry learnable signal")
            && far.contains("cannot tell it from mask-shape leakage"),
        "{far}"
    );
    // small-cnn keeps its confidence (93.11 → 90.56), wide-cnn loses it (95 → 41).
    assert!(far.contains("barely drops"), "{far}");
    assert!(far.contains("drops substantially"), "{far}");
    assert!(
        far.contains("larger SIS go with correct predictions, as in the paper's Figure 4"),
        "{far}"
    );
    // The corrupted set's sentence (0.0432 vs 0.0234: +84.62% [70.12, 99.12]).
    assert!(
        far.contains("on the corrupted set, correctly classified images need a mean SIS of 4.32% of the pixels (n = 900) and misclassified ones 2.34% (n = 600): 84.62% larger for correct predictions [70.12, 99.12] (95% interval of the difference in means), so larger SIS go with correct predictions, as in the paper's Figure S3."),
        "{far}"
    );
    assert!(
        far.contains("largely specific to the model that selected them"),
        "{far}"
    );

    // BS-trained below random-trained: no evidence of overinterpretation.
    let mut b = a.clone();
    for r in &mut b.table1 {
        if r.train_on == "BS 5%" {
            r.eval_on[0].1.mean = 0.2;
        }
    }
    let below = findings(&b);
    assert_ne!(below, far);
    assert!(below.contains("less learnable than random ones"), "{below}");
    assert!(!below.contains("carry learnable signal"), "{below}");

    // Within 3 points: "about equally learnable".
    let mut c = a.clone();
    for r in &mut c.table1 {
        if r.train_on == "BS 5%" {
            r.eval_on[0].1.mean = 0.32;
        }
    }
    assert!(findings(&c).contains("about equally learnable"));

    // Subsets that transfer: off-diagonal close to diagonal.
    let mut d = a.clone();
    d.transfer.as_mut().unwrap().accuracy = vec![vec![0.88, 0.86], vec![0.85, 0.9]];
    assert!(findings(&d).contains("the subsets transfer across models"));
}

/// Correct vs. wrong: the verdict follows the interval of the difference in means.
#[test]
fn the_correct_vs_wrong_verdict_follows_the_difference_interval() {
    let with = |increase: Option<(f64, f64, f64)>| {
        let mut a = sample();
        a.correct_vs_wrong[0].increase = increase.map(|(mean, lo, hi)| MeanCi {
            mean,
            lo,
            hi,
            n: 1700,
        });
        findings(&a)
    };
    let smaller = with(Some((-0.3, -0.5, -0.1)));
    assert!(
        smaller.contains(": 30.00% smaller for correct predictions [-50.00, -10.00] (95% interval of the difference in means), so here misclassified images need larger SIS, unlike the paper's Figure 4."),
        "{smaller}"
    );
    let unclear = with(Some((0.1, -0.2, 0.4)));
    assert!(
        unclear.contains(": a change of 10.00% for correct predictions [-20.00, 40.00] (95% interval of the difference in means), which includes 0: no clear difference."),
        "{unclear}"
    );
    let zero = with(None);
    assert!(zero.contains("no increase to compute"), "{zero}");
}

/// BS subsets far above random ones: the verdict follows the mask-only control's
/// share of the BS accuracy above chance (small-cnn: BS-trained 84.13%, 10 classes).
#[test]
fn the_overinterpretation_verdict_waits_for_the_mask_only_control() {
    let with_control = |mask_acc: f64| {
        let mut a = sample();
        a.table1.push(Table1Row {
            model: "small-cnn".into(),
            train_on: "Mask of BS 5% (control)".into(),
            eval_on: vec![("BS 5% test".into(), stat(mask_acc, 0.0, 2))],
        });
        let text = findings(&a);
        // small-cnn's sentences only (wide-cnn has no control).
        let own = text.split("small-cnn reaches").nth(1).unwrap();
        own.split("wide-cnn reaches").next().unwrap().to_string()
    };
    // (mask accuracy, phrases its paragraph must hold); shares (acc − 0.1)/(0.84129 − 0.1).
    let cases: [(f64, &[&str]); 5] = [
        // 0.94: mostly the shape.
        (
            0.80,
            &[
                "mostly in where the kept pixels lie",
                "the shape alone explains 94.43%",
            ],
        ),
        // 0.54: part shape, part values.
        (0.5, &["part of that in where the kept pixels lie"]),
        // 0.03: the values.
        (0.12, &["in their pixel values, not their shape"]),
        // 1.08: the shape does better than the BS subsets.
        (
            0.90,
            &[
                "mostly in where the kept pixels lie",
                "does better than the BS subsets themselves",
            ],
        ),
        // −0.03: the shape does not beat chance.
        (
            0.08,
            &[
                "in their pixel values, not their shape",
                "does not beat chance",
            ],
        ),
    ];
    for (mask_acc, phrases) in cases {
        let text = with_control(mask_acc);
        for phrase in phrases {
            assert!(
                text.contains(phrase),
                "mask {mask_acc}: no {phrase:?} in {text}"
            );
        }
        assert!(
            !text.contains("cannot tell it from mask-shape leakage"),
            "{text}"
        );
        if mask_acc >= 0.8 {
            assert!(!text.contains("sign of overinterpretation"), "{text}");
        }
    }
    // A small gap (BS-trained 36.00% vs random 31.00%) the shape explains: no evidence.
    let mut a = sample();
    for r in &mut a.table1 {
        if r.model == "small-cnn" && r.train_on == "BS 5%" {
            r.eval_on[0].1.mean = 0.36;
        }
    }
    a.table1.push(Table1Row {
        model: "small-cnn".into(),
        train_on: "Mask of BS 5% (control)".into(),
        eval_on: vec![("BS 5% test".into(), stat(0.35, 0.0, 2))],
    });
    let small = findings(&a);
    assert!(
        small.contains("the margin is small and the mask-only control below finds it mostly in where the kept pixels lie"),
        "{small}"
    );
}

#[test]
fn markdown_escapes_pipes_and_html_escapes_markup() {
    let mut a = sample();
    a.name = "a|b <script>".into();
    a.settings.push(("note".into(), "x | y".into()));
    let (_dir, files) = write_sample(&a);
    let md = fs::read_to_string(&files.markdown).unwrap();
    assert!(md.contains("| note | x \\| y |"));
    let html = fs::read_to_string(&files.html).unwrap();
    assert!(!html.contains("<script>"));
    assert!(html.contains("a|b &lt;script&gt;"));
}

/// Writes the sample report to `$OVERINTERP_SAMPLE_REPORT` for looking at
/// it in a browser (`cargo test --release --lib sample_report -- --ignored`).
#[test]
#[ignore]
fn sample_report() {
    let Ok(out) = std::env::var("OVERINTERP_SAMPLE_REPORT") else {
        return;
    };
    let (dir, files) = write_sample(&sample());
    let out = Path::new(&out);
    fs::create_dir_all(out.join("figures")).unwrap();
    fs::create_dir_all(out.join("galleries")).unwrap();
    for p in files
        .figures
        .iter()
        .chain([&files.markdown, &files.html, &files.json])
    {
        let rel = p.strip_prefix(dir.path()).unwrap();
        fs::copy(p, out.join(rel)).unwrap();
    }
    fs::copy(
        dir.path().join("galleries/small-cnn.png"),
        out.join("galleries/small-cnn.png"),
    )
    .unwrap();
}

#[test]
fn unwritable_directory_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    fs::write(&file, "x").unwrap();
    let err = write_report(&sample(), &file).unwrap_err();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

//! Store formats 1 and 2 side by side: format-1 stores written by the old code (the
//! fixtures of `tests/fixtures/stores`, with the records that code read from them) read
//! back identically; the Python snippets of `README.md` and `src/store/README.md` read
//! both formats as the Rust reader does; `overinterp store info` describes both.

use std::path::{Path, PathBuf};
use std::process::Command;

use overinterp::sis::{ImageSis, Objective};
use overinterp::store::{StoreReader, Verify};

const BIN: &str = env!("CARGO_BIN_EXE_overinterp");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn fixture(path: &str) -> PathBuf {
    Path::new(ROOT).join("tests/fixtures").join(path)
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A format-2 store of the fixture CNN on the 14×14 Fashion-MNIST fixture images.
fn sis_store(dir: &Path, method: &[&str], thresholds: &str, end: u64) -> PathBuf {
    let out = dir.join(method.join("-"));
    let model = fixture("models/fmnist14_cnn.pt");
    let data = format!("fashion-mnist:{}", fixture("fmnist14").display());
    run_ok(
        Command::new(BIN)
            .args(["sis", "--model"])
            .arg(&model)
            .args(["--data", &data, "--split", "test", "--method"])
            .args(method)
            .args(["--threshold", thresholds, "--batch", "4", "--threads", "1"])
            .args(["--end", &end.to_string()])
            .arg("--out")
            .arg(&out),
        "overinterp sis",
    );
    out
}

fn all_records(reader: &StoreReader) -> Vec<ImageSis> {
    reader
        .indices()
        .into_iter()
        .map(|i| reader.require(i).unwrap())
        .collect()
}

#[test]
fn format_1_fixtures_read_as_the_old_code_read_them() {
    for name in ["v1-exact", "v1-gradient-k4"] {
        let dir = fixture(&format!("stores/{name}"));
        let json = std::fs::read(fixture(&format!("stores/{name}.records.json"))).unwrap();
        let old: Vec<ImageSis> = serde_json::from_slice(&json).unwrap();
        let reader = StoreReader::open_with(&dir, Verify::Full).unwrap();
        assert_eq!(reader.meta().format_version, 1);
        assert_eq!(reader.meta().objective, Objective::Confidence);
        assert_eq!(reader.meta().precision, "fp32");
        let new = all_records(&reader);
        assert_eq!(
            new, old,
            "{name}: records differ from what the format-1 code read"
        );
        let mut iterated: Vec<ImageSis> = reader.iter().map(Result::unwrap).collect();
        iterated.sort_by_key(|r| r.index);
        assert_eq!(iterated, old, "{name}: iteration differs");
        for r in &new {
            // Format 1 recorded no in-block rank: a block's pixels follow by index,
            // which is what that code's removal order was.
            assert!(r.rank_in_block.is_empty());
            let mut by_index: Vec<u32> = (0..r.removal_step.len() as u32).collect();
            by_index.sort_by_key(|&q| (r.removal_step[q as usize], q));
            assert_eq!(r.removal_order(), by_index);
        }
        eprintln!(
            "{name}: {} records identical to the format-1 code's",
            new.len()
        );
    }
}

/// The first ```python block of `file` that contains `marker`.
fn python_block(file: &str, marker: &str) -> String {
    let text = std::fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
    text.split("```python\n")
        .skip(1)
        .map(|b| &b[..b.find("\n```").expect("unterminated python block")])
        .find(|b| b.contains(marker))
        .unwrap_or_else(|| panic!("no python block with {marker} in {file}"))
        .to_string()
}

fn python(program: &str, args: &[&str]) -> serde_json::Value {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg("-c")
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (source scripts/env first): {e}"));
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn readme_python_snippets_read_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let stores = [
        fixture("stores/v1-exact"),
        fixture("stores/v1-gradient-k4"),
        sis_store(tmp.path(), &["exact"], "0.9", 2),
        // 196 pixels in blocks of 5: the last block has one pixel.
        sis_store(tmp.path(), &["gradient", "--k", "5"], "0.5,0.9", 8),
    ];
    // src/store/README.md: the numpy-only reader, then a driver.
    let store_reader = format!(
        "{}\nimport json, sys\nrec = load_image(sys.argv[1], int(sys.argv[2]))\n\
         print(json.dumps({{'order': rec['order'].tolist(), \
         'sis': [[s.tolist() for s in v] for v in rec['sis'].values()], \
         'steps': rec['removal_step'].ravel().tolist(), \
         'dtype': str(rec['removal_step'].dtype)}}))",
        python_block("src/store/README.md", "def load_image")
    );
    // README.md: the safetensors snippet with its store and index replaced.
    let line = "store, index = \"stores/r20-test\", 7";
    let readme = python_block("README.md", "manifest.jsonl");
    assert!(
        readme.contains(line),
        "README snippet no longer starts with `{line}`"
    );
    let readme = format!(
        "import sys\n{}\nprint(json.dumps({{'order': order.tolist(), \
         'sis': [s.tolist() for s in sis]}}))",
        readme.replace(line, "store, index = sys.argv[1], int(sys.argv[2])")
    );
    for store in &stores {
        let reader = StoreReader::open(store).unwrap();
        let version = reader.meta().format_version;
        for index in reader.indices().into_iter().take(3) {
            let rec = reader.require(index).unwrap();
            let want_order = rec.removal_order();
            let want_sis: Vec<Vec<Vec<u32>>> =
                rec.collections.iter().map(|c| c.sis.clone()).collect();
            let (s, i) = (store.to_str().unwrap(), index.to_string());
            let got = python(&store_reader, &[s, &i]);
            let order: Vec<u32> = serde_json::from_value(got["order"].clone()).unwrap();
            assert_eq!(order, want_order, "store README snippet, {s} image {index}");
            let sis: Vec<Vec<Vec<u32>>> = serde_json::from_value(got["sis"].clone()).unwrap();
            assert_eq!(sis, want_sis);
            let steps: Vec<u32> = serde_json::from_value(got["steps"].clone()).unwrap();
            assert_eq!(steps, rec.removal_step);
            let want_dtype = if version == 1 { "int32" } else { "uint16" };
            assert_eq!(got["dtype"], want_dtype);
            let got = python(&readme, &[s, &i]);
            let order: Vec<u32> = serde_json::from_value(got["order"].clone()).unwrap();
            assert_eq!(order, want_order, "README snippet, {s} image {index}");
            let sis: Vec<Vec<u32>> = serde_json::from_value(got["sis"].clone()).unwrap();
            assert_eq!(sis, want_sis[0]);
        }
        eprintln!(
            "python snippets agree with the reader on {} (format {version})",
            store.display()
        );
    }
    // The gradient store's ranks matter: its order is not the by-index one.
    let reader = StoreReader::open(&stores[3]).unwrap();
    let rec = reader.require(0).unwrap();
    assert_eq!(rec.rank_in_block.len(), 196);
    let mut by_index: Vec<u32> = (0..196).collect();
    by_index.sort_by_key(|&q| (rec.removal_step[q as usize], q));
    assert_ne!(rec.removal_order(), by_index);
}

#[test]
fn store_info_shows_format_objective_precision_method_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let v2 = sis_store(tmp.path(), &["gradient", "--k", "5"], "0.5", 4);
    let info = |store: &Path| -> serde_json::Value {
        let out = run_ok(
            Command::new(BIN)
                .args(["store", "info", "--json"])
                .arg(store),
            "overinterp store info",
        );
        serde_json::from_str(&out).unwrap()
    };
    let new = info(&v2);
    assert_eq!(new["format_version"], 2);
    assert_eq!(new["objective"], "log-odds");
    assert_eq!(new["precision"], "fp32");
    assert_eq!(new["method"], "gradient");
    assert_eq!(new["k"], 5);
    assert_eq!(new["steps"], 40);
    assert_eq!(new["images"], 4);
    assert_eq!(new["num_images"], 16);
    assert_eq!(new["complete"], false);
    assert_eq!(new["removal_step_dtype"], "uint16");
    assert_eq!(new["rank_in_block_dtype"], "uint8");
    assert_eq!(
        new["created_by"]["overinterp"],
        env!("CARGO_PKG_VERSION"),
        "{new}"
    );
    let old = info(&fixture("stores/v1-gradient-k4"));
    assert_eq!(old["format_version"], 1);
    assert_eq!(old["objective"], "confidence");
    assert_eq!(old["images"], 8);
    assert_eq!(old["removal_step_dtype"], "int32");
    assert_eq!(old["rank_in_block_dtype"], serde_json::Value::Null);
    // The table names the same things.
    let table = run_ok(
        Command::new(BIN).args(["store", "info"]).arg(&v2),
        "overinterp store info",
    );
    for needle in [
        "format      2",
        "objective   log-odds",
        "gradient k=5",
        "4 of 16",
    ] {
        assert!(table.contains(needle), "`{needle}` not in:\n{table}");
    }
    let missing = run_ok_err(Command::new(BIN).args(["store", "info"]).arg(tmp.path()));
    assert!(missing.contains("no result store here"), "{missing}");
}

/// Runs `cmd`, which must fail, and returns its stderr.
fn run_ok_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

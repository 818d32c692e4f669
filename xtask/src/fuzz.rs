//! `cargo xtask fuzz`: the fuzz targets of `fuzz/` (one per parser of untrusted input in
//! `shared`), built with nightly and libFuzzer through cargo-fuzz and run one after another,
//! each for a time box or a number of inputs; a crash fails the run and names its reproducer.
//!
//! Installs what it needs: the nightly toolchain (rustup) and cargo-fuzz (cargo install, cached
//! by version outside the repo, like the testenv's Go tools). Built without a sanitizer: `shared`
//! forbids `unsafe`, so AddressSanitizer would find nothing safe Rust does not already check,
//! and it halves the inputs per second; panics, overflows (debug assertions stay on), hangs and
//! memory blow-ups are what is hunted. docs/reliability.md has the targets and the figures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xtask::paths;

/// The cargo-fuzz release installed (0.13 builds with the nightly of 2025 and later).
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The time box per target of `cargo xtask test`: twelve targets in about three minutes.
pub const TEST_TIME_BOX: Duration = Duration::from_secs(15);

/// An input slower than this is a hang (libFuzzer's default is 1200 s; the slowest target
/// takes well under a millisecond per input).
const INPUT_TIMEOUT_SECS: u64 = 10;

/// How long and how much to fuzz, and which targets (all when empty).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub time: Option<Duration>,
    pub runs: Option<u64>,
    pub targets: Vec<String>,
}

/// What one target's run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: String,
    pub runs: Option<u64>,
    pub exec_per_sec: Option<u64>,
    pub peak_rss_mb: Option<u64>,
    pub elapsed: Duration,
    pub result: RunResult,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunResult {
    Clean,
    /// libFuzzer stopped on a crash, a hang or an out-of-memory input, written here.
    Crashed {
        reproducer: Option<PathBuf>,
    },
}

/// Builds every target and runs the chosen ones in turn; prints a table; fails if any crashed.
pub fn fuzz(opts: &Options) -> Result<Vec<Report>> {
    let root = paths::workspace_root();
    let all = targets(&root)?;
    let chosen: Vec<String> = if opts.targets.is_empty() { all.clone() } else { opts.targets.clone() };
    if let Some(unknown) = chosen.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target {unknown:?} (targets: {})", all.join(", "));
    }
    ensure_nightly()?;
    let cargo_fuzz_bin = ensure_cargo_fuzz()?;
    eprintln!("xtask fuzz: building {} targets with nightly", all.len());
    let status = cargo_fuzz(&cargo_fuzz_bin).arg("build").args(common_args()).status()?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    let mut reports = Vec::new();
    for target in &chosen {
        reports.push(run_target(&root, &cargo_fuzz_bin, target, opts)?);
    }
    eprint!("{}", table(&reports));
    let crashed: Vec<String> = reports
        .iter()
        .filter_map(|r| match &r.result {
            RunResult::Clean => None,
            RunResult::Crashed { reproducer } => Some(format!(
                "{}: reproduce with `cargo +nightly fuzz run -s none --target-dir target/fuzz {} {}`",
                r.target,
                r.target,
                reproducer.as_ref().map_or("<see the log>".into(), |p| p.display().to_string())
            )),
        })
        .collect();
    if !crashed.is_empty() {
        bail!("fuzzing found crashes:\n{}", crashed.join("\n"));
    }
    Ok(reports)
}

/// The targets: the files of `fuzz/fuzz_targets/`, by name.
pub fn targets(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("fuzz/fuzz_targets");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_owned))
        .collect();
    out.sort();
    Ok(out)
}

fn common_args() -> [&'static str; 4] {
    ["--sanitizer", "none", "--target-dir", "target/fuzz"]
}

fn run_target(root: &Path, cargo_fuzz_bin: &Path, target: &str, opts: &Options) -> Result<Report> {
    let work = root.join("target/fuzz");
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    let log_path = work.join("logs").join(format!("{target}.log"));
    for dir in [&corpus, &artifacts, &log_path.parent().expect("a log folder").to_path_buf()] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    seed_from_fixtures(root, target, &corpus)?;
    let mut args = vec![
        format!("-timeout={INPUT_TIMEOUT_SECS}"),
        "-print_final_stats=1".to_owned(),
        format!("-artifact_prefix={}/", artifacts.display()),
    ];
    if let Some(t) = opts.time {
        args.push(format!("-max_total_time={}", t.as_secs().max(1)));
    }
    if let Some(n) = opts.runs {
        args.push(format!("-runs={n}"));
    }
    eprintln!(
        "xtask fuzz: {target} ({}{}) log: {}",
        opts.time.map_or("no time box".into(), |t| format!("{} s", t.as_secs())),
        opts.runs.map_or(String::new(), |n| format!(", at most {n} inputs")),
        log_path.display()
    );
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let started = Instant::now();
    let status = cargo_fuzz(cargo_fuzz_bin)
        .arg("run")
        .args(common_args())
        .arg(target)
        .arg(&corpus)
        .arg(root.join("fuzz/seeds").join(target))
        .arg("--")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(log)
        .status()
        .with_context(|| format!("running fuzz target {target}"))?;
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let stat = |name: &str| -> Option<u64> {
        text.lines().rev().find_map(|l| l.strip_prefix(&format!("stat::{name}:"))?.trim().parse().ok())
    };
    let result = if status.success() {
        RunResult::Clean
    } else {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        eprintln!("xtask fuzz: {target} failed ({status}); the end of its log:");
        for line in tail.iter().rev() {
            eprintln!("  {line}");
        }
        RunResult::Crashed { reproducer: reproducer(&text) }
    };
    Ok(Report {
        target: target.to_owned(),
        runs: stat("number_of_executed_units"),
        exec_per_sec: stat("average_exec_per_sec"),
        peak_rss_mb: stat("peak_rss_mb"),
        elapsed,
        result,
    })
}

/// The file libFuzzer wrote the failing input to (`Test unit written to PATH`).
fn reproducer(log: &str) -> Option<PathBuf> {
    log.lines().rev().find_map(|l| Some(PathBuf::from(l.split_once("Test unit written to ")?.1.trim())))
}

/// Seeds generated from files the repository keeps anyway, so the committed seeds stay small:
/// the example node config, the golden renders, the `fleet.yaml` examples of docs/bundles.md.
fn seed_from_fixtures(root: &Path, target: &str, corpus: &Path) -> Result<()> {
    let read = |rel: &str| std::fs::read_to_string(root.join(rel)).with_context(|| format!("reading {rel}"));
    let seeds: Vec<(String, String)> = match target {
        "config" => vec![("agent.yaml".into(), read("deploy/examples/agent.yaml")?)],
        "render" => ["fixtures/golden/stack-b-qa.yaml", "fixtures/golden/stack-b-store1.yaml"]
            .iter()
            .map(|rel| Ok((rel.rsplit('/').next().expect("a file name").to_owned(), read(rel)?)))
            .collect::<Result<_>>()?,
        "fleet" => yaml_blocks(&read("docs/bundles.md")?)
            .into_iter()
            .enumerate()
            .map(|(i, text)| (format!("bundles-md-{i}.yaml"), text))
            .collect(),
        _ => Vec::new(),
    };
    for (name, text) in seeds {
        std::fs::write(corpus.join(format!("fixture-{name}")), text)?;
    }
    Ok(())
}

/// The ```yaml blocks of a Markdown text.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some(String::new()),
            Some(block) if line.trim_start() == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

fn table(reports: &[Report]) -> String {
    let mut out = format!("{:<12} {:>12} {:>8} {:>8} {:>8}  result\n", "target", "inputs", "secs", "exec/s", "rss MB");
    let num = |v: Option<u64>| v.map_or("?".to_owned(), |v| v.to_string());
    for r in reports {
        let result = match &r.result {
            RunResult::Clean => "clean".to_owned(),
            RunResult::Crashed { reproducer } => {
                format!("CRASH {}", reproducer.as_ref().map_or("(see log)".into(), |p| p.display().to_string()))
            }
        };
        let _ = writeln!(
            out,
            "{:<12} {:>12} {:>8.0} {:>8} {:>8}  {result}",
            r.target,
            num(r.runs),
            r.elapsed.as_secs_f64(),
            num(r.exec_per_sec),
            num(r.peak_rss_mb)
        );
    }
    out
}

/// `cargo fuzz ...` with nightly, the cached cargo-fuzz first on PATH, and none of the variables
/// the outer cargo set (see `paths::cargo`).
fn cargo_fuzz(cargo_fuzz_bin: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"]);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo = (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
            || key.starts_with("__CARGO")
            || key == "CARGO"
            || key == "RUSTUP_TOOLCHAIN"
            || key == "OUT_DIR";
        if set_by_cargo {
            cmd.env_remove(key.as_ref());
        }
    }
    // The fuzz workspace has its own target folder below ours; a CARGO_TARGET_DIR would move it.
    cmd.env_remove("CARGO_TARGET_DIR");
    let bin_dir = cargo_fuzz_bin.parent().expect("cargo-fuzz lives in a bin folder");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let joined = std::env::join_paths(std::iter::once(bin_dir.to_path_buf()).chain(std::env::split_paths(&path)))
        .expect("PATH entries hold no separator");
    cmd.env("PATH", joined).current_dir(paths::workspace_root());
    cmd
}

/// Installs the nightly toolchain (minimal profile) when rustup does not have one.
fn ensure_nightly() -> Result<()> {
    let out = Command::new("rustup").args(["toolchain", "list"]).output().context("running rustup")?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("nightly-")) {
        return Ok(());
    }
    eprintln!("xtask fuzz: installing the nightly toolchain with rustup");
    let status = Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]).status()?;
    if !status.success() {
        bail!("rustup toolchain install nightly failed ({status})");
    }
    Ok(())
}

/// cargo-fuzz [`CARGO_FUZZ_VERSION`] in the tool cache, installed once with `cargo install`.
fn ensure_cargo_fuzz() -> Result<PathBuf> {
    let root = paths::cache_dir().join(format!("cargo-fuzz-{CARGO_FUZZ_VERSION}"));
    let bin = root.join("bin/cargo-fuzz");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("xtask fuzz: cargo install cargo-fuzz {CARGO_FUZZ_VERSION} into {}", root.display());
    let status = paths::cargo()
        .args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION, "--root"])
        .arg(&root)
        .status()?;
    if !status.success() {
        bail!("cargo install cargo-fuzz failed ({status})");
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fuzz_target_file_is_a_bin_of_the_fuzz_crate() {
        let root = paths::workspace_root();
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        let targets = targets(&root).expect("fuzz targets");
        assert!(targets.len() >= 11, "{targets:?}");
        for t in targets {
            assert!(manifest.contains(&format!("path = \"fuzz_targets/{t}.rs\"")), "{t} is not a [[bin]]");
            assert!(root.join("fuzz/seeds").join(&t).is_dir(), "{t} has no seed folder");
        }
    }

    #[test]
    fn the_reproducer_is_read_from_libfuzzers_log() {
        let log = "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='a/'; Test unit written to a/crash-12ab\n";
        assert_eq!(reproducer(log), Some(PathBuf::from("a/crash-12ab")));
        assert_eq!(reproducer("Done 100 runs in 1 second(s)\n"), None);
    }

    #[test]
    fn yaml_blocks_are_taken_from_markdown() {
        let md = "text\n```yaml\na: 1\n```\n```sh\nls\n```\n```yaml\nb: 2\nc: 3\n```\n";
        assert_eq!(yaml_blocks(md), vec!["a: 1\n".to_owned(), "b: 2\nc: 3\n".to_owned()]);
    }
}

//! `agent validate`: the pure checks from `shared::config`, plus the ones that need the machine
//! (credential files readable, variables set, CA bundles parse). Never prints a secret: it reads
//! secret files only to see that they are non-empty.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use shared::config::{self, Credentials, Loaded, Problem};

use super::Output;

/// Exit code when the config has problems.
const EXIT_INVALID: u8 = 1;

pub fn run(
    file: &Path,
    waves: Option<&Path>,
    output: Output,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
    let problems = match config::parse(&text, env) {
        Err(structural) => vec![structural],
        Ok(loaded) => {
            let mut all = loaded.validate();
            all.extend(machine_checks(&loaded, file, env));
            if let Some(w) = waves {
                all.extend(wave_checks(&loaded, w));
            }
            all
        }
    };
    let name = file.display();
    match output {
        Output::Json => {
            let list: Vec<_> = problems
                .iter()
                .map(|p| serde_json::json!({"path": p.path, "line": p.line, "message": p.message}))
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({"file": name.to_string(), "valid": problems.is_empty(), "problems": list})
            )?;
        }
        Output::Human if problems.is_empty() => writeln!(out, "{name}: ok")?,
        Output::Human => {
            for p in &problems {
                writeln!(out, "{name}: {p}")?;
            }
            let n = problems.len();
            writeln!(out, "{name}: {n} problem{}", if n == 1 { "" } else { "s" })?;
        }
    }
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_INVALID) })
}

/// A waves file checked, and this node's place in it: a node in no wave would hold every
/// release, so it is a problem here rather than a surprise at the first release.
fn wave_checks(l: &Loaded, waves: &Path) -> Vec<Problem> {
    let shown = waves.display();
    let text = match std::fs::read_to_string(waves) {
        Ok(t) => t,
        Err(e) => return vec![Problem::new(shown.to_string(), format!("cannot read: {e}"))],
    };
    let list = match shared::waves::parse_file(&text) {
        Ok(w) => w,
        Err(p) => return vec![Problem { path: format!("{shown}: {}", p.path), ..p }],
    };
    let labels = &l.config.identity.labels;
    match shared::waves::place(&list, labels) {
        Some(_) => Vec::new(),
        None if l.config.identity.labels_from_node => Vec::new(),
        None => vec![l.problem("identity.labels", format!("{shown}: {}", shared::waves::unplaced(&list, labels)))],
    }
}

/// Checks that need files and the environment; relative paths are relative to the config file.
fn machine_checks(l: &Loaded, file: &Path, env: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
    let base = file.parent().unwrap_or(Path::new("."));
    let c = &l.config;
    let mut problems = Vec::new();
    let check_creds = |path: &str, creds: &Credentials, problems: &mut Vec<Problem>| {
        if let Some(f) = &creds.password_file {
            match std::fs::read(base.join(f)) {
                Err(e) => problems.push(l.problem(&format!("{path}.passwordFile"), format!("{f}: cannot read: {e}"))),
                Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                    problems.push(l.problem(&format!("{path}.passwordFile"), format!("{f} is empty")))
                }
                Ok(_) => {}
            }
        }
        if let Some(var) = &creds.password_env
            && env(var).is_none_or(|v| v.is_empty())
        {
            problems.push(l.problem(&format!("{path}.passwordEnv"), format!("${var} is not set")));
        }
    };
    if let Some(a) = &c.git.auth {
        check_creds("git.auth", a, &mut problems);
    }
    for (i, r) in c.registries.iter().enumerate() {
        if let Some(a) = &r.auth {
            check_creds(&format!("registries[{i}].auth"), a, &mut problems);
        }
    }
    let mut check_ca = |path: String, f: &str| match std::fs::read_to_string(base.join(f)) {
        Err(e) => problems.push(l.problem(&path, format!("{f}: cannot read: {e}"))),
        Ok(pem) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
            problems.push(l.problem(&path, format!("{f} holds no PEM certificate")))
        }
        Ok(_) => {}
    };
    if let Some(ca) = &c.git.ca_file {
        check_ca("git.caFile".into(), ca);
    }
    for (i, r) in c.registries.iter().enumerate() {
        if let Some(ca) = &r.ca_file {
            check_ca(format!("registries[{i}].caFile"), ca);
        }
    }
    for (i, r) in c.registries.iter().enumerate() {
        let keys = r.verify.iter().flat_map(|v| v.cosign.iter()).flat_map(|c| c.public_keys.iter());
        for (j, k) in keys.enumerate() {
            let path = format!("registries[{i}].verify.cosign.publicKeys[{j}].file");
            let read = std::fs::read_to_string(base.join(&k.file)).map_err(|e| format!("cannot read: {e}"));
            if let Err(e) = read.and_then(|pem| shared::cosign::TrustedKey::from_pem(&k.name, &pem)) {
                problems.push(l.problem(&path, format!("{}: {e}", k.file)));
            }
        }
    }
    // The files of `git.verify` parse, as the first poll would read them (an error there
    // would hold every commit back until a person looks).
    if let Some(v) = &c.git.verify {
        use crate::source::git::read_key_file;
        use shared::commit_sig::{parse_allowed_signers, parse_openpgp_keys};
        if let Err(e) = read_key_file(v.ssh_allowed_signers.as_deref(), base, parse_allowed_signers) {
            problems.push(l.problem("git.verify.sshAllowedSigners", e));
        }
        if let Err(e) = read_key_file(v.openpgp_keys.as_deref(), base, parse_openpgp_keys) {
            problems.push(l.problem("git.verify.openpgpKeys", e));
        }
    }
    if let Some(kc) = &c.kube.kubeconfig
        && !base.join(kc).is_file()
    {
        problems.push(l.problem("kube.kubeconfig", format!("{kc}: no such file")));
    }
    problems
}

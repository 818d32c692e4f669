//! Tidy checks, run as tests (as rust-analyzer's `xtask/src/tidy.rs` does): the code map in
//! docs/ARCHITECTURE.md names every module file exactly once, `shared` does no I/O and reads
//! no clock or environment outside its tests, and no two modules of a crate import each other
//! (directly or round a longer loop).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::paths::workspace_root;

/// The source trees whose files the code map must name, relative to the workspace root.
const MAPPED: &[&str] = &[
    "agent/src",
    "agent/tests/e2e",
    "agent/build.rs",
    "shared/src",
    "xtask/src",
    "fixtures/kiosk-app/src",
    "fuzz/fuzz_targets",
];

/// The library crates whose module graphs must have no cycle: (crate root folder, root file).
const CRATES: &[(&str, &str)] = &[("agent/src", "lib.rs"), ("shared/src", "lib.rs"), ("xtask/src", "lib.rs")];

/// What `shared` must not call outside its tests: I/O, the clock, the environment. Callers pass
/// file contents, `now` and an environment look-up in.
const SHARED_FORBIDDEN: &[&str] = &[
    "std::fs",
    // Addresses may be parsed (`SocketAddr`); sockets and name look-ups are I/O.
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "ToSocketAddrs",
    "std::os::unix::net",
    "std::process",
    "std::env",
    "SystemTime::now",
    "Instant::now",
    "std::io::stdin",
    "std::io::stdout",
    "std::io::stderr",
    "println!",
    "eprintln!",
];

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root()).expect("inside the workspace").to_string_lossy().replace('\\', "/")
}

/// The text of a file without its `#[cfg(test)]` module (by the house rule, the last item of a
/// file) and without comments, so what tests and prose say is not taken for code.
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tests_at = (0..lines.len()).find(|&i| {
        lines[i].trim() == "#[cfg(test)]"
            && lines[i + 1..].iter().find(|l| !l.trim().is_empty()).is_some_and(|l| {
                let l = l.trim_start();
                l.starts_with("mod ") || l.starts_with("pub mod ") || l.starts_with("pub(crate) mod ")
            })
    });
    lines[..tests_at.unwrap_or(lines.len())]
        .iter()
        .map(|l| match l.find("//") {
            // A `//` inside a string (a URL) is rare in these trees; cutting there only loses
            // the rest of that line, which cannot add a false edge.
            Some(at) => &l[..at],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module path of a file below a crate root: `cli/diff.rs` -> `["cli", "diff"]`,
/// `reconcile/mod.rs` -> `["reconcile"]`, `lib.rs` -> `[]`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).expect("below the crate root");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The module paths a piece of code names: `crate::a::b`, `crate::{a, b::c}`, and `super::x`
/// (resolved against `here`). Only leading identifiers matter for the graph.
fn referenced(code: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `mycrate::`
        }
        out.extend(paths_after(&code[at + "crate::".len()..], Vec::new()));
    }
    for (at, _) in code.match_indices("super::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        // `super` of `a/b.rs` (module a::b) and of `a/mod.rs` (module a) alike is the parent.
        let mut base = here.to_vec();
        base.pop();
        out.extend(paths_after(&code[at + "super::".len()..], base));
    }
    out
}

/// Paths that start at `rest` (`a::b`, `{a, b::{c, d}}`), each prefixed with `prefix`.
fn paths_after(rest: &str, prefix: Vec<String>) -> Vec<Vec<String>> {
    let rest = rest.trim_start();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut depth = 1;
        let mut end = inner.len();
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let body = &inner[..end];
        let mut items = Vec::new();
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(&body[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        items.push(&body[start..]);
        return items.into_iter().flat_map(|item| paths_after(item, prefix.clone())).collect();
    }
    let mut path = prefix;
    let mut rest = rest;
    loop {
        let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if ident.is_empty() || ident == "self" {
            break;
        }
        path.push(ident.clone());
        rest = &rest[ident.len()..];
        match rest.strip_prefix("::") {
            Some(r) if r.trim_start().starts_with('{') => return paths_after(r, path),
            Some(r) => rest = r,
            None => break,
        }
    }
    vec![path]
}

/// Edges between sibling modules: for each file in module `m` naming module `n`, the edge goes
/// between the two children of their closest common parent (`cli::diff` -> `reconcile::plan`
/// is `cli` -> `reconcile` at the top). A module naming its own ancestor or descendant is the
/// folder's own business (a parent declares and re-exports its children) and makes no edge.
fn sibling_edges(crate_root: &Path, modules: &BTreeSet<Vec<String>>) -> BTreeMap<(Vec<String>, Vec<String>), String> {
    let mut edges = BTreeMap::new();
    for file in rust_files(crate_root) {
        let here = module_of(crate_root, &file);
        if !modules.contains(&here) {
            continue; // a file the crate does not build (a binary's module, say)
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        for path in referenced(&code_of(&text), &here) {
            // The longest prefix of the path that is a module of the crate.
            let Some(target) = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains(p)) else {
                continue;
            };
            let common = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == here.len() || common == target.len() {
                continue;
            }
            let from = here[..=common].to_vec();
            let to = target[..=common].to_vec();
            edges.entry((from, to)).or_insert_with(|| relative(&file));
        }
    }
    edges
}

/// The modules a crate builds, from the files below its root (a file is a module when its
/// parent declares it; in these crates every file below `src/` is, except a binary's own).
fn modules_of(crate_root: &Path, root_file: &str) -> BTreeSet<Vec<String>> {
    let mut modules = BTreeSet::new();
    let mut queue = vec![(crate_root.join(root_file), Vec::<String>::new())];
    while let Some((file, module)) = queue.pop() {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        let dir = if module.is_empty() || file.file_name().is_some_and(|n| n == "mod.rs") {
            file.parent().expect("a folder").to_path_buf()
        } else {
            file.with_extension("")
        };
        for line in code_of(&text).lines() {
            let line = line.trim();
            let decl = line.strip_prefix("pub ").or_else(|| line.strip_prefix("pub(crate) ")).unwrap_or(line);
            let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) else { continue };
            let mut child = module.clone();
            child.push(name.trim().to_owned());
            let as_file = dir.join(format!("{}.rs", name.trim()));
            let as_folder = dir.join(name.trim()).join("mod.rs");
            let found = if as_file.exists() { as_file } else { as_folder };
            queue.push((found, child.clone()));
            modules.insert(child);
        }
    }
    modules.insert(Vec::new());
    modules
}

/// Every cycle among the edges, each as the loop of module names.
fn cycles(edges: &BTreeMap<(Vec<String>, Vec<String>), String>) -> Vec<String> {
    let mut graph: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        graph.entry(from).or_default().push(to);
    }
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        // Depth-first from each node, reporting a loop back to it once (by its smallest name).
        let mut stack: Vec<(&Vec<String>, Vec<&Vec<String>>)> = vec![(start, vec![start])];
        while let Some((node, trail)) = stack.pop() {
            for next in graph.get(node).into_iter().flatten() {
                if next == start {
                    let mut names: Vec<String> = trail.iter().map(|m| m.join("::")).collect();
                    let smallest = names.iter().enumerate().min_by_key(|(_, n)| (*n).clone()).map_or(0, |(i, _)| i);
                    names.rotate_left(smallest);
                    let via: Vec<String> = trail
                        .iter()
                        .zip(trail.iter().skip(1).chain(std::iter::once(start)))
                        .map(|(a, b)| {
                            format!("{} -> {} ({})", a.join("::"), b.join("::"), edges[&((*a).clone(), (*b).clone())])
                        })
                        .collect();
                    found.insert(format!("{}: {}", names.join(" -> "), via.join(", ")));
                } else if !trail.contains(next) && trail.len() < 12 {
                    let mut t = trail.clone();
                    t.push(next);
                    stack.push((next, t));
                }
            }
        }
    }
    // One line per loop (the same loop is found from each of its nodes).
    let mut seen = BTreeSet::new();
    found.into_iter().filter(|l| seen.insert(l.split(':').next().unwrap_or_default().to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_file_is_named_once_in_the_code_map() {
        let root = workspace_root();
        let map = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
        let mut problems = Vec::new();
        for tree in MAPPED {
            for file in rust_files(&root.join(tree)) {
                let rel = relative(&file);
                let named = map.matches(&format!("`{rel}`")).count();
                if named != 1 {
                    problems.push(format!("{rel}: named {named} times (write it once, as `{rel}`)"));
                }
            }
        }
        // And nothing named that is not there any more.
        for (at, _) in map.match_indices('`') {
            let rest = &map[at + 1..];
            let Some(end) = rest.find('`') else { break };
            let name = &rest[..end];
            if name.ends_with(".rs") && name.contains('/') && !name.contains(' ') && !root.join(name).exists() {
                problems.push(format!("{name}: named in the code map but not in the tree"));
            }
        }
        problems.sort();
        problems.dedup();
        assert!(problems.is_empty(), "docs/ARCHITECTURE.md's code map is out of date:\n{}", problems.join("\n"));
    }

    #[test]
    fn shared_does_no_io_and_reads_no_clock_or_environment() {
        let root = workspace_root();
        let mut problems = Vec::new();
        for file in rust_files(&root.join("shared/src")) {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (n, line) in code_of(&text).lines().enumerate() {
                for word in SHARED_FORBIDDEN {
                    if line.contains(word) {
                        problems.push(format!("{}:{}: {word}: {}", relative(&file), n + 1, line.trim()));
                    }
                }
                if line.trim_start().starts_with("use std::")
                    && ["fs", "process", "env"].iter().any(|m| {
                        line.contains(&format!("{{{m}"))
                            || line.contains(&format!(" {m},"))
                            || line.contains(&format!(", {m}}}"))
                    })
                {
                    problems.push(format!("{}:{}: {}", relative(&file), n + 1, line.trim()));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "shared must stay pure (callers pass contents, `now` and env in):\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn no_two_modules_of_a_crate_import_each_other() {
        let root = workspace_root();
        let mut problems = Vec::new();
        for (dir, root_file) in CRATES {
            let crate_root = root.join(dir);
            let modules = modules_of(&crate_root, root_file);
            for c in cycles(&sibling_edges(&crate_root, &modules)) {
                problems.push(format!("{dir}: {c}"));
            }
        }
        assert!(problems.is_empty(), "import cycles (move the shared piece below both):\n{}", problems.join("\n"));
    }

    #[test]
    fn the_cycle_check_sees_grouped_and_relative_imports() {
        let here = vec!["daemon".to_owned(), "server".to_owned()];
        let code = "use crate::{cli::session::Session, cycle};\nuse super::metrics::Metrics;\nlet x = crate::state::Record::new();";
        let found = referenced(code, &here);
        let want: Vec<Vec<String>> = vec![
            vec!["cli".into(), "session".into(), "Session".into()],
            vec!["cycle".into()],
            vec!["state".into(), "Record".into(), "new".into()],
            vec!["daemon".into(), "metrics".into(), "Metrics".into()],
        ];
        assert_eq!(found, want);
        let mut edges = BTreeMap::new();
        edges.insert((vec!["a".to_owned()], vec!["b".to_owned()]), "a.rs".to_owned());
        edges.insert((vec!["b".to_owned()], vec!["a".to_owned()]), "b.rs".to_owned());
        assert_eq!(cycles(&edges), vec!["a -> b: a -> b (a.rs), b -> a (b.rs)".to_owned()]);
        edges.remove(&(vec!["b".to_owned()], vec!["a".to_owned()]));
        assert!(cycles(&edges).is_empty());
    }
}

//! The processes of a testenv instance: where their pid files and logs live in the run dir
//! (`Layout`), starting one in its own process group (`spawn`), and finding it again by pid
//! file, checked against the program it ran (`live_pid`). Used by `testenv` and `node` alike.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Layout of the run dir.
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
}

impl Layout {
    pub(crate) fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    pub(crate) fn log(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }
    pub(crate) fn pid(&self, name: &str) -> PathBuf {
        self.root.join("pids").join(format!("{name}.pid"))
    }
}

/// A process `up` starts.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) cwd: Option<PathBuf>,
}

pub(crate) fn spawn(l: &Layout, p: Proc) -> Result<()> {
    let log = fs::File::create(l.log(p.name))?;
    let mut cmd = Command::new(&p.program);
    cmd.args(&p.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // Own process group: a Ctrl-C in the terminal that ran `up` does not reach the services,
    // and `down` can signal a component together with its children (lighttpd's CGIs).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    if let Some(cwd) = &p.cwd {
        cmd.current_dir(cwd);
    }
    let child = cmd.spawn().with_context(|| format!("starting {} ({})", p.name, p.program.display()))?;
    fs::write(l.pid(p.name), format!("{}\n{}\n", child.id(), p.program.display()))?;
    // The child is deliberately not waited for: it outlives this process, and `down` stops it.
    std::mem::forget(child);
    Ok(())
}

/// A pid file's process, if it still runs the program recorded beside it.
pub(crate) fn live_pid(l: &Layout, name: &str) -> Option<i32> {
    let text = fs::read_to_string(l.pid(name)).ok()?;
    let mut lines = text.lines();
    let pid: i32 = lines.next()?.trim().parse().ok()?;
    let program = lines.next()?.trim();
    if !process_alive(pid) {
        return None;
    }
    // Guard against a recycled pid: the running executable must be the one we started.
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let exe = exe.to_string_lossy();
    let program_name = Path::new(program).file_name()?.to_string_lossy().into_owned();
    (exe.trim_end_matches(" (deleted)").ends_with(&program_name)).then_some(pid)
}

pub(crate) fn process_alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped: our services are re-parented) counts as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|s| s != "Z")
        }
        Err(_) => false,
    }
}

pub(crate) fn check_alive(l: &Layout, name: &str) -> Result<()> {
    if live_pid(l, name).is_none() {
        bail!("{name} exited during start-up\n{}", log_tail(l, name));
    }
    Ok(())
}

pub(crate) fn log_tail(l: &Layout, name: &str) -> String {
    let path = l.log(name);
    let text = fs::read_to_string(&path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("--- last lines of {} ---\n{tail}", path.display())
}

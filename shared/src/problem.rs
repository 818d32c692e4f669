//! One field error for every input the agent checks (node config, `fleet.yaml`'s `gitopsAgent`,
//! rollout windows, drain policies): the field's dotted path, its line where known, and what is
//! wrong, so each problem reads `git.url: line 4: unsupported scheme "ftp"`.

use std::fmt;

/// One thing wrong with an input, located by field path and, where known, line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path (`git.url`, `registries[1].auth`, `gitopsAgent.drain[0].window`), or the
    /// environment variable that set it.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    /// A problem at `path` whose line is not known (yet): see [`Problem::at_line`].
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem { path: path.into(), line: None, message: message.into() }
    }

    /// The same problem, located at `line`.
    pub fn at_line(self, line: Option<usize>) -> Problem {
        Problem { line, ..self }
    }

    /// The same problem under a parent field: `drain[0].window` under `gitopsAgent` reads
    /// `gitopsAgent.drain[0].window`.
    pub fn under(self, parent: &str) -> Problem {
        let path = match (parent.is_empty(), self.path.is_empty()) {
            (true, _) => self.path,
            (false, true) => parent.to_owned(),
            (false, false) if self.path.starts_with('[') => format!("{parent}{}", self.path),
            (false, false) => format!("{parent}.{}", self.path),
        };
        Problem { path, ..self }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}: line {}: {}", self.path, line, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for Problem {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_reads_path_line_message() {
        let p = Problem::new("git.url", "unsupported scheme \"ftp\"").at_line(Some(4));
        assert_eq!(p.to_string(), "git.url: line 4: unsupported scheme \"ftp\"");
        assert_eq!(Problem::new("identity", "missing").to_string(), "identity: missing");
    }

    #[test]
    fn under_prefixes_the_parent_field() {
        assert_eq!(Problem::new("window", "x").under("gitopsAgent.drain[0]").path, "gitopsAgent.drain[0].window");
        assert_eq!(Problem::new("[2].url", "x").under("registries").path, "registries[2].url");
        assert_eq!(Problem::new("", "x").under("gitopsAgent").path, "gitopsAgent");
        assert_eq!(Problem::new("a", "x").under("").path, "a");
    }
}

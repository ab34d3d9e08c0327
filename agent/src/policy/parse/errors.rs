//! The error types of a rejected policy file and their `FILE:LINE:COL: message` rendering.

use std::fmt;

use thiserror::Error;

/// One problem in a policy file.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct PolicyError {
    /// The file name as given to the parser.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// What is wrong, starting with the key path.
    pub message: String,
}

/// Every problem found in a policy file (never empty), in file order.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub struct PolicyErrors {
    pub(super) errors: Vec<PolicyError>,
}

impl PolicyErrors {
    /// The problems, sorted by position.
    pub fn errors(&self) -> &[PolicyError] {
        &self.errors
    }

    /// Takes the list.
    pub fn into_vec(self) -> Vec<PolicyError> {
        self.errors
    }
}

impl fmt::Display for PolicyErrors {
    /// One `FILE:LINE:COL: message` per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

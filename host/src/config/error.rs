//! Policy errors, each located by file and by the path of the field inside the document.

use std::fmt;

/// A problem in the policies, located by file and by the path inside the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File name relative to the policies folder (or the folder itself for folder-wide errors).
    pub file: String,
    /// Path inside the document, e.g. `virtual_hosts[0].routes[2].forward.timeout`.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(origin: &Origin, field: &str, message: impl Into<String>) -> Self {
        let path = match (origin.path.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => origin.path.clone(),
            (false, false) => format!("{}.{field}", origin.path),
        };
        Self {
            file: origin.file.clone(),
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.path, self.message)
        }
    }
}

/// Every problem found in one pass, so that a user fixes them all at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        Self(vec![error])
    }
}

/// Where a configured item was written: its file and its path in that document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub path: String,
}

impl Origin {
    pub fn child(&self, field: &str) -> Origin {
        Origin {
            file: self.file.clone(),
            path: if self.path.is_empty() {
                field.to_string()
            } else {
                format!("{}.{field}", self.path)
            },
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.path)
    }
}

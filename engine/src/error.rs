//! One error type for the whole engine. Every variant names what was being read or run, so that a
//! user sees which file, tensor or field is at fault.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter, device creation failed, a buffer could not be mapped, a limit is too small.
    #[error("GPU: {0}")]
    Gpu(String),
    /// A checkpoint file is malformed: `file` names it, `what` the tensor or header field.
    #[error("{file}: {what}: {msg}")]
    Format {
        file: String,
        what: String,
        msg: String,
    },
    /// A configuration value is missing or unsupported.
    #[error("{file}: field `{field}`: {msg}")]
    Config {
        file: String,
        field: String,
        msg: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("download: {0}")]
    Download(String),
    /// The prompt plus requested tokens do not fit the model's context.
    #[error("context overflow: {needed} tokens needed, the context holds {limit}")]
    ContextOverflow { needed: usize, limit: usize },
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Said when a logit row holds no finite value to choose from: never invent a token.
pub(crate) const NO_FINITE_LOGIT: &str = "the model's logits are all NaN, so there is no token \
     to choose: a weight, scale or norm of the checkpoint is probably non-finite or corrupt";

impl Error {
    pub fn format(
        file: impl fmt::Display,
        what: impl fmt::Display,
        msg: impl fmt::Display,
    ) -> Self {
        Error::Format {
            file: file.to_string(),
            what: what.to_string(),
            msg: msg.to_string(),
        }
    }
    pub fn config(
        file: impl fmt::Display,
        field: impl fmt::Display,
        msg: impl fmt::Display,
    ) -> Self {
        Error::Config {
            file: file.to_string(),
            field: field.to_string(),
            msg: msg.to_string(),
        }
    }
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
}

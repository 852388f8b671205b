//! One error type for the whole engine. Every variant names what was being read or run, so that a
//! user sees which file, tensor or field is at fault.

use std::fmt;

/// The engine's result type: `Error` unless another error type is named.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, preparing or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No adapter, device creation failed, a buffer could not be mapped, a limit is too small.
    #[error("GPU: {0}")]
    Gpu(String),
    /// A checkpoint file is malformed: `file` names it, `what` the tensor or header field.
    #[error("{file}: {what}: {msg}")]
    Format {
        /// The checkpoint file (or other source) at fault.
        file: String,
        /// The tensor or header field at fault.
        what: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A configuration value is missing or unsupported.
    #[error("{file}: field `{field}`: {msg}")]
    Config {
        /// The configuration file (e.g. `config.json`) at fault.
        file: String,
        /// The field that is missing or unsupported (`(root)` for the whole document).
        field: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A tokenizer could not be loaded (bad `tokenizer.json`, unsupported GGUF vocabulary) or
    /// failed to encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to parse or render, or ran past its fuel.
    #[error("chat template: {0}")]
    Template(String),
    /// Reading or opening a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file being read.
        path: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// Fetching a model file from the hub failed, or it is absent there or from the offline cache.
    #[error("download: {0}")]
    Download(String),
    /// The prompt plus requested tokens do not fit the model's context.
    #[error("context overflow: {needed} tokens needed, the context holds {limit}")]
    ContextOverflow {
        /// Context positions the request needs, counting those already filled.
        needed: usize,
        /// Positions the context (KV cache) holds.
        limit: usize,
    },
    /// A caller passed something the engine cannot run: an empty or mis-sized input, shapes that
    /// do not match, an out-of-range token, or logits with no finite value.
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Said when a logit row holds no finite value to choose from: never invent a token.
pub(crate) const NO_FINITE_LOGIT: &str = "the model's logits are all NaN, so there is no token \
     to choose: a weight, scale or norm of the checkpoint is probably non-finite or corrupt";

impl Error {
    /// Builds [`Error::Format`] from anything displayable.
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
    /// Builds [`Error::Config`] from anything displayable.
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
    /// Builds [`Error::Io`], naming the file `path`.
    pub fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
}

//! Model configuration, weights on the GPU, KV cache and the forward pass.

mod batch;
#[cfg(feature = "internals")]
pub mod cpu_step;
mod forward;
mod graph;
pub mod limits;
mod sequence;
#[cfg(any(test, feature = "internals"))]
pub mod synthetic;
pub mod weights;

pub use batch::{slot_bytes, DecodeRow, SequenceBatch};
pub use forward::{LastLayerActivations, ModelOptions, Output, StepResult, Transformer};
pub use sequence::Sequence;

#[doc(inline)]
pub use crate::ops::attention::KvCacheDtype;

//! Model configuration, weights on the GPU, KV cache and the forward pass.

mod forward;
pub mod limits;
pub mod synthetic;
pub mod weights;

pub use forward::{LastLayerActivations, Model, ModelOptions, Output, StepResult};

//! Model configuration, weights on the GPU, KV cache and the forward pass.

pub mod config;

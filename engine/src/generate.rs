//! Sampling and generation sessions.

pub mod sampling;

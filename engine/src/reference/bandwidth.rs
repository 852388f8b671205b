//! CPU twin of `shaders/copy_bandwidth.wgsl`'s read kernel (its copy kernel's twin is the identity).

pub use crate::layout::checksum;

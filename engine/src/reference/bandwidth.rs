//! CPU twin of `shaders/copy_bandwidth.wgsl`'s read kernel (its copy kernel's twin is the identity).

/// The wrapping sum of every u32 word: what the read kernel's per-invocation sums add up to.
pub fn checksum(words: &[u32]) -> u32 {
    words.iter().fold(0u32, |sum, &w| sum.wrapping_add(w))
}

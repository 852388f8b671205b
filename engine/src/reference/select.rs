//! Greedy and top-k token selection: twins of `shaders/argmax.wgsl` and `shaders/topk.wgsl`.

use crate::ops::select::Candidate;

/// `a` ranks before `b`: larger value, ties to the lower index. False whenever `a` is NaN.
fn better(a: Candidate, b: Candidate) -> bool {
    a.value > b.value || (a.value == b.value && a.index < b.index)
}

/// Index of the largest value; ties to the lowest index; NaN never wins; `u32::MAX` if every value
/// is NaN.
pub fn argmax(logits: &[f32]) -> u32 {
    let none = Candidate {
        index: u32::MAX,
        value: f32::NEG_INFINITY,
    };
    let best = logits
        .iter()
        .enumerate()
        .map(|(i, &value)| Candidate {
            index: i as u32,
            value,
        })
        .fold(none, |best, c| if better(c, best) { c } else { best });
    best.index
}

/// The `k` best (index, value) pairs, value descending, ties to the lower index, NaN excluded; missing
/// slots are `(u32::MAX, −∞)`.
pub fn top_k(logits: &[f32], k: usize) -> Vec<Candidate> {
    let mut candidates: Vec<Candidate> = logits
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .map(|(i, &value)| Candidate {
            index: i as u32,
            value,
        })
        .collect();
    // partial_cmp (not total_cmp): −0 and +0 tie, as they do on the GPU; NaN was filtered out.
    candidates.sort_by(|a, b| {
        b.value
            .partial_cmp(&a.value)
            .unwrap()
            .then(a.index.cmp(&b.index))
    });
    candidates.resize(
        k,
        Candidate {
            index: u32::MAX,
            value: f32::NEG_INFINITY,
        },
    );
    candidates
}

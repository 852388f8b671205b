//! Reference goldens (tests/reference/goldens/*.safetensors, written by make_goldens.py) and the
//! parity criteria of TESTING.md §2.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// One prompt of a golden file.
pub struct GoldenPrompt {
    pub ids: Vec<u32>,
    /// [T, vocab].
    pub logits: Vec<f32>,
    /// The reference's 32-token greedy continuation and its top-2 margin at each step.
    pub greedy: Vec<u32>,
    pub greedy_margin: Vec<f32>,
}

fn golden_path(name: &str) -> PathBuf {
    repo_root()
        .join("tests/reference/goldens")
        .join(format!("{name}.safetensors"))
}

fn int_tensor(st: &SafeTensors, name: &str, key: &str) -> Vec<u32> {
    let t = st
        .tensor(key)
        .unwrap_or_else(|_| panic!("{name}: no {key}"));
    assert_eq!(t.dtype(), Dtype::I64, "{name}: {key}");
    t.data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect()
}

fn float_tensor(st: &SafeTensors, name: &str, key: &str) -> Vec<f32> {
    let t = st
        .tensor(key)
        .unwrap_or_else(|_| panic!("{name}: no {key}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}: {key}");
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

pub fn load_goldens(name: &str) -> Vec<GoldenPrompt> {
    let path = golden_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("golden file parses");
    let ids = |key: &str| -> Vec<u32> { int_tensor(&st, name, key) };
    let floats = |key: &str| -> Vec<f32> { float_tensor(&st, name, key) };
    (0..)
        .take_while(|p| st.tensor(&format!("p{p}.ids")).is_ok())
        .map(|p| GoldenPrompt {
            ids: ids(&format!("p{p}.ids")),
            logits: floats(&format!("p{p}.logits")),
            greedy: ids(&format!("p{p}.greedy")),
            greedy_margin: floats(&format!("p{p}.greedy_margin")),
        })
        .collect()
}

/// PyTorch's figures over a held-out excerpt (train/evaluate.py), in non-overlapping windows that
/// each start from an empty context, as `tern perplexity` computes them.
pub struct EvalGolden {
    pub ids: Vec<u32>,
    pub window: usize,
    /// Per predicted position (every window position but the last): PyTorch's top-1 id and top-2 margin.
    pub top1: Vec<u32>,
    pub margin: Vec<f32>,
    pub perplexity: f64,
}

impl EvalGolden {
    /// (positions where PyTorch's top-2 margin is ≥ `min_margin`, of those where our top-1 agrees).
    pub fn decisive_top1_agreement(
        &self,
        window_logits: &[Vec<f32>],
        vocab: usize,
        min_margin: f32,
    ) -> (usize, usize) {
        let ours = window_logits
            .iter()
            .flat_map(|logits| {
                let rows = logits.len() / vocab;
                logits.chunks_exact(vocab).take(rows - 1).map(argmax)
            })
            .collect::<Vec<_>>();
        assert_eq!(ours.len(), self.top1.len(), "predicted positions");
        let decisive = (0..ours.len()).filter(|&i| self.margin[i] >= min_margin);
        let (mut count, mut agree) = (0, 0);
        for i in decisive {
            count += 1;
            agree += usize::from(ours[i] == self.top1[i] as usize);
        }
        (count, agree)
    }
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// exp(mean NLL of each token given the ones before it in its window).
pub fn window_perplexity(
    ids: &[u32],
    window: usize,
    window_logits: &[Vec<f32>],
    vocab: usize,
) -> f64 {
    let (mut nll, mut count) = (0f64, 0usize);
    for (chunk, logits) in ids.chunks(window).zip(window_logits) {
        for (row, &next) in logits.chunks_exact(vocab).zip(&chunk[1..]) {
            nll -= tern::generate::log_softmax_at(row, next as usize);
            count += 1;
        }
    }
    (nll / count as f64).exp()
}

pub fn load_eval_golden(name: &str) -> EvalGolden {
    let path = golden_path(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("golden file parses");
    let ids = |key: &str| -> Vec<u32> { int_tensor(&st, name, key) };
    let floats = |key: &str| -> Vec<f32> { float_tensor(&st, name, key) };
    EvalGolden {
        ids: ids("eval.ids"),
        window: ids("eval.window")[0] as usize,
        top1: ids("eval.top1"),
        margin: floats("eval.margin"),
        perplexity: f64::from(floats("eval.perplexity")[0]),
    }
}

/// Teacher-forced comparison figures.
#[derive(Debug, Clone, Copy)]
pub struct LogitParity {
    pub top1_agreement: f64,
    pub max_abs_diff: f32,
    pub mean_abs_diff: f32,
}

pub fn compare_logits(ours: &[f32], reference: &[f32], vocab: usize) -> LogitParity {
    assert_eq!(ours.len(), reference.len(), "logit count");
    let rows = ours.len() / vocab;
    let agree = ours
        .chunks_exact(vocab)
        .zip(reference.chunks_exact(vocab))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    let diffs = ours.iter().zip(reference).map(|(a, b)| (a - b).abs());
    let (max, sum) = diffs.fold((0f32, 0f64), |(m, s), d| (m.max(d), s + f64::from(d)));
    LogitParity {
        top1_agreement: agree as f64 / rows as f64,
        max_abs_diff: max,
        mean_abs_diff: (sum / ours.len() as f64) as f32,
    }
}

/// TESTING.md §2's criteria for an f32 engine against the f32 reference.
pub fn assert_logit_parity(what: &str, p: LogitParity) {
    eprintln!(
        "{what}: top-1 {:.1} %, max |Δ| {:.3}, mean |Δ| {:.4}",
        100.0 * p.top1_agreement,
        p.max_abs_diff,
        p.mean_abs_diff
    );
    assert!(
        p.top1_agreement >= 0.98,
        "{what}: top-1 agreement {:.3} < 0.98",
        p.top1_agreement
    );
    assert!(
        p.max_abs_diff <= 1.5,
        "{what}: max |Δlogit| {} > 1.5",
        p.max_abs_diff
    );
    assert!(
        p.mean_abs_diff <= 0.1,
        "{what}: mean |Δlogit| {} > 0.1",
        p.mean_abs_diff
    );
}

/// The greedy continuation must equal the reference's, or part from it only at a near-tie of the
/// reference (top-2 margin < 0.25), after which the sequences legitimately differ.
pub fn assert_greedy_parity(what: &str, ours: &[u32], golden: &GoldenPrompt) {
    let n = golden.greedy.len().min(ours.len());
    assert_eq!(
        ours.len(),
        golden.greedy.len(),
        "{what}: continuation length"
    );
    if let Some(i) = (0..n).find(|&i| ours[i] != golden.greedy[i]) {
        let margin = golden.greedy_margin[i];
        assert!(
            margin < 0.25,
            "{what}: greedy parts from the reference at step {i} (ours {} vs {}), reference margin {margin} ≥ 0.25\nours: {ours:?}\nref:  {:?}",
            ours[i], golden.greedy[i], golden.greedy
        );
        eprintln!("{what}: parts at step {i} at a near-tie (margin {margin:.4})");
    }
}

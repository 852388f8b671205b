//! The CPU twin of a whole step of the dense baseline: [`dense_logits`] follows
//! `model::graph::bitnet_step` (the step the GPU runs) line for line, each kernel replaced by its CPU twin
//! ([`crate::reference`]) on host vectors, every weight read from the checkpoint as it is needed.
//! It is the oracle of the dense forward's test (f16 projections, f32 activations, as the dense
//! kernels compute them).

use crate::format::checkpoint::{Checkpoint, FloatRef, NormWeight, Projection, WeightData};
use crate::format::config::ModelConfig;
use crate::format::source::{complete_now, read_range};
use crate::model::graph::gated_epilogue;
use crate::ops::attention::{AttentionShape, KvCacheDtype};
use crate::ops::embedding::FloatDType;
use crate::ops::ternary_matvec::Epilogue;
use crate::reference::attention::attention;
use crate::reference::dense::{dense_project, matvec};
use crate::reference::embedding::embed;
use crate::reference::norm::rmsnorm;
use crate::reference::rope::rope_append;
use crate::{Error, Result};

/// Logits [ids.len(), vocab] of `ids` from position 0 of an empty cache of `max_seq` positions
/// stored as `cache`, for a checkpoint of f16 latent projections.
pub fn dense_logits(
    checkpoint: &Checkpoint,
    ids: &[u32],
    max_seq: usize,
    cache: KvCacheDtype,
) -> Result<Vec<f32>> {
    let c = &checkpoint.config;
    let gated = gated_epilogue(c.activation);
    let g = CpuGraph::new(checkpoint, ids.len(), max_seq, cache);

    let mut x = g.embedding(ids)?;
    for layer in 0..c.num_layers {
        let mut kv = KvCache::new(c, max_seq);
        // Attention block: x += o(sub_norm(attention(rope(q|k|v(input_norm(x))))))
        let input = g.normed(&x, layer, Some(NormWeight::InputLn))?;
        let mut qkv = g.zeros((c.num_heads + 2 * c.num_kv_heads) * c.head_dim);
        g.project(layer, &QKV, &input, Epilogue::Store, &mut qkv)?;
        g.rope_and_append(&mut qkv, &mut kv);
        let attention = g.attention(&qkv, &kv);
        let input = g.normed(&attention, layer, g.sub_norm(NormWeight::AttnSub))?;
        g.project(
            layer,
            &[Projection::O],
            &input,
            Epilogue::AddResidual,
            &mut x,
        )?;

        // Feed-forward block: x += down(sub_norm(act(gate(h)) · up(h))), h = post_attention_norm(x)
        let input = g.normed(&x, layer, Some(NormWeight::PostAttnLn))?;
        let mut ffn = g.zeros(c.intermediate_size);
        g.project(layer, &GATE_UP, &input, gated, &mut ffn)?;
        let input = g.normed(&ffn, layer, g.sub_norm(NormWeight::FfnSub))?;
        g.project(
            layer,
            &[Projection::Down],
            &input,
            Epilogue::AddResidual,
            &mut x,
        )?;
    }
    let normed = g.final_norm(&x)?;
    g.lm_head(&normed)
}

const QKV: [Projection; 3] = [Projection::Q, Projection::K, Projection::V];
const GATE_UP: [Projection; 2] = [Projection::Gate, Projection::Up];

/// One layer's caches, [kv_heads, max_seq, head_dim] each.
struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    fn new(c: &ModelConfig, max_seq: usize) -> Self {
        let len = c.num_kv_heads * c.head_dim * max_seq;
        KvCache {
            k: vec![0.0; len],
            v: vec![0.0; len],
        }
    }
}

struct CpuGraph<'a> {
    checkpoint: &'a Checkpoint,
    config: &'a ModelConfig,
    /// Tokens of the step.
    tokens: usize,
    shape: AttentionShape,
    inv_freq: Vec<f32>,
}

impl<'a> CpuGraph<'a> {
    fn new(checkpoint: &'a Checkpoint, tokens: usize, max_seq: usize, cache: KvCacheDtype) -> Self {
        let config = &checkpoint.config;
        CpuGraph {
            checkpoint,
            config,
            tokens,
            shape: AttentionShape {
                heads: config.num_heads,
                kv_heads: config.num_kv_heads,
                head_dim: config.head_dim,
                max_seq,
                cache,
            },
            inv_freq: config.rope_inv_freq(),
        }
    }

    fn zeros(&self, width: usize) -> Vec<f32> {
        vec![0.0; self.tokens * width]
    }

    fn read(&self, source: usize, offset: u64, len: u64) -> Result<Vec<u8>> {
        let source = self.checkpoint.sources[source].as_ref();
        complete_now("cpu step", read_range(source, offset, len))
    }

    /// The norm a sub-norm site applies: none for plain llama-style BitNet (read as is).
    fn sub_norm(&self, norm: NormWeight) -> Option<NormWeight> {
        self.config.sub_norms.then_some(norm)
    }

    fn embedding(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let e = self.checkpoint.embedding()?;
        let table = self.read(e.source, e.offset, e.len)?;
        Ok(embed(&table, e.dtype, self.config.hidden_size, ids))
    }

    /// `x` RMS-normalized with the layer's `norm` gain, or as is without one.
    fn normed(&self, x: &[f32], layer: usize, norm: Option<NormWeight>) -> Result<Vec<f32>> {
        let Some(norm) = norm else {
            return Ok(x.to_vec());
        };
        self.rmsnorm(x, &self.checkpoint.norm(layer, norm)?)
    }

    /// `x` RMS-normalized with the gain tensor `gain`.
    fn rmsnorm(&self, x: &[f32], gain: &FloatRef) -> Result<Vec<f32>> {
        let gain = complete_now("cpu step", self.checkpoint.read_f32_vector(gain))?;
        Ok(rmsnorm(x, &gain, self.config.rms_norm_eps))
    }

    /// `out` = the stacked f16 rows of `parts` · `input` through `epilogue` (gate|up: the gate rows
    /// and the up rows, combined by the gated epilogue).
    fn project(
        &self,
        layer: usize,
        parts: &[Projection],
        input: &[f32],
        epilogue: Epilogue,
        out: &mut [f32],
    ) -> Result<()> {
        let (mut rows, mut bytes) = (Vec::new(), Vec::new());
        for &part in parts {
            let w = self.checkpoint.projection(layer, part)?;
            if w.data
                != (WeightData::Float {
                    dtype: FloatDType::F16,
                })
            {
                return Err(Error::Invalid(format!(
                    "{}: the CPU step reads f16 latent weights only",
                    w.name
                )));
            }
            rows.push(w.rows);
            bytes.push(self.read(w.source, w.offset, w.len)?);
        }
        let cols = input.len() / self.tokens;
        let f16 = FloatDType::F16;
        match epilogue {
            Epilogue::Relu2Mul | Epilogue::SiluMul => {
                let (gate, up) = (&bytes[0], &bytes[1]);
                dense_project(gate, Some(up), f16, rows[0], cols, input, epilogue, out);
            }
            Epilogue::Store | Epilogue::AddResidual => {
                let stacked = bytes.concat();
                let n = rows.iter().sum();
                dense_project(&stacked, None, f16, n, cols, input, epilogue, out);
            }
        }
        Ok(())
    }

    fn rope_and_append(&self, qkv: &mut [f32], cache: &mut KvCache) {
        rope_append(
            qkv,
            &mut cache.k,
            &mut cache.v,
            self.shape,
            0,
            &self.inv_freq,
        );
    }

    fn attention(&self, qkv: &[f32], cache: &KvCache) -> Vec<f32> {
        let s = self.shape;
        let q_stride = (s.heads + 2 * s.kv_heads) * s.head_dim;
        attention(qkv, q_stride, &cache.k, &cache.v, s, 0, self.tokens)
    }

    fn final_norm(&self, x: &[f32]) -> Result<Vec<f32>> {
        self.rmsnorm(x, &self.checkpoint.final_norm()?)
    }

    /// Logits [T, vocab]: the head (the embedding when tied) times the normalized rows.
    fn lm_head(&self, normed: &[f32]) -> Result<Vec<f32>> {
        let head = self.checkpoint.lm_head()?;
        let table = self.read(head.source, head.offset, head.len)?;
        let c = self.config;
        Ok(matvec(
            &table,
            head.dtype,
            c.vocab_size,
            c.hidden_size,
            normed,
        ))
    }
}

//! A synthetic checkpoint of any shape for benchmarks: a microsoft/bitnet-b1.58-2B-4T-style config
//! and an HF packed safetensors file whose bytes are generated on read (random ternary codes, bf16
//! embedding and unit norms), so `tern bench --shape 2b4t` needs no download and the host never holds
//! the whole file — the loader streams it exactly as it streams a file on disk.
//! [`dense_checkpoint`] is the same model with f16 latent projection weights (an online-quantization
//! config), which `ProjectionKind::Dense` keeps dense: the FP16 baseline at the same shape.

use serde_json::{json, Map, Value};

use crate::format::checkpoint::Checkpoint;
use crate::format::config::{ModelConfig, QuantMode, ScaleConvention};
use crate::format::safetensors as st;
use crate::format::source::{check_range, complete_now, ReadFuture, TensorSource};
use crate::{Error, Result};

/// The dimensions of a BitNet b1.58 model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// `hidden_size`: width of the residual stream.
    pub hidden: usize,
    /// `num_hidden_layers`.
    pub layers: usize,
    /// `num_attention_heads` (query heads).
    pub heads: usize,
    /// `num_key_value_heads`.
    pub kv_heads: usize,
    /// `intermediate_size`: width of the feed-forward hidden layer.
    pub intermediate: usize,
    /// `vocab_size`.
    pub vocab: usize,
}

impl Shape {
    /// microsoft/bitnet-b1.58-2B-4T.
    pub const BITNET_2B4T: Shape = Shape {
        hidden: 2560,
        layers: 30,
        heads: 20,
        kv_heads: 5,
        intermediate: 6912,
        vocab: 128256,
    };
    /// The committed test fixtures' shape (tests/fixtures/bitnet-2b4t).
    pub const TINY: Shape = Shape {
        hidden: 256,
        layers: 4,
        heads: 8,
        kv_heads: 2,
        intermediate: 768,
        vocab: 1024,
    };

    /// Elements of the layers' seven projections (what is ternary in BitNet b1.58).
    pub fn projection_parameters(&self) -> u64 {
        let kv = self.hidden / self.heads * self.kv_heads;
        let per_layer = self.hidden * (self.hidden + 2 * kv) // q, k, v
            + self.hidden * self.hidden // o
            + 3 * self.hidden * self.intermediate; // gate, up, down
        (per_layer * self.layers) as u64
    }

    /// All parameters: the projections, the (tied) embedding and the norm gains.
    pub fn parameters(&self) -> u64 {
        let norms = self.layers * (3 * self.hidden + self.intermediate) + self.hidden;
        self.projection_parameters() + (self.vocab * self.hidden + norms) as u64
    }

    /// `2b4t`, `tiny`, or `H,L,heads,kv,I,V` (hidden, layers, heads, kv heads, intermediate, vocab).
    pub fn parse(s: &str) -> Result<Shape> {
        match s {
            "2b4t" => return Ok(Shape::BITNET_2B4T),
            "tiny" => return Ok(Shape::TINY),
            _ => {}
        }
        let bad = || {
            Error::Invalid(format!(
                "shape {s:?}: expected 2b4t, tiny or six positive integers \
                 hidden,layers,heads,kv_heads,intermediate,vocab"
            ))
        };
        let dims = s
            .split(',')
            .map(|d| d.trim().parse::<usize>().ok().filter(|&d| d > 0))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        let [hidden, layers, heads, kv_heads, intermediate, vocab] = dims[..] else {
            return Err(bad());
        };
        Ok(Shape {
            hidden,
            layers,
            heads,
            kv_heads,
            intermediate,
            vocab,
        })
    }

    /// config.json of the 2B-4T model at this shape (validated by the config parser); `online`:
    /// float latent projections instead of packed ternary ones.
    fn config_json(&self, max_position_embeddings: usize, online: bool) -> Value {
        json!({
            "architectures": ["BitNetForCausalLM"],
            "model_type": "bitnet",
            "hidden_act": "relu2",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_attention_heads": self.heads,
            "num_hidden_layers": self.layers,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": max_position_embeddings,
            "quantization_config": {
                "linear_class": "autobitlinear",
                "quant_method": "bitnet",
                "quantization_mode": if online { "online" } else { "offline" }
            },
            "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0,
            "tie_word_embeddings": true,
            "vocab_size": self.vocab,
        })
    }
}

/// A word-level tokenizer.json whose token `i` is the word `t{i}`, for `vocab` ids: a synthetic
/// checkpoint given it runs through the front door ([`crate::Model`]), which needs a tokenizer.
pub fn word_level_tokenizer(vocab: usize) -> String {
    let words: Map<String, Value> = (0..vocab).map(|i| (format!("t{i}"), json!(i))).collect();
    json!({
        "version": "1.0",
        "added_tokens": [],
        "pre_tokenizer": { "type": "Whitespace" },
        "model": { "type": "WordLevel", "vocab": words, "unk_token": "t0" },
    })
    .to_string()
}

/// A checkpoint of `shape` with random ternary weights (deterministic in `seed`).
pub fn checkpoint(shape: Shape, max_position_embeddings: usize, seed: u64) -> Result<Checkpoint> {
    build(shape, max_position_embeddings, seed, false)
}

/// A checkpoint of `shape` with random f16 projection weights (deterministic in `seed`): loaded with
/// `ProjectionKind::Dense` it is the dense baseline; with `Ternary` it is quantized at load.
pub fn dense_checkpoint(
    shape: Shape,
    max_position_embeddings: usize,
    seed: u64,
) -> Result<Checkpoint> {
    build(shape, max_position_embeddings, seed, true)
}

fn build(
    shape: Shape,
    max_position_embeddings: usize,
    seed: u64,
    dense: bool,
) -> Result<Checkpoint> {
    let name = format!(
        "synthetic {}{}x{} (hidden {}, heads {}/{}, intermediate {}, vocab {})",
        if dense { "f16 " } else { "" },
        shape.layers,
        shape.hidden,
        shape.hidden,
        shape.heads,
        shape.kv_heads,
        shape.intermediate,
        shape.vocab
    );
    let config = ModelConfig::from_hf_json(
        &name,
        &shape
            .config_json(max_position_embeddings, dense)
            .to_string(),
    )?;
    let source = SyntheticSource::new(&name, &config, seed)?;
    // Synthetic bytes are computed on the spot: no executor needed.
    complete_now(&name, async {
        let header = st::read_header(&source).await?;
        Checkpoint::from_safetensors(&name, config, vec![Box::new(source)], vec![header]).await
    })
}

/// What a tensor's bytes are.
#[derive(Clone, Copy)]
enum Fill {
    /// HF packed ternary codes (every 2-bit code in {0, 1, 2}).
    Packed,
    /// bf16 uniform in [-amplitude, amplitude).
    Random(f32),
    /// f16 uniform in [-amplitude, amplitude).
    RandomF16(f32),
    /// bf16, every element the same.
    Constant(f32),
}

struct Tensor {
    /// Absolute byte range in the file.
    start: u64,
    end: u64,
    fill: Fill,
    seed: u64,
}

/// A safetensors file generated on read: the header, then each tensor's bytes from its [`Fill`].
struct SyntheticSource {
    name: String,
    header: Vec<u8>,
    /// Sorted by `start`, contiguous after the header.
    tensors: Vec<Tensor>,
}

impl SyntheticSource {
    fn new(name: &str, c: &ModelConfig, seed: u64) -> Result<Self> {
        let (h, attn, kv, ff) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        let mut specs: Vec<(String, &str, Vec<usize>, Fill)> = vec![
            (
                "model.embed_tokens.weight".into(),
                "BF16",
                vec![c.vocab_size, h],
                Fill::Random(1.0),
            ),
            (
                "model.norm.weight".into(),
                "BF16",
                vec![h],
                Fill::Constant(1.0),
            ),
        ];
        for layer in 0..c.num_layers {
            let p = |s: &str| format!("model.layers.{layer}.{s}");
            for (norm, width) in [
                ("input_layernorm", h),
                ("post_attention_layernorm", h),
                ("self_attn.attn_sub_norm", attn),
                ("mlp.ffn_sub_norm", ff),
            ] {
                specs.push((
                    p(&format!("{norm}.weight")),
                    "BF16",
                    vec![width],
                    Fill::Constant(1.0),
                ));
            }
            for (projection, rows, cols) in [
                ("self_attn.q_proj", attn, h),
                ("self_attn.k_proj", kv, h),
                ("self_attn.v_proj", kv, h),
                ("self_attn.o_proj", h, attn),
                ("mlp.gate_proj", ff, h),
                ("mlp.up_proj", ff, h),
                ("mlp.down_proj", h, ff),
            ] {
                // Unit-variance outputs from unit-variance inputs: a multiplier of 1/√cols.
                let multiplier = 1.0 / (cols as f32).sqrt();
                if c.quantization == QuantMode::Online {
                    specs.push((
                        p(&format!("{projection}.weight")),
                        "F16",
                        vec![rows, cols],
                        Fill::RandomF16(multiplier),
                    ));
                    continue;
                }
                if rows % 4 != 0 {
                    return Err(Error::Invalid(format!(
                        "{name}: {projection} has {rows} rows, not a multiple of 4 (HF packing)"
                    )));
                }
                specs.push((
                    p(&format!("{projection}.weight")),
                    "U8",
                    vec![rows / 4, cols],
                    Fill::Packed,
                ));
                let stored = match c.scale_convention {
                    ScaleConvention::Divide => 1.0 / multiplier,
                    ScaleConvention::Multiply => multiplier,
                };
                specs.push((
                    p(&format!("{projection}.weight_scale")),
                    "BF16",
                    vec![1],
                    Fill::Constant(stored),
                ));
            }
        }

        let mut entries = Map::new();
        let mut ranges = Vec::with_capacity(specs.len());
        let mut offset = 0u64;
        for (i, (name, dtype, shape, fill)) in specs.into_iter().enumerate() {
            let element_bytes = if dtype == "U8" { 1 } else { 2 };
            let len = shape.iter().product::<usize>() as u64 * element_bytes;
            entries.insert(
                name,
                json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}),
            );
            ranges.push((
                offset,
                offset + len,
                fill,
                seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            ));
            offset += len;
        }
        let mut json = Value::Object(entries).to_string().into_bytes();
        json.resize(json.len().next_multiple_of(8), b' ');
        let mut header = (json.len() as u64).to_le_bytes().to_vec();
        header.extend_from_slice(&json);
        let data_start = header.len() as u64;
        let tensors = ranges
            .into_iter()
            .map(|(start, end, fill, seed)| Tensor {
                start: data_start + start,
                end: data_start + end,
                fill,
                seed,
            })
            .collect();
        Ok(SyntheticSource {
            name: name.into(),
            header,
            tensors,
        })
    }
}

impl TensorSource for SyntheticSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn len(&self) -> u64 {
        self.tensors
            .last()
            .map_or(self.header.len() as u64, |t| t.end)
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> ReadFuture<'a> {
        Box::pin(std::future::ready(self.fill_at(offset, buf)))
    }
}

impl SyntheticSource {
    fn fill_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(&self.name, offset, buf.len() as u64, self.len())?;
        let end = offset + buf.len() as u64;
        let mut position = offset;
        while position < end {
            let out = &mut buf[(position - offset) as usize..];
            let header_len = self.header.len() as u64;
            if position < header_len {
                let n = (header_len - position).min(out.len() as u64) as usize;
                out[..n].copy_from_slice(&self.header[position as usize..position as usize + n]);
                position += n as u64;
                continue;
            }
            let t = &self.tensors[self.tensors.partition_point(|t| t.end <= position)];
            let n = (t.end.min(end) - position) as usize;
            fill(t, position - t.start, &mut out[..n]);
            position += n as u64;
        }
        Ok(())
    }
}

/// Fills `out` with the bytes of `t` from `relative` on, generated 8 bytes per hash.
fn fill(t: &Tensor, relative: u64, out: &mut [u8]) {
    let mut word_index = relative / 8;
    let mut skip = (relative % 8) as usize;
    let mut written = 0;
    while written < out.len() {
        let word = word(t, word_index);
        let n = (8 - skip).min(out.len() - written);
        out[written..written + n].copy_from_slice(&word[skip..skip + n]);
        written += n;
        skip = 0;
        word_index += 1;
    }
}

/// Bytes `8·index .. 8·index + 8` of tensor `t`.
fn word(t: &Tensor, index: u64) -> [u8; 8] {
    let bits = splitmix64(t.seed.wrapping_add(index));
    match t.fill {
        Fill::Packed => bits.to_le_bytes().map(|b| PACKED_CODES[b as usize % 81]),
        Fill::Random(amplitude) => {
            half_word(|i| half::bf16::from_f32(uniform(bits, i) * amplitude).to_bits())
        }
        Fill::RandomF16(amplitude) => {
            half_word(|i| half::f16::from_f32(uniform(bits, i) * amplitude).to_bits())
        }
        Fill::Constant(value) => half_word(|_| half::bf16::from_f32(value).to_bits()),
    }
}

/// Lane `i` (of four 16-bit lanes) of `bits` as a value in [-1, 1).
fn uniform(bits: u64, i: u32) -> f32 {
    ((bits >> (16 * i)) & 0xffff) as f32 / 32768.0 - 1.0
}

/// Four 16-bit floats (bf16 or f16 bits) from `value(lane)`.
fn half_word(value: impl Fn(u32) -> u16) -> [u8; 8] {
    let mut word = [0u8; 8];
    for (i, pair) in word.chunks_exact_mut(2).enumerate() {
        pair.copy_from_slice(&value(i as u32).to_le_bytes());
    }
    word
}

/// The 81 bytes whose four 2-bit codes are all valid ternary codes (0, 1 or 2).
const PACKED_CODES: [u8; 81] = {
    let mut codes = [0u8; 81];
    let mut i = 0;
    while i < 81 {
        let (a, b, c, d) = (i % 3, i / 3 % 3, i / 9 % 3, i / 27);
        codes[i] = (a | b << 2 | c << 4 | d << 6) as u8;
        i += 1;
    }
    codes
};

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::source::{complete_now, read_range};
    use crate::reference::repack::decode_hf_packed;

    #[test]
    fn counts_parameters() {
        // microsoft/bitnet-b1.58-2B-4T: 2.41 B parameters, 2.09 B of them in the projections.
        let s = Shape::BITNET_2B4T;
        assert_eq!(s.projection_parameters(), 2_084_044_800);
        assert_eq!(
            s.parameters(),
            2_084_044_800 + 128_256 * 2560 + 30 * (3 * 2560 + 6912) + 2560
        );
    }

    #[test]
    fn parses_shapes() {
        assert_eq!(Shape::parse("2b4t").unwrap(), Shape::BITNET_2B4T);
        assert_eq!(Shape::parse("tiny").unwrap(), Shape::TINY);
        assert_eq!(
            Shape::parse("64,2,4,2,128,256").unwrap(),
            Shape {
                hidden: 64,
                layers: 2,
                heads: 4,
                kv_heads: 2,
                intermediate: 128,
                vocab: 256
            }
        );
        for bad in [
            "",
            "huge",
            "64,2,4,2,128",
            "64,2,4,2,128,0",
            "64,2,x,2,128,256",
        ] {
            assert!(Shape::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn resolves_with_valid_codes_and_reads_consistently() {
        let c = checkpoint(Shape::parse("64,2,4,2,128,256").unwrap(), 128, 7).unwrap();
        let q = c
            .projection(1, crate::format::checkpoint::Projection::Gate)
            .unwrap();
        let source = c.sources[q.source].as_ref();
        let read = |offset, len| complete_now("synthetic", read_range(source, offset, len));
        let whole = read(q.offset, q.len).unwrap();
        decode_hf_packed(&whole, q.rows, q.cols).unwrap();
        // An unaligned read in the middle returns the same bytes as the whole read.
        let part = read(q.offset + 13, 29).unwrap();
        assert_eq!(part, whole[13..42]);
        let norm_ref = c
            .norm(0, crate::format::checkpoint::NormWeight::FfnSub)
            .unwrap();
        let norm = complete_now("synthetic", c.read_f32_vector(&norm_ref)).unwrap();
        assert_eq!(norm, vec![1.0; 128]);
    }

    #[test]
    fn dense_checkpoint_has_f16_projections_within_their_amplitude() {
        use crate::format::checkpoint::{Projection, WeightData};
        use crate::layout::FloatDType;
        let c = dense_checkpoint(Shape::parse("64,2,4,2,128,256").unwrap(), 128, 7).unwrap();
        let down = c.projection(1, Projection::Down).unwrap();
        let f16 = WeightData::Float {
            dtype: FloatDType::F16,
        };
        assert_eq!((down.rows, down.cols, down.data), (64, 128, f16));
        let source = c.sources[down.source].as_ref();
        let bytes = complete_now("synthetic", read_range(source, down.offset, down.len)).unwrap();
        let values: Vec<f32> = bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        let amplitude = 1.0 / 128f32.sqrt();
        assert!(values.iter().all(|v| v.abs() <= amplitude));
        assert!(values.iter().any(|v| v.abs() > amplitude / 2.0));
    }
}

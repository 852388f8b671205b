//! The resolved model description the engine runs, read from a Hugging Face `config.json`
//! or from GGUF metadata, with every dimension validated.

use super::gguf::{GgufFile, MetaValue};
use crate::{Error, Result};
use serde_json::Value;

/// The feed-forward block's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// relu(x)² (2B-4T).
    Relu2,
    /// silu(gate)·up (llama-style).
    Silu,
}

/// How a ternary tensor's stored scale is applied: autobitlinear multiplies, plain BitLinear divides.
/// Scales computed at load (online quantization) and GGUF scales always multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleConvention {
    /// `w = ternary · scale` (autobitlinear, online and GGUF scales).
    Multiply,
    /// `w = ternary / scale` (plain BitLinear).
    Divide,
}

/// Whether the projections are stored ternary (offline) or as float latents quantized at load (online).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMode {
    /// Stored already ternary, with their scales.
    Offline,
    /// Stored as float latents, absmean-quantized to ternary at load.
    Online,
}

/// A transformer's shape and conventions, validated: every dimension is non-zero and within
/// bounds, `num_kv_heads` divides `num_heads`, `head_dim` is even.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Width of the residual stream (the embedding length).
    pub hidden_size: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (fewer than `num_heads` under grouped-query attention).
    pub num_kv_heads: usize,
    /// Width of one attention head (`hidden_size / num_heads` unless the config says otherwise).
    pub head_dim: usize,
    /// Width of the feed-forward block's hidden layer.
    pub intermediate_size: usize,
    /// Rows of the embedding and the LM head.
    pub vocab_size: usize,
    /// Epsilon added to the mean square in every RMSNorm.
    pub rms_norm_eps: f32,
    /// RoPE base frequency (10000 when unset).
    pub rope_theta: f32,
    /// Linear RoPE scaling: positions are divided by this factor (1 = no scaling).
    pub rope_linear_factor: f32,
    /// Longest context the model was trained for, in positions.
    pub max_position_embeddings: usize,
    /// The feed-forward activation.
    pub activation: Activation,
    /// BitNet's extra RMSNorms before `o_proj` and `down_proj` are present (not in llama-style
    /// checkpoints).
    pub sub_norms: bool,
    /// The LM head reuses the embedding matrix (no separate `lm_head` / `output` tensor).
    pub tie_word_embeddings: bool,
    /// How stored ternary scales are applied.
    pub scale_convention: ScaleConvention,
    /// Whether projections are stored ternary or quantized at load.
    pub quantization: QuantMode,
    /// Beginning-of-sequence token id, if the config names one.
    pub bos_token_id: Option<u32>,
    /// Ids that end generation according to the config (GGUF: EOS and EOT); may be empty.
    pub eos_token_ids: Vec<u32>,
}

const MAX_HIDDEN: usize = 1 << 16;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 1024;
const MAX_HEAD_DIM: usize = 1024;
const MAX_INTERMEDIATE: usize = 1 << 18;
const MAX_VOCAB: usize = 1 << 22;
const MAX_POSITIONS: usize = 1 << 24;

impl ModelConfig {
    /// RoPE's per-pair frequencies, linear scaling applied: `angle = position · inv_freq[j]`.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let frequencies = crate::layout::inv_freq(self.rope_theta, self.head_dim);
        if self.rope_linear_factor == 1.0 {
            return frequencies;
        }
        frequencies
            .into_iter()
            .map(|f| f / self.rope_linear_factor)
            .collect()
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(file_name: &str, json: &str) -> Result<Self> {
        let file = file_name;
        let v: Value = serde_json::from_str(json)
            .map_err(|e| Error::config(file, "(root)", format!("invalid JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::config(file, "(root)", "not a JSON object"));
        }
        let model_type = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "bitnet" && model_type != "llama" {
            return Err(Error::config(
                file,
                "model_type",
                format!("unsupported {model_type:?} (need bitnet or llama)"),
            ));
        }
        let bitnet_arch = v
            .get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|s| s.as_str() == Some("BitnetForCausalLM")));
        let sub_norms = model_type == "bitnet" || bitnet_arch;

        let hidden_size = hf_usize(&v, file, "hidden_size")?;
        let num_heads = hf_usize(&v, file, "num_attention_heads")?;
        let head_dim = match v.get("head_dim").filter(|h| !h.is_null()) {
            Some(_) => hf_usize(&v, file, "head_dim")?,
            None if num_heads != 0 && hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(Error::config(
                    file,
                    "num_attention_heads",
                    "does not divide hidden_size and no head_dim",
                ))
            }
        };
        let num_kv_heads = match v.get("num_key_value_heads").filter(|h| !h.is_null()) {
            Some(_) => hf_usize(&v, file, "num_key_value_heads")?,
            None => num_heads,
        };

        let act =
            v.get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or(if model_type == "bitnet" {
                    "relu2"
                } else {
                    "silu"
                });
        let activation = match act {
            "relu2" => Activation::Relu2,
            "silu" | "swish" => Activation::Silu,
            a => {
                return Err(Error::config(
                    file,
                    "hidden_act",
                    format!("unsupported activation {a:?}"),
                ))
            }
        };

        let rope_params = v.get("rope_parameters").filter(|p| !p.is_null());
        let mut rope_linear_factor = 1.0;
        for (field, p) in [
            ("rope_scaling", v.get("rope_scaling")),
            ("rope_parameters", rope_params),
        ] {
            if let Some(p) = p.filter(|p| !p.is_null()) {
                let ty = p
                    .get("rope_type")
                    .or_else(|| p.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                match ty {
                    "default" => {}
                    "linear" => {
                        let factor = p.get("factor").ok_or_else(|| {
                            Error::config(file, format!("{field}.factor"), "missing")
                        })?;
                        rope_linear_factor = hf_f32(factor, file, &format!("{field}.factor"))?;
                    }
                    _ => {
                        return Err(Error::config(
                            file,
                            field,
                            format!(
                                "unsupported RoPE scaling type {ty:?} (default and linear are)"
                            ),
                        ))
                    }
                }
            }
        }
        let rope_theta = match (
            v.get("rope_theta").filter(|t| !t.is_null()),
            rope_params.and_then(|p| p.get("rope_theta")),
        ) {
            (Some(t), _) => hf_f32(t, file, "rope_theta")?,
            (None, Some(t)) => hf_f32(t, file, "rope_parameters.rope_theta")?,
            (None, None) => 10000.0,
        };
        let rms_norm_eps = match v.get("rms_norm_eps") {
            Some(e) => hf_f32(e, file, "rms_norm_eps")?,
            None => 1e-6,
        };
        let max_position_embeddings = match v.get("max_position_embeddings") {
            Some(_) => hf_usize(&v, file, "max_position_embeddings")?,
            None => 2048,
        };

        let (quantization, scale_convention) =
            hf_quantization(&v, file, bitnet_arch || model_type == "bitnet")?;

        let bos_token_id = match v.get("bos_token_id").filter(|b| !b.is_null()) {
            Some(b) => Some(token_id(b, file, "bos_token_id")?),
            None => None,
        };
        let eos_token_ids = match v.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|e| token_id(e, file, "eos_token_id"))
                .collect::<Result<_>>()?,
            Some(e) => vec![token_id(e, file, "eos_token_id")?],
        };
        let tie_word_embeddings = match v.get("tie_word_embeddings") {
            None | Some(Value::Null) => false,
            Some(t) => t
                .as_bool()
                .ok_or_else(|| Error::config(file, "tie_word_embeddings", "not a boolean"))?,
        };

        let cfg = Self {
            hidden_size,
            num_layers: hf_usize(&v, file, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: hf_usize(&v, file, "intermediate_size")?,
            vocab_size: hf_usize(&v, file, "vocab_size")?,
            rms_norm_eps,
            rope_theta,
            rope_linear_factor,
            max_position_embeddings,
            activation,
            sub_norms,
            tie_word_embeddings,
            scale_convention,
            quantization,
            bos_token_id,
            eos_token_ids,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Reads the model description from GGUF metadata; `file` names the GGUF in errors.
    pub fn from_gguf(file: &str, g: &GgufFile) -> Result<Self> {
        let arch = g.architecture().ok_or_else(|| {
            Error::config(file, "general.architecture", "missing or not a string")
        })?;
        let (activation, sub_norms) = match arch {
            "bitnet-b1.58" | "bitnet-25" => (Activation::Relu2, true),
            "bitnet" => (Activation::Silu, true),
            "llama" => (Activation::Silu, false),
            a => {
                return Err(Error::config(
                    file,
                    "general.architecture",
                    format!("unsupported architecture {a:?}"),
                ))
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let get_usize = |k: &str| -> Result<Option<usize>> {
            let k = key(k);
            g.get(&k).map(|m| gguf_usize(m, file, &k)).transpose()
        };
        let req_usize =
            |k: &str| get_usize(k)?.ok_or_else(|| Error::config(file, key(k), "missing"));
        let get_f32 = |k: &str| -> Result<Option<f32>> {
            let k = key(k);
            g.get(&k)
                .map(|m| {
                    m.as_f64()
                        .map(|x| x as f32)
                        .ok_or_else(|| Error::config(file, &k, "not a number"))
                })
                .transpose()
        };

        let hidden_size = req_usize("embedding_length")?;
        let num_heads = req_usize("attention.head_count")?;
        let head_dim = match get_usize("attention.key_length")? {
            Some(h) => h,
            None if num_heads != 0 && hidden_size % num_heads == 0 => hidden_size / num_heads,
            None => {
                return Err(Error::config(
                    file,
                    key("attention.head_count"),
                    "does not divide embedding_length",
                ))
            }
        };
        if let Some(rot) = get_usize("rope.dimension_count")? {
            if rot != head_dim {
                return Err(Error::config(
                    file,
                    key("rope.dimension_count"),
                    format!("partial RoPE ({rot} of {head_dim}) is not supported"),
                ));
            }
        }
        // llama.cpp's converter writes `linear` with factor 1.0 for BitNet models.
        let rope_linear_factor = match g.get(&key("rope.scaling.type")).map(MetaValue::as_str) {
            None | Some(Some("none")) => 1.0,
            Some(Some("linear")) => get_f32("rope.scaling.factor")?.unwrap_or(1.0),
            Some(other) => {
                return Err(Error::config(
                    file,
                    key("rope.scaling.type"),
                    format!(
                        "unsupported RoPE scaling {} (none and linear are)",
                        other.map_or("(not a string)".into(), |s| format!("{s:?}"))
                    ),
                ))
            }
        };
        let vocab_size = match get_usize("vocab_size")? {
            Some(n) => n,
            None => g
                .get("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(<[MetaValue]>::len)
                .ok_or_else(|| {
                    Error::config(
                        file,
                        "tokenizer.ggml.tokens",
                        "missing: cannot tell the vocabulary size",
                    )
                })?,
        };
        let tok_id = |k: &str| -> Result<Option<u32>> {
            g.get(k)
                .map(|m| {
                    m.as_u64()
                        .and_then(|x| u32::try_from(x).ok())
                        .ok_or_else(|| Error::config(file, k, "not a token id"))
                })
                .transpose()
        };
        let mut eos_token_ids = Vec::new();
        for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Some(id) = tok_id(k)? {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        let cfg = Self {
            hidden_size,
            num_layers: req_usize("block_count")?,
            num_heads,
            num_kv_heads: get_usize("attention.head_count_kv")?.unwrap_or(num_heads),
            head_dim,
            intermediate_size: req_usize("feed_forward_length")?,
            vocab_size,
            rms_norm_eps: get_f32("attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
                Error::config(file, key("attention.layer_norm_rms_epsilon"), "missing")
            })?,
            rope_theta: get_f32("rope.freq_base")?.unwrap_or(10000.0),
            rope_linear_factor,
            max_position_embeddings: req_usize("context_length")?,
            activation,
            sub_norms,
            tie_word_embeddings: !g.tensors.iter().any(|t| t.name == "output.weight"),
            scale_convention: ScaleConvention::Multiply,
            quantization: QuantMode::Offline,
            bos_token_id: tok_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// Rejects zero, inconsistent and absurd dimensions, naming the field.
    fn validate(&self, file: &str) -> Result<()> {
        let dims = [
            ("hidden_size", self.hidden_size, MAX_HIDDEN),
            ("num_hidden_layers", self.num_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_heads, MAX_HEADS),
            ("num_key_value_heads", self.num_kv_heads, MAX_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
            (
                "intermediate_size",
                self.intermediate_size,
                MAX_INTERMEDIATE,
            ),
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                MAX_POSITIONS,
            ),
        ];
        for (field, v, max) in dims {
            if v == 0 || v > max {
                return Err(Error::config(
                    file,
                    field,
                    format!("{v} is outside 1..={max}"),
                ));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(Error::config(
                file,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config(
                file,
                "head_dim",
                format!("{} is odd; RoPE rotates pairs", self.head_dim),
            ));
        }
        if self.num_heads * self.head_dim > MAX_HIDDEN {
            return Err(Error::config(
                file,
                "head_dim",
                "num_attention_heads × head_dim is too large",
            ));
        }
        for (field, v) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
            ("rope_scaling.factor", self.rope_linear_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    file,
                    field,
                    format!("{v} must be finite and positive"),
                ));
            }
        }
        if self.rms_norm_eps >= 1.0 {
            return Err(Error::config(
                file,
                "rms_norm_eps",
                format!("{} is not a small epsilon", self.rms_norm_eps),
            ));
        }
        for &id in self.bos_token_id.iter().chain(&self.eos_token_ids) {
            if id as usize >= self.vocab_size {
                return Err(Error::config(
                    file,
                    "bos/eos_token_id",
                    format!("token id {id} ≥ vocab_size {}", self.vocab_size),
                ));
            }
        }
        Ok(())
    }
}

/// Quantization mode and scale convention from `quantization_config`.
fn hf_quantization(
    v: &Value,
    file: &str,
    bitnet_arch: bool,
) -> Result<(QuantMode, ScaleConvention)> {
    let Some(qc) = v.get("quantization_config").filter(|q| !q.is_null()) else {
        // 1bitLLM-style: float latents, absmean-quantized at load.
        return if bitnet_arch {
            Ok((QuantMode::Online, ScaleConvention::Multiply))
        } else {
            Err(Error::config(
                file,
                "quantization_config",
                "missing: not a BitNet checkpoint",
            ))
        };
    };
    let method = qc.get("quant_method").and_then(Value::as_str).unwrap_or("");
    if method != "bitnet" {
        return Err(Error::config(
            file,
            "quantization_config.quant_method",
            format!("unsupported {method:?} (need bitnet)"),
        ));
    }
    if qc.get("use_rms_norm").and_then(Value::as_bool) == Some(true) {
        return Err(Error::config(
            file,
            "quantization_config.use_rms_norm",
            "BitLinear input RMSNorm is not supported",
        ));
    }
    let offline_flag = qc
        .get("offline_quantization")
        .or_else(|| v.get("offline_quantization"));
    let mode = match (
        qc.get("quantization_mode").and_then(Value::as_str),
        offline_flag.and_then(Value::as_bool),
    ) {
        (Some("offline"), _) | (None, Some(true) | None) => QuantMode::Offline,
        (Some("online"), _) | (None, Some(false)) => QuantMode::Online,
        (Some(m), _) => {
            return Err(Error::config(
                file,
                "quantization_config.quantization_mode",
                format!("unsupported {m:?}"),
            ))
        }
    };
    let convention = match qc.get("linear_class").and_then(Value::as_str) {
        Some("autobitlinear") => ScaleConvention::Multiply,
        Some("bitlinear") | None => ScaleConvention::Divide,
        Some(c) => {
            return Err(Error::config(
                file,
                "quantization_config.linear_class",
                format!("unknown linear class {c:?}"),
            ))
        }
    };
    // A scale computed at load is always a multiplier.
    let convention = if mode == QuantMode::Online {
        ScaleConvention::Multiply
    } else {
        convention
    };
    Ok((mode, convention))
}

fn hf_usize(v: &Value, file: &str, field: &str) -> Result<usize> {
    let x = v
        .get(field)
        .ok_or_else(|| Error::config(file, field, "missing"))?;
    x.as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| Error::config(file, field, format!("{x} is not a non-negative integer")))
}

fn hf_f32(x: &Value, file: &str, field: &str) -> Result<f32> {
    x.as_f64()
        .map(|f| f as f32)
        .ok_or_else(|| Error::config(file, field, format!("{x} is not a number")))
}

fn token_id(x: &Value, file: &str, field: &str) -> Result<u32> {
    x.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| Error::config(file, field, format!("{x} is not a token id")))
}

/// A GGUF integer, or a per-layer array of equal integers (newer llama.cpp writes those).
fn gguf_usize(m: &MetaValue, file: &str, key: &str) -> Result<usize> {
    let bad = || Error::config(file, key, format!("{m:?} is not a non-negative integer"));
    let one = |m: &MetaValue| m.as_u64().and_then(|n| usize::try_from(n).ok());
    match m.as_array() {
        Some(a) => {
            let first = a.first().and_then(one).ok_or_else(bad)?;
            if a.iter().all(|x| one(x) == Some(first)) {
                Ok(first)
            } else {
                Err(Error::config(
                    file,
                    key,
                    "per-layer values differ; not supported",
                ))
            }
        }
        None => one(m).ok_or_else(bad),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::gguf::{self, tests::Writer};
    use crate::format::source::{complete_now, BytesSource};

    pub(crate) const B158_2B4T: &str = r#"{
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_size": 2560,
        "num_hidden_layers": 30, "num_attention_heads": 20, "num_key_value_heads": 5,
        "intermediate_size": 6912, "vocab_size": 128256, "hidden_act": "relu2", "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": true, "max_position_embeddings": 4096,
        "bos_token_id": 128000, "eos_token_id": 128001,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
    }"#;

    fn with(base: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
        let mut v: Value = serde_json::from_str(base).unwrap();
        edit(v.as_object_mut().unwrap());
        v.to_string()
    }

    fn err(json: &str) -> String {
        let e = ModelConfig::from_hf_json("config.json", json)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json"), "{e}");
        e
    }

    #[test]
    fn bitnet_2b4t() {
        let c = ModelConfig::from_hf_json("config.json", B158_2B4T).unwrap();
        assert_eq!(
            (c.head_dim, c.num_kv_heads, c.activation, c.sub_norms),
            (128, 5, Activation::Relu2, true)
        );
        assert_eq!(
            (c.scale_convention, c.quantization),
            (ScaleConvention::Multiply, QuantMode::Offline)
        );
        assert_eq!(
            (c.rope_theta, c.tie_word_embeddings, c.eos_token_ids.clone()),
            (500000.0, true, vec![128001])
        );
        // rope_theta inside rope_parameters, online mode.
        let j = with(B158_2B4T, |m| {
            m.remove("rope_theta");
            m.insert(
                "rope_parameters".into(),
                serde_json::json!({"rope_type": "default", "rope_theta": 12345.0}),
            );
            m["quantization_config"]["quantization_mode"] = "online".into();
            m.insert("eos_token_id".into(), serde_json::json!([128001, 128009]));
        });
        let c = ModelConfig::from_hf_json("config.json", &j).unwrap();
        assert_eq!(
            (c.rope_theta, c.quantization, c.eos_token_ids),
            (12345.0, QuantMode::Online, vec![128001, 128009])
        );
    }

    #[test]
    fn onebit_llm_and_plain_bitlinear() {
        let j = r#"{"architectures": ["BitnetForCausalLM"], "model_type": "llama", "hidden_size": 1536,
            "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 16, "intermediate_size": 4096,
            "vocab_size": 32002, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 2048, "input_bits": 8, "weight_bits": 1, "bos_token_id": 1, "eos_token_id": 2,
            "rope_scaling": null, "tie_word_embeddings": false}"#;
        let c = ModelConfig::from_hf_json("config.json", j).unwrap();
        assert_eq!(
            (c.head_dim, c.activation, c.sub_norms, c.quantization),
            (96, Activation::Silu, true, QuantMode::Online)
        );
        let falcon = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 3072,
            "head_dim": 256, "num_hidden_layers": 22, "num_attention_heads": 12, "num_key_value_heads": 4,
            "intermediate_size": 23040, "vocab_size": 131072, "hidden_act": "silu", "rms_norm_eps": 1e-6,
            "rope_theta": 1000042.0, "max_position_embeddings": 32768, "eos_token_id": 11,
            "quantization_config": {"quant_method": "bitnet", "modules_to_not_convert": null}}"#;
        let c = ModelConfig::from_hf_json("config.json", falcon).unwrap();
        assert_eq!(
            (c.head_dim, c.sub_norms, c.scale_convention),
            (256, false, ScaleConvention::Divide)
        );
        assert_eq!(c.quantization, QuantMode::Offline);
        let j = with(falcon, |m| {
            m["quantization_config"]["offline_quantization"] = false.into();
        });
        assert_eq!(
            ModelConfig::from_hf_json("config.json", &j)
                .unwrap()
                .quantization,
            QuantMode::Online
        );
    }

    #[test]
    fn rejects_bad_configs() {
        let bad = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| err(&with(B158_2B4T, f));
        assert!(
            bad(&|m| m["quantization_config"]["linear_class"] = "fancy".into())
                .contains("linear_class")
        );
        assert!(bad(&|m| m["num_key_value_heads"] = 3.into()).contains("num_key_value_heads"));
        assert!(bad(&|m| m["hidden_size"] = 0.into()).contains("hidden_size"));
        assert!(bad(&|m| m["vocab_size"] = (1u64 << 40).into()).contains("vocab_size"));
        assert!(bad(&|m| m["num_hidden_layers"] = (-1).into()).contains("num_hidden_layers"));
        assert!(bad(&|m| {
            m.remove("intermediate_size");
        })
        .contains("intermediate_size"));
        assert!(bad(&|m| m["hidden_act"] = "gelu".into()).contains("hidden_act"));
        assert!(bad(&|m| m["model_type"] = "gpt2".into()).contains("model_type"));
        assert!(bad(&|m| m["rms_norm_eps"] = "x".into()).contains("rms_norm_eps"));
        assert!(bad(&|m| {
            m.insert(
                "rope_scaling".into(),
                serde_json::json!({"rope_type": "llama3"}),
            );
        })
        .contains("rope_scaling"));
        assert!(err("{").contains("JSON"));
    }

    pub(crate) fn gguf_meta(w: &mut Writer, arch: &str, vocab: usize) {
        let tokens: Vec<String> = (0..vocab).map(|i| format!("t{i}")).collect();
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        w.kv_str("general.architecture", arch)
            .kv_u32(&format!("{arch}.embedding_length"), 128)
            .kv_u32(&format!("{arch}.block_count"), 2)
            .kv_u32(&format!("{arch}.attention.head_count"), 4)
            .kv_u32(&format!("{arch}.attention.head_count_kv"), 2)
            .kv_u32(&format!("{arch}.feed_forward_length"), 256)
            .kv_f32(&format!("{arch}.rope.freq_base"), 500000.0)
            .kv_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5)
            .kv_u32(&format!("{arch}.context_length"), 256)
            .kv_u32("tokenizer.ggml.bos_token_id", 1)
            .kv_u32("tokenizer.ggml.eos_token_id", 2)
            .kv_strs("tokenizer.ggml.tokens", &tokens);
    }

    #[test]
    fn from_gguf_metadata() {
        let mut w = Writer::default();
        gguf_meta(&mut w, "bitnet-b1.58", 10);
        let g = complete_now(
            "m.gguf",
            gguf::read(&BytesSource::new("m.gguf", w.finish())),
        )
        .unwrap();
        let c = ModelConfig::from_gguf("m.gguf", &g).unwrap();
        assert_eq!(
            (
                c.hidden_size,
                c.num_layers,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim
            ),
            (128, 2, 4, 2, 32)
        );
        assert_eq!(
            (
                c.vocab_size,
                c.activation,
                c.sub_norms,
                c.tie_word_embeddings
            ),
            (10, Activation::Relu2, true, true)
        );
        assert_eq!((c.bos_token_id, c.eos_token_ids), (Some(1), vec![2]));

        let mut w = Writer::default();
        gguf_meta(&mut w, "falcon", 10);
        let g = complete_now(
            "m.gguf",
            gguf::read(&BytesSource::new("m.gguf", w.finish())),
        )
        .unwrap();
        let e = ModelConfig::from_gguf("m.gguf", &g)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m.gguf") && e.contains("general.architecture"),
            "{e}"
        );

        let mut w = Writer::default();
        gguf_meta(&mut w, "llama", 10);
        w.kv_u32("llama.attention.key_length", 0);
        let g = complete_now(
            "m.gguf",
            gguf::read(&BytesSource::new("m.gguf", w.finish())),
        )
        .unwrap();
        let e = ModelConfig::from_gguf("m.gguf", &g)
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.gguf") && e.contains("head_dim"), "{e}");
    }

    #[test]
    fn linear_rope_scaling_divides_positions() {
        let config = |edit: &dyn Fn(&mut Writer)| {
            let mut w = Writer::default();
            gguf_meta(&mut w, "bitnet-b1.58", 10);
            edit(&mut w);
            let g = complete_now(
                "m.gguf",
                gguf::read(&BytesSource::new("m.gguf", w.finish())),
            )
            .unwrap();
            ModelConfig::from_gguf("m.gguf", &g)
        };
        let plain = config(&|_| {}).unwrap();
        // What llama.cpp's converter writes for BitNet: linear, factor 1.
        let converted = config(&|w| {
            w.kv_str("bitnet-b1.58.rope.scaling.type", "linear")
                .kv_f32("bitnet-b1.58.rope.scaling.factor", 1.0);
        })
        .unwrap();
        assert_eq!(converted, plain);
        assert_eq!(converted.rope_inv_freq(), plain.rope_inv_freq());
        let stretched = config(&|w| {
            w.kv_str("bitnet-b1.58.rope.scaling.type", "linear")
                .kv_f32("bitnet-b1.58.rope.scaling.factor", 4.0);
        })
        .unwrap();
        let halved: Vec<f32> = plain.rope_inv_freq().iter().map(|f| f / 4.0).collect();
        assert_eq!(stretched.rope_inv_freq(), halved);
        let e = config(&|w| {
            w.kv_str("bitnet-b1.58.rope.scaling.type", "yarn");
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("rope.scaling.type") && e.contains("yarn"), "{e}");
        let e = config(&|w| {
            w.kv_str("bitnet-b1.58.rope.scaling.type", "linear")
                .kv_f32("bitnet-b1.58.rope.scaling.factor", f32::NAN);
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("rope_scaling.factor"), "{e}");

        let hf = ModelConfig::from_hf_json(
            "config.json",
            &with(B158_2B4T, |m| {
                m.insert(
                    "rope_scaling".into(),
                    serde_json::json!({"type": "linear", "factor": 2.0}),
                );
            }),
        )
        .unwrap();
        assert_eq!(hf.rope_linear_factor, 2.0);
        let e = err(&with(B158_2B4T, |m| {
            m.insert("rope_scaling".into(), serde_json::json!({"type": "linear"}));
        }));
        assert!(e.contains("rope_scaling.factor"), "{e}");
    }
}

//! Finds every tensor the forward pass needs in a checkpoint's headers, in the format's own names (HF
//! safetensors: `model.layers.N.self_attn.q_proj.weight`, scales beside; GGUF: `blk.N.attn_q.weight`,
//! llama's permuted q/k rows), and checks each against the config: present, dtype and shape exactly
//! as the config implies, scales finite and positive.

use std::collections::HashMap;

use super::config::{ModelConfig, QuantMode};
use super::gguf::GgmlType;
use super::safetensors::Dtype;
use super::source::{read_range, TensorSource};
use super::tensors::{FloatRef, Layer, NormWeight, Projection, WeightData, WeightRef};
use crate::layout::{FloatDType, TernaryLayout};
use crate::{Error, Result};

/// A tensor as found in a header, before checking it against the config.
pub(crate) struct Entry {
    pub(crate) source: usize,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) kind: Kind,
}

pub(crate) enum Kind {
    St { dtype: Dtype, shape: Vec<usize> },
    Gguf { ty: GgmlType, dims: Vec<u64> },
}

impl Kind {
    pub(crate) fn describe(&self) -> String {
        match self {
            Kind::St { dtype, shape } => format!("{dtype:?} {shape:?}"),
            Kind::Gguf { ty, dims } => format!("{} ggml dims {dims:?}", ty.name()),
        }
    }
}

/// How a format names the model's tensors.
#[derive(Clone, Copy)]
pub(crate) enum Naming {
    Hf,
    /// `permuted`: q/k rows in llama.cpp's interleaved-RoPE order (GGUF `llama`).
    Gguf {
        permuted: bool,
    },
}

/// Every tensor the forward pass needs, checked.
pub(crate) struct ModelTensors {
    pub(crate) layers: Vec<Layer>,
    pub(crate) embedding: FloatRef,
    pub(crate) final_norm: FloatRef,
    pub(crate) lm_head: FloatRef,
}

/// Looks tensors up by name and checks them against the config.
pub(crate) struct Resolver<'a> {
    /// Names the checkpoint when a tensor is missing (the file or the shard index).
    pub(crate) name: &'a str,
    pub(crate) sources: &'a [Box<dyn TensorSource>],
    pub(crate) entries: HashMap<String, Entry>,
    pub(crate) config: &'a ModelConfig,
}

impl Resolver<'_> {
    /// Resolves and checks every tensor of the model, in the format's names.
    pub(crate) async fn model_tensors(&self, naming: Naming) -> Result<ModelTensors> {
        let config = self.config;
        let (embedding, final_norm, head) = match naming {
            Naming::Hf => (
                "model.embed_tokens.weight",
                "model.norm.weight",
                "lm_head.weight",
            ),
            Naming::Gguf { .. } => ("token_embd.weight", "output_norm.weight", "output.weight"),
        };
        let (h, vocab) = (config.hidden_size, config.vocab_size);
        let embedding = self.float(embedding, vocab, h)?;
        let final_norm = self.float(final_norm, 1, h)?;
        let lm_head = if config.tie_word_embeddings {
            embedding.clone()
        } else {
            self.float(head, vocab, h)?
        };
        let mut layers = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let mut projections = Vec::with_capacity(Projection::ALL.len());
            for &p in &Projection::ALL {
                projections.push(match naming {
                    Naming::Hf => self.hf_projection(i, p).await?,
                    Naming::Gguf { permuted } => self.gguf_projection(i, p, permuted).await?,
                });
            }
            let norms = NormWeight::ALL
                .iter()
                .map(|&n| {
                    if n.is_sub() && !config.sub_norms {
                        return Ok(None);
                    }
                    self.norm(i, n, naming).map(Some)
                })
                .collect::<Result<_>>()?;
            layers.push(Layer { projections, norms });
        }
        Ok(ModelTensors {
            layers,
            embedding,
            final_norm,
            lm_head,
        })
    }

    /// A layer's norm gain; HF files spell some of them two ways.
    pub(crate) fn norm(&self, layer: usize, n: NormWeight, naming: Naming) -> Result<FloatRef> {
        let width = n.width(self.config);
        match naming {
            Naming::Hf => {
                let names: Vec<String> = n
                    .hf_names()
                    .iter()
                    .map(|s| format!("model.layers.{layer}.{s}.weight"))
                    .collect();
                let found = names
                    .iter()
                    .find(|s| self.entries.contains_key(*s))
                    .unwrap_or(&names[0]);
                self.float(found, 1, width)
            }
            Naming::Gguf { .. } => {
                self.float(&format!("blk.{layer}.{}.weight", n.gguf_name()), 1, width)
            }
        }
    }

    pub(crate) fn get(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| Error::format(self.name, name, "missing tensor"))
    }

    pub(crate) fn file(&self, e: &Entry) -> String {
        self.sources[e.source].name().to_string()
    }

    pub(crate) fn mismatch(&self, e: &Entry, name: &str, want: &str) -> Error {
        Error::format(
            self.file(e),
            name,
            format!("expected {want}, found {}", e.kind.describe()),
        )
    }

    /// A float tensor of exactly `rows` × `cols` (rows 1: a vector).
    pub(crate) fn float(&self, name: &str, rows: usize, cols: usize) -> Result<FloatRef> {
        let e = self.get(name)?;
        let want = if rows == 1 {
            format!("a float vector [{cols}]")
        } else {
            format!("a float [{rows}, {cols}]")
        };
        let dtype = match &e.kind {
            Kind::St { dtype, shape } if shape_is(shape, rows, cols) => st_float(*dtype),
            Kind::Gguf { ty, dims } if dims_are(dims, rows, cols) => gguf_float(*ty),
            _ => None,
        };
        let dtype = dtype.ok_or_else(|| self.mismatch(e, name, &want))?;
        Ok(FloatRef {
            source: e.source,
            offset: e.offset,
            len: e.len,
            dtype,
            rows,
            cols,
            file: self.file(e),
            name: name.into(),
        })
    }

    pub(crate) async fn hf_projection(&self, layer: usize, p: Projection) -> Result<WeightRef> {
        let (rows, cols) = p.shape(self.config);
        let name = format!("model.layers.{layer}.{}.weight", p.hf_name());
        let e = self.get(&name)?;
        let data = match self.config.quantization {
            QuantMode::Offline => {
                if rows % 4 != 0 {
                    return Err(Error::format(
                        self.file(e),
                        &name,
                        format!("{rows} output rows do not pack by 4"),
                    ));
                }
                match &e.kind {
                    Kind::St {
                        dtype: Dtype::U8,
                        shape,
                    } if shape == &[rows / 4, cols] => {}
                    _ => {
                        return Err(self.mismatch(
                            e,
                            &name,
                            &format!("packed ternary U8 [{}, {cols}]", rows / 4),
                        ))
                    }
                }
                let scale_name = format!("model.layers.{layer}.{}.weight_scale", p.hf_name());
                WeightData::Ternary {
                    layout: TernaryLayout::HfPacked,
                    scale: Some(self.hf_scale(&scale_name).await?),
                }
            }
            QuantMode::Online => match &e.kind {
                Kind::St { dtype, shape }
                    if shape == &[rows, cols] && st_float(*dtype).is_some() =>
                {
                    WeightData::Float {
                        dtype: st_float(*dtype).expect("checked"),
                    }
                }
                _ => {
                    return Err(self.mismatch(
                        e,
                        &name,
                        &format!("float latent weights [{rows}, {cols}] (online quantization)"),
                    ))
                }
            },
        };
        Ok(WeightRef {
            source: e.source,
            offset: e.offset,
            len: e.len,
            rows,
            cols,
            data,
            rope_permuted: false,
            file: self.file(e),
            name,
        })
    }

    /// A per-tensor `weight_scale` of one element.
    pub(crate) async fn hf_scale(&self, name: &str) -> Result<f32> {
        let e = self.get(name)?;
        let dtype = match &e.kind {
            Kind::St { dtype, shape } if shape.iter().all(|&d| d == 1) => st_float(*dtype),
            _ => None,
        };
        let dtype = dtype.ok_or_else(|| self.mismatch(e, name, "a one-element float scale"))?;
        let bytes = read_range(self.sources[e.source].as_ref(), e.offset, e.len).await?;
        check_scale(&self.file(e), name, dtype.decode(&bytes)[0])
    }

    pub(crate) async fn gguf_projection(
        &self,
        layer: usize,
        p: Projection,
        permuted: bool,
    ) -> Result<WeightRef> {
        let (rows, cols) = p.shape(self.config);
        let name = format!("blk.{layer}.{}.weight", p.gguf_name());
        let scale_name = format!("blk.{layer}.{}.scale", p.gguf_name());
        if self.entries.contains_key(&scale_name) {
            return Err(Error::format(
                self.name,
                scale_name,
                "separate scale tensors are not supported",
            ));
        }
        let e = self.get(&name)?;
        let ty = match &e.kind {
            Kind::Gguf { ty, dims } if dims_are(dims, rows, cols) => ty,
            _ => return Err(self.mismatch(e, &name, &format!("ggml dims [{cols}, {rows}]"))),
        };
        let data = match ty {
            GgmlType::I2S => {
                if cols % 128 != 0 {
                    return Err(Error::format(
                        self.file(e),
                        &name,
                        format!("I2_S rows of {cols} are not whole 128-value blocks"),
                    ));
                }
                let codes = rows as u64 * cols as u64 / 4;
                let b = read_range(self.sources[e.source].as_ref(), e.offset + codes, 4).await?;
                let scale = f32::from_le_bytes(b.try_into().expect("4 bytes"));
                WeightData::Ternary {
                    layout: TernaryLayout::I2S,
                    scale: Some(check_scale(&self.file(e), &name, scale)?),
                }
            }
            GgmlType::Tq2_0 => WeightData::Ternary {
                layout: TernaryLayout::Tq2_0,
                scale: None,
            },
            GgmlType::Tq1_0 => WeightData::Ternary {
                layout: TernaryLayout::Tq1_0,
                scale: None,
            },
            t => {
                return Err(Error::format(
                    self.file(e),
                    &name,
                    format!(
                        "{} projection weights are not supported in GGUF; use I2_S, TQ1_0 or TQ2_0",
                        t.name()
                    ),
                ))
            }
        };
        Ok(WeightRef {
            source: e.source,
            offset: e.offset,
            len: e.len,
            rows,
            cols,
            data,
            rope_permuted: permuted && matches!(p, Projection::Q | Projection::K),
            file: self.file(e),
            name,
        })
    }
}

pub(crate) fn shape_is(shape: &[usize], rows: usize, cols: usize) -> bool {
    if rows == 1 {
        shape == [cols]
    } else {
        shape == [rows, cols]
    }
}

pub(crate) fn dims_are(dims: &[u64], rows: usize, cols: usize) -> bool {
    if rows == 1 {
        dims == [cols as u64]
    } else {
        dims == [cols as u64, rows as u64]
    }
}

pub(crate) fn st_float(d: Dtype) -> Option<FloatDType> {
    match d {
        Dtype::F32 => Some(FloatDType::F32),
        Dtype::F16 => Some(FloatDType::F16),
        Dtype::BF16 => Some(FloatDType::BF16),
        _ => None,
    }
}

pub(crate) fn gguf_float(t: GgmlType) -> Option<FloatDType> {
    match t {
        GgmlType::F32 => Some(FloatDType::F32),
        GgmlType::F16 => Some(FloatDType::F16),
        GgmlType::BF16 => Some(FloatDType::BF16),
        _ => None,
    }
}

pub(crate) fn check_scale(file: &str, name: &str, s: f32) -> Result<f32> {
    if s.is_finite() && s > 0.0 {
        Ok(s)
    } else {
        Err(Error::format(
            file,
            name,
            format!("scale {s} is not finite and positive"),
        ))
    }
}

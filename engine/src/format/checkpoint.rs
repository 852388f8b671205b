//! The loader's single result: a checkpoint (HF safetensors directory or GGUF file) with its config,
//! sources, side files and checked references to every tensor the forward pass needs. Every tensor is
//! checked at open — present, dtype and shape exactly as the config implies, scales finite and
//! positive — so later stages never meet a malformed tensor. Which files make a model:
//! `discovery`; tensor names and checks per format: `resolve`; the reference types: `tensors`.

use super::config::ModelConfig;
use super::gguf::{GgufFile, MetaValue};
use super::resolve::{Entry, Kind, ModelTensors, Naming, Resolver};
use super::safetensors as st;
use super::source::{read_range, TensorSource};
use super::tensors::Layer;
pub use super::tensors::{check_finite, FloatRef, NormWeight, Projection, WeightData, WeightRef};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};

/// An opened, fully checked checkpoint: the config, the files its tensors live in, the tokenizer
/// and chat-template side files, and a reference to every tensor of the forward pass.
pub struct Checkpoint {
    /// The model description, from `config.json` or GGUF metadata.
    pub config: ModelConfig,
    /// The files holding tensor data; tensor references index into this.
    pub sources: Vec<Box<dyn TensorSource>>,
    /// `tokenizer.json` of an HF directory, if present (set by discovery; `None` for GGUF).
    pub tokenizer_json: Option<String>,
    /// `tokenizer_config.json` of an HF directory, if present (set by discovery).
    pub tokenizer_config_json: Option<String>,
    /// Jinja chat template source: GGUF `tokenizer.chat_template`, else `tokenizer_config.json`'s
    /// `chat_template`, else `chat_template.jinja`; `None` when the checkpoint ships none.
    pub chat_template: Option<String>,
    /// All GGUF metadata (the tokenizer is built from it); None for HF checkpoints.
    pub gguf_metadata: Option<BTreeMap<String, MetaValue>>,
    layers: Vec<Layer>,
    embedding: FloatRef,
    final_norm: FloatRef,
    lm_head: FloatRef,
}

/// The chat template of a `tokenizer_config.json`: a string, or a list of {name, template} where the
/// one named "default" wins.
pub fn chat_template_from_tokenizer_config(file: &str, json: &str) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::config(file, "(root)", format!("invalid JSON: {e}")))?;
    match v.get("chat_template") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named = |n: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(|x| x.as_str()) == Some(n))
            };
            let t = named("default")
                .or(list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str());
            t.map(|t| Some(t.to_string())).ok_or_else(|| {
                Error::config(
                    file,
                    "chat_template",
                    "list without a usable {name, template} entry",
                )
            })
        }
        Some(_) => Err(Error::config(
            file,
            "chat_template",
            "neither a string nor a list",
        )),
    }
}

impl Checkpoint {
    /// Resolves a safetensors checkpoint: `headers[i]` is the parsed header of `sources[i]`; `name`
    /// (the file or the shard index) is named when a tensor is missing. Reads the per-tensor scales.
    pub async fn from_safetensors(
        name: &str,
        mut config: ModelConfig,
        sources: Vec<Box<dyn TensorSource>>,
        headers: Vec<st::Header>,
    ) -> Result<Self> {
        if sources.len() != headers.len() {
            return Err(Error::Invalid(format!(
                "{} sources but {} headers",
                sources.len(),
                headers.len()
            )));
        }
        let mut entries = HashMap::new();
        for (source, h) in headers.into_iter().enumerate() {
            for t in h.tensors {
                let entry = Entry {
                    source,
                    offset: t.offset,
                    len: t.len,
                    kind: Kind::St {
                        dtype: t.dtype,
                        shape: t.shape,
                    },
                };
                if entries.insert(t.name.clone(), entry).is_some() {
                    return Err(Error::format(
                        sources[source].name(),
                        &t.name,
                        "tensor appears in more than one shard",
                    ));
                }
            }
        }
        // Tie when the config says so or when there is no separate head (1bitLLM).
        config.tie_word_embeddings |= !entries.contains_key("lm_head.weight");
        let r = Resolver {
            name,
            sources: &sources,
            entries,
            config: &config,
        };
        let tensors = r.model_tensors(Naming::Hf).await?;
        Ok(Self::assemble(config, sources, tensors, None, None))
    }

    /// Resolves a GGUF checkpoint whose header `g` was parsed from `source`. Reads the I2_S scales.
    pub async fn from_gguf(source: Box<dyn TensorSource>, g: GgufFile) -> Result<Self> {
        let file = source.name().to_string();
        let config = ModelConfig::from_gguf(&file, &g)?;
        let permuted = g.architecture() == Some("llama");
        let entries = g
            .tensors
            .into_iter()
            .map(|t| {
                (
                    t.name,
                    Entry {
                        source: 0,
                        offset: t.offset,
                        len: t.len,
                        kind: Kind::Gguf {
                            ty: t.ggml_type,
                            dims: t.dims,
                        },
                    },
                )
            })
            .collect();
        let sources = vec![source];
        let r = Resolver {
            name: &file,
            sources: &sources,
            entries,
            config: &config,
        };
        let tensors = r.model_tensors(Naming::Gguf { permuted }).await?;
        let chat_template = g
            .metadata
            .get("tokenizer.chat_template")
            .and_then(MetaValue::as_str)
            .map(str::to_string);
        Ok(Self::assemble(
            config,
            sources,
            tensors,
            chat_template,
            Some(g.metadata),
        ))
    }

    fn assemble(
        config: ModelConfig,
        sources: Vec<Box<dyn TensorSource>>,
        t: ModelTensors,
        chat_template: Option<String>,
        gguf_metadata: Option<BTreeMap<String, MetaValue>>,
    ) -> Self {
        Self {
            config,
            sources,
            tokenizer_json: None,
            tokenizer_config_json: None,
            chat_template,
            gguf_metadata,
            layers: t.layers,
            embedding: t.embedding,
            final_norm: t.final_norm,
            lm_head: t.lm_head,
        }
    }

    fn layer(&self, layer: usize) -> Result<&Layer> {
        self.layers.get(layer).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {layer} out of range (the model has {})",
                self.layers.len()
            ))
        })
    }

    /// Projection `p` of `layer`; an out-of-range layer is [`Error::Invalid`].
    pub fn projection(&self, layer: usize, p: Projection) -> Result<WeightRef> {
        let i = Projection::ALL
            .iter()
            .position(|&x| x == p)
            .expect("ALL lists every projection");
        Ok(self.layer(layer)?.projections[i].clone())
    }

    /// A norm gain; sub-norms are an error for models without them.
    pub fn norm(&self, layer: usize, n: NormWeight) -> Result<FloatRef> {
        let i = NormWeight::ALL
            .iter()
            .position(|&x| x == n)
            .expect("ALL lists every norm");
        self.layer(layer)?.norms[i]
            .clone()
            .ok_or_else(|| Error::Invalid(format!("this model has no {n:?} norm")))
    }

    /// `[hidden]`: the gain of the RMSNorm after the last layer.
    pub fn final_norm(&self) -> Result<FloatRef> {
        Ok(self.final_norm.clone())
    }

    /// [vocab, hidden].
    pub fn embedding(&self) -> Result<FloatRef> {
        Ok(self.embedding.clone())
    }

    /// [vocab, hidden]; the embedding when tied.
    pub fn lm_head(&self) -> Result<FloatRef> {
        Ok(self.lm_head.clone())
    }

    /// Reads a (small) float tensor as f32.
    pub async fn read_f32_vector(&self, r: &FloatRef) -> Result<Vec<f32>> {
        let src = self
            .sources
            .get(r.source)
            .ok_or_else(|| Error::Invalid(format!("no source {}", r.source)))?;
        if r.rows as u64 * r.cols as u64 * r.dtype.bytes() as u64 != r.len {
            return Err(Error::format(
                &r.file,
                &r.name,
                "byte length does not match the shape",
            ));
        }
        let bytes = read_range(src.as_ref(), r.offset, r.len).await?;
        check_finite(r, 0, &bytes)?;
        Ok(r.dtype.decode(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::config::tests::{gguf_meta, B158_2B4T};
    use crate::format::gguf::{self, tests::Writer};
    use crate::format::safetensors::tests::write as write_st;
    use crate::format::source::{complete_now, BytesSource};
    use crate::layout::{FloatDType, TernaryLayout};

    fn read_vector(c: &Checkpoint, r: &FloatRef) -> Vec<f32> {
        complete_now(&r.name, c.read_f32_vector(r)).unwrap()
    }

    /// A tiny 2B-4T-style config: hidden 8, 2 heads (1 kv) of 4, intermediate 16, vocab 10, 1 layer.
    fn tiny_config(edit: impl FnOnce(&mut serde_json::Value)) -> ModelConfig {
        let mut v: serde_json::Value = serde_json::from_str(B158_2B4T).unwrap();
        for (k, n) in [
            ("hidden_size", 8),
            ("num_hidden_layers", 1),
            ("num_attention_heads", 2),
            ("num_key_value_heads", 1),
            ("intermediate_size", 16),
            ("vocab_size", 10),
            ("bos_token_id", 1),
            ("eos_token_id", 2),
        ] {
            v[k] = n.into();
        }
        edit(&mut v);
        ModelConfig::from_hf_json("config.json", &v.to_string()).unwrap()
    }

    type StTensor = (String, &'static str, Vec<usize>, Vec<u8>);

    fn bf16(xs: &[f32]) -> Vec<u8> {
        xs.iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect()
    }

    /// Every tensor of `tiny_config`, packed (offline) or as BF16 latents (online).
    fn tiny_tensors(offline: bool) -> Vec<StTensor> {
        let shapes = [
            ("self_attn.q_proj", 8, 8),
            ("self_attn.k_proj", 4, 8),
            ("self_attn.v_proj", 4, 8),
            ("self_attn.o_proj", 8, 8),
            ("mlp.gate_proj", 16, 8),
            ("mlp.up_proj", 16, 8),
            ("mlp.down_proj", 8, 16),
        ];
        let p = "model.layers.0.";
        let mut t: Vec<StTensor> = Vec::new();
        for (name, out, inp) in shapes {
            if offline {
                t.push((
                    format!("{p}{name}.weight"),
                    "U8",
                    vec![out / 4, inp],
                    vec![0x55; out / 4 * inp],
                ));
                t.push((
                    format!("{p}{name}.weight_scale"),
                    "BF16",
                    vec![1],
                    bf16(&[0.5]),
                ));
            } else {
                t.push((
                    format!("{p}{name}.weight"),
                    "BF16",
                    vec![out, inp],
                    bf16(&vec![0.25; out * inp]),
                ));
            }
        }
        for (name, n) in [
            ("input_layernorm", 8),
            ("post_attention_layernorm", 8),
            ("self_attn.attn_sub_norm", 8),
            ("mlp.ffn_sub_norm", 16),
        ] {
            t.push((
                format!("{p}{name}.weight"),
                "BF16",
                vec![n],
                bf16(&vec![1.5; n]),
            ));
        }
        t.push((
            "model.norm.weight".into(),
            "F32",
            vec![8],
            [2.0f32; 8].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
        t.push((
            "model.embed_tokens.weight".into(),
            "BF16",
            vec![10, 8],
            bf16(&[0.0; 80]),
        ));
        t
    }

    fn st_checkpoint(config: ModelConfig, tensors: &[StTensor]) -> Result<Checkpoint> {
        let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
            .collect();
        let src = BytesSource::new("model.safetensors", write_st(&refs));
        complete_now("model.safetensors", async {
            let header = st::read_header(&src).await?;
            Checkpoint::from_safetensors(
                "model.safetensors",
                config,
                vec![Box::new(src)],
                vec![header],
            )
            .await
        })
    }

    fn st_err(config: ModelConfig, tensors: &[StTensor], want: &[&str]) {
        let e = st_checkpoint(config, tensors)
            .err()
            .expect("must fail")
            .to_string();
        assert!(e.contains("model.safetensors"), "{e}");
        for w in want {
            assert!(e.contains(w), "{e} lacks {w}");
        }
    }

    /// Resolution over a source whose reads wait (HTTP Range reads in the browser) reads the header
    /// (its length, then its JSON) and the seven one-element scales, never a weight.
    #[test]
    fn resolves_over_a_waiting_source() {
        use crate::format::source::tests::WaitingSource;
        use std::sync::atomic::Ordering;
        let tensors = tiny_tensors(true);
        let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
            .collect();
        let bytes = write_st(&refs);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        let src = WaitingSource::new("model.safetensors", bytes);
        let (reads, largest_read) = (src.reads.clone(), src.largest_read.clone());
        let config = tiny_config(|_| {});
        let c = pollster::block_on(async {
            let header = st::read_header(&src).await?;
            let src: Box<dyn TensorSource> = Box::new(src);
            Checkpoint::from_safetensors("model.safetensors", config, vec![src], vec![header]).await
        })
        .unwrap();
        assert_eq!(reads.load(Ordering::Relaxed), 2 + 7);
        assert_eq!(largest_read.load(Ordering::Relaxed), header_len);
        let want = st_checkpoint(tiny_config(|_| {}), &tensors).unwrap();
        for p in Projection::ALL {
            assert_eq!(c.projection(0, p).unwrap(), want.projection(0, p).unwrap());
        }
        let norm = c.norm(0, NormWeight::FfnSub).unwrap();
        assert_eq!(
            pollster::block_on(c.read_f32_vector(&norm)).unwrap(),
            vec![1.5; 16]
        );
        assert!(complete_now("norm", c.read_f32_vector(&norm))
            .unwrap_err()
            .to_string()
            .contains("async"));
    }

    #[test]
    fn hf_packed_checkpoint() {
        let c = st_checkpoint(tiny_config(|_| {}), &tiny_tensors(true)).unwrap();
        let q = c.projection(0, Projection::Q).unwrap();
        assert_eq!((q.rows, q.cols, q.len), (8, 8, 16));
        assert_eq!(
            q.data,
            WeightData::Ternary {
                layout: TernaryLayout::HfPacked,
                scale: Some(0.5)
            }
        );
        let down = c.projection(0, Projection::Down).unwrap();
        assert_eq!((down.rows, down.cols), (8, 16));
        assert_eq!(
            read_vector(&c, &c.norm(0, NormWeight::FfnSub).unwrap()),
            vec![1.5; 16]
        );
        assert_eq!(read_vector(&c, &c.final_norm().unwrap()), vec![2.0; 8]);
        assert_eq!(c.lm_head().unwrap(), c.embedding().unwrap());
        assert!(c.projection(1, Projection::Q).is_err());
    }

    #[test]
    fn hf_online_and_onebit_llm_names() {
        let cfg = tiny_config(|v| v["quantization_config"]["quantization_mode"] = "online".into());
        let mut t = tiny_tensors(false);
        for (name, ..) in t.iter_mut() {
            *name = name
                .replace("attn_sub_norm", "inner_attn_ln")
                .replace("ffn_sub_norm", "ffn_layernorm");
        }
        t.push(("lm_head.weight".into(), "F16", vec![10, 8], vec![0; 160]));
        let c = st_checkpoint(cfg.clone(), &t).unwrap();
        assert_eq!(
            c.projection(0, Projection::Up).unwrap().data,
            WeightData::Float {
                dtype: FloatDType::BF16
            }
        );
        assert!(c
            .norm(0, NormWeight::AttnSub)
            .unwrap()
            .name
            .contains("inner_attn_ln"));
        // tie_word_embeddings is true in the base config; untied, the head is read.
        let mut untied = cfg;
        untied.tie_word_embeddings = false;
        let c = st_checkpoint(untied, &t).unwrap();
        assert_eq!(
            (
                c.lm_head().unwrap().name.as_str(),
                c.lm_head().unwrap().dtype
            ),
            ("lm_head.weight", FloatDType::F16)
        );
    }

    #[test]
    fn hf_rejects_bad_tensors() {
        let cfg = || tiny_config(|_| {});
        let edit = |name: &str, f: &dyn Fn(&mut StTensor)| {
            let mut t = tiny_tensors(true);
            t.iter_mut().filter(|x| x.0 == name).for_each(f);
            t
        };
        let q = "model.layers.0.self_attn.q_proj.weight";
        let qs = "model.layers.0.self_attn.q_proj.weight_scale";
        let mut t = tiny_tensors(true);
        t.retain(|x| x.0 != q);
        st_err(cfg(), &t, &[q, "missing"]);
        st_err(cfg(), &edit(qs, &|x| x.3 = bf16(&[f32::NAN])), &[qs, "NaN"]);
        st_err(
            cfg(),
            &edit(qs, &|x| x.3 = bf16(&[f32::INFINITY])),
            &[qs, "inf"],
        );
        st_err(cfg(), &edit(qs, &|x| x.3 = bf16(&[0.0])), &[qs, "positive"]);
        st_err(cfg(), &edit(q, &|x| x.2 = vec![4, 4]), &[q, "U8 [2, 8]"]);
        st_err(cfg(), &edit(q, &|x| x.1 = "I8"), &[q, "I8"]);
        let emb = "model.embed_tokens.weight";
        st_err(
            cfg(),
            &edit(emb, &|x| (x.2, x.3) = (vec![9, 8], bf16(&[0.0; 72]))),
            &[emb, "[10, 8]"],
        );
        // Online config meets packed weights.
        let online =
            tiny_config(|v| v["quantization_config"]["quantization_mode"] = "online".into());
        st_err(online, &tiny_tensors(true), &[q, "online"]);
    }

    fn i2s_blob(rows: usize, cols: usize, scale: f32) -> Vec<u8> {
        let mut b = vec![0xAA; rows * cols / 4];
        b.extend_from_slice(&scale.to_le_bytes());
        b.resize(rows * cols / 4 + 32, 0);
        b
    }

    /// A GGUF matching `gguf_meta` (hidden 128, 4 heads of 32, 2 kv, ffn 256, vocab 10, 2 layers).
    fn gguf_file(arch: &str, scale: f32, vocab_rows: u64) -> Vec<u8> {
        let mut w = Writer::default();
        gguf_meta(&mut w, arch, 10);
        w.kv_str("tokenizer.chat_template", "{{ messages }}");
        let f32s = |n: usize| vec![0u8; n * 4];
        w.tensor(
            "token_embd.weight",
            &[128, vocab_rows],
            1,
            &vec![0; 128 * vocab_rows as usize * 2],
        );
        w.tensor("output_norm.weight", &[128], 0, &f32s(128));
        for i in 0..2 {
            for (p, inp, out) in [
                ("attn_q", 128, 128),
                ("attn_k", 128, 64),
                ("attn_v", 128, 64),
                ("attn_output", 128, 128),
                ("ffn_gate", 128, 256),
                ("ffn_up", 128, 256),
            ] {
                w.tensor(
                    &format!("blk.{i}.{p}.weight"),
                    &[inp, out],
                    36,
                    &i2s_blob(out as usize, inp as usize, scale),
                );
            }
            w.tensor(
                &format!("blk.{i}.ffn_down.weight"),
                &[256, 128],
                35,
                &[0; 128 * 66],
            );
            for (n, width) in [
                ("attn_norm", 128),
                ("ffn_norm", 128),
                ("attn_sub_norm", 128),
                ("ffn_sub_norm", 256),
            ] {
                w.tensor(
                    &format!("blk.{i}.{n}.weight"),
                    &[width],
                    0,
                    &f32s(width as usize),
                );
            }
        }
        w.finish()
    }

    fn gguf_checkpoint(bytes: Vec<u8>) -> Result<Checkpoint> {
        let src = BytesSource::new("m.gguf", bytes);
        complete_now("m.gguf", async {
            let g = gguf::read(&src).await?;
            Checkpoint::from_gguf(Box::new(src), g).await
        })
    }

    #[test]
    fn gguf_checkpoint_resolves() {
        let c = gguf_checkpoint(gguf_file("bitnet-b1.58", 1.25, 10)).unwrap();
        let k = c.projection(1, Projection::K).unwrap();
        assert_eq!(
            (k.rows, k.cols, k.len, k.rope_permuted),
            (64, 128, 64 * 128 / 4 + 32, false)
        );
        assert_eq!(
            k.data,
            WeightData::Ternary {
                layout: TernaryLayout::I2S,
                scale: Some(1.25)
            }
        );
        let d = c.projection(0, Projection::Down).unwrap();
        assert_eq!(
            (d.rows, d.cols, d.data.clone()),
            (
                128,
                256,
                WeightData::Ternary {
                    layout: TernaryLayout::Tq2_0,
                    scale: None
                }
            )
        );
        let e = c.embedding().unwrap();
        assert_eq!((e.rows, e.cols, e.dtype), (10, 128, FloatDType::F16));
        assert_eq!(c.lm_head().unwrap(), e);
        assert_eq!(c.chat_template.as_deref(), Some("{{ messages }}"));
        assert!(c
            .gguf_metadata
            .as_ref()
            .unwrap()
            .contains_key("tokenizer.ggml.tokens"));
        assert_eq!(
            read_vector(&c, &c.norm(1, NormWeight::FfnSub).unwrap()).len(),
            256
        );

        // gguf_file writes sub-norms too; a llama model simply does not use them.
        let c = gguf_checkpoint(gguf_file("llama", 1.0, 10)).unwrap();
        assert!(c.projection(0, Projection::Q).unwrap().rope_permuted);
        assert!(!c.projection(0, Projection::V).unwrap().rope_permuted);
        assert!(c.norm(0, NormWeight::AttnSub).is_err());
    }

    #[test]
    fn gguf_rejects_bad_tensors() {
        let err = |bytes: Vec<u8>, want: &[&str]| {
            let e = gguf_checkpoint(bytes).err().expect("must fail").to_string();
            assert!(e.contains("m.gguf"), "{e}");
            for w in want {
                assert!(e.contains(w), "{e} lacks {w}");
            }
        };
        err(
            gguf_file("bitnet-b1.58", f32::NAN, 10),
            &["blk.0.attn_q.weight", "NaN"],
        );
        err(
            gguf_file("bitnet-b1.58", -1.0, 10),
            &["blk.0.attn_q.weight", "positive"],
        );
        err(
            gguf_file("bitnet-b1.58", 1.0, 11),
            &["token_embd.weight", "[10, 128]"],
        );
        let mut w = Writer::default();
        gguf_meta(&mut w, "bitnet-b1.58", 10);
        err(w.finish(), &["token_embd.weight", "missing"]);
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn open_directories_and_files() {
        let dir = std::env::temp_dir().join(format!("tern-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg_json = {
            let mut v: serde_json::Value = serde_json::from_str(B158_2B4T).unwrap();
            for (k, n) in [
                ("hidden_size", 8),
                ("num_hidden_layers", 1),
                ("num_attention_heads", 2),
                ("num_key_value_heads", 1),
                ("intermediate_size", 16),
                ("vocab_size", 10),
                ("bos_token_id", 1),
                ("eos_token_id", 2),
            ] {
                v[k] = n.into();
            }
            v.to_string()
        };
        let e = Checkpoint::open(&dir).err().unwrap().to_string();
        assert!(e.contains("config.json"), "{e}");
        std::fs::write(dir.join("config.json"), &cfg_json).unwrap();
        // Sharded: two shards plus an index.
        let t = tiny_tensors(true);
        let (a, b) = t.split_at(5);
        let mut map = serde_json::Map::new();
        for (shard, part) in [("s1.safetensors", a), ("s2.safetensors", b)] {
            let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = part
                .iter()
                .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
                .collect();
            std::fs::write(dir.join(shard), write_st(&refs)).unwrap();
            for (n, ..) in part {
                map.insert(n.clone(), shard.into());
            }
        }
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::json!({"weight_map": map}).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        let c = Checkpoint::open(&dir).unwrap();
        assert_eq!(c.chat_template.as_deref(), Some("D"));
        assert!(c.tokenizer_json.is_none());
        assert_eq!(c.sources.len(), 2);
        assert_eq!(read_vector(&c, &c.final_norm().unwrap()), vec![2.0; 8]);
        // An index naming a tensor its shard lacks.
        map.insert("extra.weight".into(), "s1.safetensors".into());
        std::fs::write(
            dir.join("model.safetensors.index.json"),
            serde_json::json!({"weight_map": map}).to_string(),
        )
        .unwrap();
        let e = Checkpoint::open(&dir).err().unwrap().to_string();
        assert!(
            e.contains("s1.safetensors") && e.contains("extra.weight"),
            "{e}"
        );
        // A GGUF file.
        let g = dir.join("m.gguf");
        std::fs::write(&g, gguf_file("bitnet-b1.58", 1.0, 10)).unwrap();
        assert_eq!(Checkpoint::open(&g).unwrap().config.num_layers, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every committed fixture (tests/fixtures, one per checkpoint format) opens and resolves.
    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn opens_committed_fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        for (name, layout, sub_norms) in [
            ("bitnet-2b4t", Some(TernaryLayout::HfPacked), true),
            ("bitnet-2b4t-sharded", Some(TernaryLayout::HfPacked), true),
            ("bitnet-2b4t-bf16", None, true),
            ("llama-1bitllm", None, true),
            ("plain-bitnet", Some(TernaryLayout::HfPacked), false),
            ("bitnet-2b4t-i2s.gguf", Some(TernaryLayout::I2S), true),
            ("bitnet-2b4t-tq1_0.gguf", Some(TernaryLayout::Tq1_0), true),
            ("bitnet-2b4t-tq2_0.gguf", Some(TernaryLayout::Tq2_0), true),
        ] {
            let c = Checkpoint::open(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.config.sub_norms, sub_norms, "{name}");
            let q = c
                .projection(c.config.num_layers - 1, Projection::Q)
                .unwrap();
            match (q.data, layout) {
                (WeightData::Ternary { layout: l, .. }, Some(want)) => {
                    assert_eq!(l, want, "{name}")
                }
                (WeightData::Float { .. }, None) => {}
                (d, _) => panic!("{name}: {d:?}"),
            }
            assert!(
                c.tokenizer_json.is_some() || c.gguf_metadata.is_some(),
                "{name}"
            );
            let norm = read_vector(&c, &c.final_norm().unwrap());
            assert!(norm.iter().all(|x| x.is_finite()), "{name}");
        }
    }
}

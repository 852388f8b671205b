//! `cargo xtask gguf`: Tern's converter from the microsoft/bitnet-b1.58-2B-4T packed layout (HF
//! safetensors) to a bitnet.cpp GGUF with I2_S projections — the format bitnet.cpp users download.
//!
//! Every value is carried exactly: the 2-bit codes are re-laid (HF output-axis blocks → I2_S
//! 128-value input-axis blocks) with the bf16 `weight_scale` as I2_S's f32 scale, and the bf16
//! embedding and norms become F32. The GGUF twin therefore computes the same logits as the
//! directory it came from.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};

use crate::fixtures::gguf_writer::{GgmlType, GgufWriter};
use crate::fixtures::{add_gguf_model, add_gguf_tokenizer, quant, GgufModel};

#[derive(clap::Args)]
pub struct Args {
    /// A model directory in the 2B-4T packed layout (config.json, model.safetensors, tokenizer files).
    #[arg(long)]
    model: PathBuf,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
}

/// GGUF tensor names of a block's tensors, beside their HF names under `model.layers.{i}.`.
const LAYER_TENSORS: [(&str, &str); 11] = [
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.attn_sub_norm", "attn_sub_norm"),
    ("self_attn.o_proj", "attn_output"),
    ("post_attention_layernorm", "ffn_norm"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.ffn_sub_norm", "ffn_sub_norm"),
    ("mlp.down_proj", "ffn_down"),
];

pub fn run(args: &Args) -> Result<()> {
    let config_path = args.model.join("config.json");
    let config: serde_json::Value = serde_json::from_slice(
        &fs::read(&config_path).with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let field = |key: &str| -> Result<usize> {
        config[key]
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("{}: no integer {key}", config_path.display()))
    };
    let float = |key: &str| -> Result<f32> {
        config[key]
            .as_f64()
            .map(|v| v as f32)
            .with_context(|| format!("{}: no number {key}", config_path.display()))
    };
    let quantization = &config["quantization_config"];
    ensure!(
        config["model_type"] == "bitnet"
            && quantization["linear_class"] == "autobitlinear"
            && quantization["quantization_mode"] == "offline",
        "{}: not the bitnet-b1.58-2B-4T packed layout (model_type bitnet, autobitlinear, offline)",
        config_path.display()
    );
    let (hidden, heads) = (field("hidden_size")?, field("num_attention_heads")?);
    let model = GgufModel {
        arch: "bitnet-b1.58",
        name: args
            .model
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model"),
        file_type: 40,
        vocab: field("vocab_size")?,
        context: field("max_position_embeddings")?,
        hidden,
        layers: field("num_hidden_layers")?,
        intermediate: field("intermediate_size")?,
        head_dim: hidden / heads,
        heads,
        kv_heads: field("num_key_value_heads")?,
        rope_theta: float("rope_theta")?,
        rms_eps: float("rms_norm_eps")?,
    };

    let weights_path = args.model.join("model.safetensors");
    let bytes =
        fs::read(&weights_path).with_context(|| format!("reading {}", weights_path.display()))?;
    let tensors = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("parsing {}", weights_path.display()))?;
    let mut g = GgufWriter::default();
    add_gguf_model(&mut g, &model);
    add_gguf_tokenizer(&mut g, &args.model)?;
    let float_tensor = |g: &mut GgufWriter, hf: &str, gguf: &str| -> Result<()> {
        let (shape, values) = bf16_tensor(&tensors, hf)?;
        let dims: Vec<usize> = shape.iter().rev().copied().collect();
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        g.tensor(gguf, &dims, GgmlType::F32, data);
        Ok(())
    };
    float_tensor(&mut g, "model.embed_tokens.weight", "token_embd.weight")?;
    for layer in 0..model.layers {
        for (hf, gguf) in LAYER_TENSORS {
            let (hf, gguf) = (
                format!("model.layers.{layer}.{hf}"),
                format!("blk.{layer}.{gguf}.weight"),
            );
            if !hf.ends_with("_proj") {
                float_tensor(&mut g, &format!("{hf}.weight"), &gguf)?;
                continue;
            }
            let packed = tensors
                .tensor(&format!("{hf}.weight"))
                .with_context(|| format!("{}: no tensor {hf}.weight", weights_path.display()))?;
            ensure!(
                packed.dtype() == Dtype::U8 && packed.shape().len() == 2,
                "{hf}.weight: expected U8 [out/4, in], found {:?} {:?}",
                packed.dtype(),
                packed.shape()
            );
            let (out, inp) = (packed.shape()[0] * 4, packed.shape()[1]);
            ensure!(
                inp % 128 == 0,
                "{hf}.weight: {inp} inputs, I2_S needs a multiple of 128"
            );
            let codes = quant::unpack_hf(packed.data(), out, inp);
            let (_, scale) = bf16_tensor(&tensors, &format!("{hf}.weight_scale"))?;
            ensure!(scale.len() == 1, "{hf}.weight_scale: not one value");
            g.tensor(
                gguf,
                &[inp, out],
                GgmlType::I2S,
                quant::encode_i2s(&codes, scale[0]),
            );
        }
    }
    float_tensor(&mut g, "model.norm.weight", "output_norm.weight")?;
    write(&g, &args.out)?;
    println!("{}", args.out.display());
    Ok(())
}

fn bf16_tensor(tensors: &SafeTensors, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
    let view = tensors
        .tensor(name)
        .with_context(|| format!("no tensor {name}"))?;
    if view.dtype() != Dtype::BF16 {
        bail!("{name}: expected BF16, found {:?}", view.dtype());
    }
    let values = view
        .data()
        .chunks_exact(2)
        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    Ok((view.shape().to_vec(), values))
}

fn write(g: &GgufWriter, path: &Path) -> Result<()> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    g.write(&mut w)?;
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(model: &Path) -> Result<Vec<u8>> {
        let out = std::env::temp_dir().join(format!(
            "tern-xtask-gguf-{}-{}.gguf",
            std::process::id(),
            model.file_name().unwrap().to_string_lossy()
        ));
        let result = run(&Args {
            model: model.to_path_buf(),
            out: out.clone(),
        })
        .and_then(|()| Ok(fs::read(&out)?));
        fs::remove_file(&out).ok();
        result
    }

    /// The committed GGUF twin of the shipped model is exactly what this converter writes.
    #[test]
    fn shipped_model_twin_is_the_converters_output() {
        let root = crate::wasm::workspace_root();
        let ours = convert(&root.join("models/tern-pydoc-6m")).unwrap();
        let committed = fs::read(root.join("models/tern-pydoc-6m-i2_s.gguf")).unwrap();
        assert!(
            ours == committed,
            "models/tern-pydoc-6m-i2_s.gguf is stale: regenerate it with `cargo xtask gguf`"
        );
    }

    /// Latent (online) weights are not the packed layout: a clear error naming the file.
    #[test]
    fn other_layouts_are_refused_by_name() {
        let root = crate::wasm::workspace_root();
        let error = convert(&root.join("tests/fixtures/bitnet-2b4t-bf16"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("config.json") && error.contains("packed layout"),
            "{error}"
        );
    }
}

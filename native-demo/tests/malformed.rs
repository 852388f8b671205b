//! The malformed-input corpus, end to end: each case is a committed fixture with one defect (a
//! truncated file, a header length past the end, offsets out of range or overlapping, a dtype/shape
//! mismatch, a NaN scale, a missing tensor, a vocab/embedding mismatch, absurd counts and dimensions,
//! bad config.json fields, a bad tokenizer.json), written under `target/malformed/` and given to
//! `tern run --model`. Every case must fail cleanly: a non-zero exit code that is not a panic's
//! (101), no "panicked" on stderr, and a message naming the file and the tensor or field at fault.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tern::format::gguf;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// Where the corpus is written (kept after the run, for inspection and as fuzzing seeds).
fn corpus_dir() -> PathBuf {
    let dir = root().join("target/malformed");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the safetensors fixture directory named `case`.
fn model_dir(case: &str) -> PathBuf {
    let dir = corpus_dir().join(case);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("bitnet-2b4t")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

/// A copy of the sharded fixture directory named `case`, with `edit` applied to it.
fn sharded_dir(case: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let dir = corpus_dir().join(case);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture("bitnet-2b4t-sharded")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    edit(&dir);
    dir
}

/// The fixture's safetensors file split into its JSON header and data section.
fn safetensors_parts() -> (serde_json::Map<String, Value>, Vec<u8>) {
    let bytes = std::fs::read(fixture("bitnet-2b4t/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn safetensors_bytes(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    out.extend(data);
    out
}

/// A model directory whose model.safetensors has `edit` applied to its header and data.
fn edited_safetensors(
    case: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>, &mut Vec<u8>),
) -> PathBuf {
    let (mut header, mut data) = safetensors_parts();
    edit(&mut header, &mut data);
    let dir = model_dir(case);
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&header, &data),
    )
    .unwrap();
    dir
}

/// A model directory whose model.safetensors is `bytes`.
fn raw_safetensors(case: &str, bytes: Vec<u8>) -> PathBuf {
    let dir = model_dir(case);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    dir
}

/// A model directory with `file` replaced by `content`.
fn replaced(case: &str, file: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let dir = model_dir(case);
    std::fs::write(dir.join(file), content).unwrap();
    dir
}

/// A model directory whose config.json has `edit` applied.
fn edited_config(case: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(fixture("bitnet-2b4t/config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    replaced(
        case,
        "config.json",
        serde_json::to_vec_pretty(&config).unwrap(),
    )
}

fn gguf_fixture() -> Vec<u8> {
    std::fs::read(fixture("bitnet-2b4t-i2s.gguf")).unwrap()
}

/// A copy of the I2_S GGUF fixture with `edit` applied, as `<case>.gguf`.
fn edited_gguf(case: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = gguf_fixture();
    edit(&mut bytes);
    let path = corpus_dir().join(format!("{case}.gguf"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Byte position of the tensor info of `name` (just after its name) in a GGUF file.
fn gguf_tensor_info(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{name} in the GGUF fixture"));
    at + needle.len()
}

/// Overwrites the tensor info of `name`: (type id, offset) after its dims.
fn patch_gguf_tensor(bytes: &mut [u8], name: &str, ggml_type: Option<u32>, offset: Option<u64>) {
    let at = gguf_tensor_info(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let type_at = at + 4 + 8 * n_dims;
    if let Some(t) = ggml_type {
        bytes[type_at..type_at + 4].copy_from_slice(&t.to_le_bytes());
    }
    if let Some(o) = offset {
        bytes[type_at + 4..type_at + 12].copy_from_slice(&o.to_le_bytes());
    }
}

struct Case {
    name: &'static str,
    model: PathBuf,
    /// Substrings stderr must contain besides the case's path: the file, and the tensor or field.
    expect: Vec<&'static str>,
}

fn case(name: &'static str, model: PathBuf, expect: &[&'static str]) -> Case {
    Case {
        name,
        model,
        expect: expect.to_vec(),
    }
}

fn corpus() -> Vec<Case> {
    let st = "model.safetensors";
    let q0 = "model.layers.0.self_attn.q_proj.weight";
    let (_, data) = safetensors_parts();
    let data_len = data.len() as u64;
    let full = std::fs::read(fixture("bitnet-2b4t/model.safetensors")).unwrap();
    let gguf_len = gguf_fixture().len();
    let parsed = gguf::parse_prefix("fixture.gguf", &gguf_fixture(), gguf_len as u64)
        .unwrap()
        .unwrap();
    let q_gguf = parsed
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap()
        .clone();

    vec![
        // safetensors
        case(
            "st-empty",
            raw_safetensors("st-empty", Vec::new()),
            &[st, "header"],
        ),
        case(
            "st-truncated-length",
            raw_safetensors("st-truncated-length", full[..5].to_vec()),
            &[st, "header"],
        ),
        case(
            "st-truncated-header",
            raw_safetensors("st-truncated-header", full[..200].to_vec()),
            &[st, "header", "re-download"],
        ),
        case(
            "st-truncated-data",
            raw_safetensors("st-truncated-data", full[..full.len() / 2].to_vec()),
            &[
                st,
                "data_offsets",
                "outside the data section",
                "re-download",
            ],
        ),
        case(
            "st-header-length-2^62",
            raw_safetensors("st-header-length-2^62", {
                let mut b = full.clone();
                b[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
                b
            }),
            &[st, "header", "4611686018427387904"],
        ),
        case(
            "st-header-not-json",
            raw_safetensors("st-header-not-json", {
                let mut b = 6u64.to_le_bytes().to_vec();
                b.extend(b"{nope}");
                b
            }),
            &[st, "header", "invalid JSON"],
        ),
        case(
            "st-offsets-out-of-range",
            edited_safetensors("st-offsets-out-of-range", |h, _| {
                h[q0]["data_offsets"] = json!([data_len, data_len + 16384]);
            }),
            &[st, q0, "outside the data section"],
        ),
        case(
            "st-offsets-2^64",
            edited_safetensors("st-offsets-2^64", |h, _| {
                h[q0]["data_offsets"] = json!([0, u64::MAX]);
            }),
            &[st, q0, "data_offsets"],
        ),
        case(
            "st-offsets-overlap",
            edited_safetensors("st-offsets-overlap", |h, _| {
                // k_proj moved onto q_proj's bytes (same size, so only the overlap is wrong).
                let k = "model.layers.0.self_attn.k_proj.weight";
                let q_begin = h[q0]["data_offsets"][0].as_u64().unwrap();
                let k_len = {
                    let o = &h[k]["data_offsets"];
                    o[1].as_u64().unwrap() - o[0].as_u64().unwrap()
                };
                h[k]["data_offsets"] = json!([q_begin, q_begin + k_len]);
            }),
            &[st, "overlaps"],
        ),
        case(
            "st-dtype-shape-mismatch",
            edited_safetensors("st-dtype-shape-mismatch", |h, _| {
                h[q0]["shape"] = json!([64, 512]);
            }),
            &[st, q0, "needs 32768 bytes"],
        ),
        case(
            "st-unknown-dtype",
            edited_safetensors("st-unknown-dtype", |h, _| {
                h[q0]["dtype"] = json!("Q4");
            }),
            &[st, q0, "unknown dtype"],
        ),
        case(
            "st-shape-2^62",
            edited_safetensors("st-shape-2^62", |h, _| {
                h[q0]["shape"] = json!([1u64 << 62, 1u64 << 62]);
            }),
            &[st, q0, "shape too large"],
        ),
        case(
            "st-wrong-dtype-for-weight",
            edited_safetensors("st-wrong-dtype-for-weight", |h, _| {
                // Same byte count, wrong type for packed ternary codes.
                h[q0]["dtype"] = json!("I8");
            }),
            &[st, q0],
        ),
        case(
            "st-nan-scale",
            edited_safetensors("st-nan-scale", |h, data| {
                let scale = &h["model.layers.0.self_attn.q_proj.weight_scale"]["data_offsets"];
                let at = scale[0].as_u64().unwrap() as usize;
                data[at..at + 2].copy_from_slice(&BF16_NAN.to_le_bytes());
            }),
            &[st, "q_proj.weight_scale", "NaN"],
        ),
        case(
            "st-inf-scale",
            edited_safetensors("st-inf-scale", |h, data| {
                let scale = &h["model.layers.1.mlp.down_proj.weight_scale"]["data_offsets"];
                let at = scale[0].as_u64().unwrap() as usize;
                data[at..at + 2].copy_from_slice(&BF16_INF.to_le_bytes());
            }),
            &[st, "down_proj.weight_scale", "inf"],
        ),
        case(
            "st-inf-norm",
            edited_safetensors("st-inf-norm", |h, data| {
                let at = h["model.norm.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
                data[at + 6..at + 8].copy_from_slice(&BF16_INF.to_le_bytes());
            }),
            &[st, "model.norm.weight", "[0, 3]", "NaN or infinite"],
        ),
        case(
            "st-nan-embedding",
            edited_safetensors("st-nan-embedding", |h, data| {
                let t = &h["model.embed_tokens.weight"];
                let cols = t["shape"][1].as_u64().unwrap() as usize;
                let at = t["data_offsets"][0].as_u64().unwrap() as usize + (5 * cols + 2) * 2;
                data[at..at + 2].copy_from_slice(&BF16_NAN.to_le_bytes());
            }),
            &[st, "model.embed_tokens.weight", "[5, 2]", "NaN or infinite"],
        ),
        case(
            "st-missing-tensor",
            edited_safetensors("st-missing-tensor", |h, _| {
                h.remove("model.norm.weight");
            }),
            &[st, "model.norm.weight"],
        ),
        // sharded checkpoints
        case(
            "shard-missing",
            sharded_dir("shard-missing", |d| {
                std::fs::remove_file(d.join("model-00002-of-00002.safetensors")).unwrap()
            }),
            &["model-00002-of-00002.safetensors"],
        ),
        case(
            "shard-index-escapes",
            sharded_dir("shard-index-escapes", |d| {
                let index = d.join("model.safetensors.index.json");
                let text = std::fs::read_to_string(&index).unwrap();
                let text = text.replacen(
                    "\"model-00001-of-00002.safetensors\"",
                    "\"../../etc/passwd\"",
                    1,
                );
                std::fs::write(index, text).unwrap();
            }),
            &["model.safetensors.index.json", "model.embed_tokens.weight"],
        ),
        case(
            "shard-index-not-json",
            sharded_dir("shard-index-not-json", |d| {
                std::fs::write(d.join("model.safetensors.index.json"), "{\"weight_map\": {")
                    .unwrap()
            }),
            &["model.safetensors.index.json"],
        ),
        case(
            "shard-tensor-in-wrong-shard",
            sharded_dir("shard-tensor-in-wrong-shard", |d| {
                let index = d.join("model.safetensors.index.json");
                let text = std::fs::read_to_string(&index).unwrap().replacen(
                    "\"model.embed_tokens.weight\": \"model-00001-of-00002.safetensors\"",
                    "\"model.embed_tokens.weight\": \"model-00002-of-00002.safetensors\"",
                    1,
                );
                std::fs::write(index, text).unwrap();
            }),
            &["model.embed_tokens.weight"],
        ),
        // config.json
        case(
            "config-not-json",
            replaced("config-not-json", "config.json", "{\"hidden_size\": "),
            &["config.json"],
        ),
        case(
            "config-vocab-mismatch",
            edited_config("config-vocab-mismatch", |c| c["vocab_size"] = json!(2048)),
            &[st, "model.embed_tokens.weight"],
        ),
        case(
            "config-hidden-size-2^40",
            edited_config("config-hidden-size-2^40", |c| {
                c["hidden_size"] = json!(1u64 << 40)
            }),
            &["config.json", "hidden_size"],
        ),
        case(
            "config-layers-2^60",
            edited_config("config-layers-2^60", |c| {
                c["num_hidden_layers"] = json!(1u64 << 60)
            }),
            &["num_hidden_layers"],
        ),
        case(
            "config-heads-zero",
            edited_config("config-heads-zero", |c| c["num_attention_heads"] = json!(0)),
            &["config.json", "num_attention_heads"],
        ),
        case(
            "config-heads-string",
            edited_config("config-heads-string", |c| {
                c["num_attention_heads"] = json!("eight")
            }),
            &["config.json", "num_attention_heads"],
        ),
        case(
            "config-kv-heads-not-dividing",
            edited_config("config-kv-heads-not-dividing", |c| {
                c["num_key_value_heads"] = json!(3)
            }),
            &["config.json", "num_key_value_heads"],
        ),
        case(
            "config-negative-eps",
            edited_config("config-negative-eps", |c| c["rms_norm_eps"] = json!(-1.0)),
            &["config.json", "rms_norm_eps"],
        ),
        case(
            "config-unknown-activation",
            edited_config("config-unknown-activation", |c| {
                c["hidden_act"] = json!("swishy")
            }),
            &["config.json", "hidden_act"],
        ),
        case(
            "config-missing-hidden-size",
            edited_config("config-missing-hidden-size", |c| {
                c.as_object_mut().unwrap().remove("hidden_size");
            }),
            &["config.json", "hidden_size"],
        ),
        // tokenizer files
        case(
            "tokenizer-not-json",
            replaced("tokenizer-not-json", "tokenizer.json", "{\"model\": [1,"),
            &["tokenizer.json"],
        ),
        case(
            "tokenizer-vocab-larger-than-embedding",
            replaced("tokenizer-vocab-larger-than-embedding", "tokenizer.json", {
                let mut t: Value = serde_json::from_slice(
                    &std::fs::read(fixture("bitnet-2b4t/tokenizer.json")).unwrap(),
                )
                .unwrap();
                let vocab = t["model"]["vocab"].as_object_mut().unwrap();
                for i in 0..2000 {
                    vocab.insert(format!("extra{i}"), json!(3000 + i));
                }
                serde_json::to_vec(&t).unwrap()
            }),
            &["tokenizer.json", "vocab", "1024 rows"],
        ),
        case(
            "tokenizer-config-bad-template",
            replaced(
                "tokenizer-config-bad-template",
                "tokenizer_config.json",
                r#"{"chat_template": "{% for m in messages %}{{ m.content "}"#,
            ),
            &["tokenizer_config.json", "chat_template"],
        ),
        // GGUF
        case(
            "gguf-empty",
            edited_gguf("gguf-empty", |b| b.clear()),
            &["gguf-empty.gguf", "magic"],
        ),
        case(
            "gguf-bad-magic",
            edited_gguf("gguf-bad-magic", |b| b[..4].copy_from_slice(b"GGML")),
            &["gguf-bad-magic.gguf", "magic"],
        ),
        case(
            "gguf-version-99",
            edited_gguf("gguf-version-99", |b| {
                b[4..8].copy_from_slice(&99u32.to_le_bytes())
            }),
            &["gguf-version-99.gguf", "version"],
        ),
        case(
            "gguf-truncated-header",
            edited_gguf("gguf-truncated-header", |b| b.truncate(20000)),
            &["gguf-truncated-header.gguf", "re-download"],
        ),
        case(
            "gguf-truncated-data",
            edited_gguf("gguf-truncated-data", |b| b.truncate(gguf_len / 2)),
            &[
                "gguf-truncated-data.gguf",
                "outside the data section",
                "re-download",
            ],
        ),
        case(
            "gguf-tensor-count-2^60",
            edited_gguf("gguf-tensor-count-2^60", |b| {
                b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes())
            }),
            &["gguf-tensor-count-2^60.gguf", "tensor_count", "cannot fit"],
        ),
        case(
            "gguf-kv-count-2^60",
            edited_gguf("gguf-kv-count-2^60", |b| {
                b[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes())
            }),
            &["gguf-kv-count-2^60.gguf", "metadata_kv_count"],
        ),
        case(
            "gguf-key-length-2^62",
            edited_gguf("gguf-key-length-2^62", |b| {
                b[24..32].copy_from_slice(&(1u64 << 62).to_le_bytes())
            }),
            &["gguf-key-length-2^62.gguf", "metadata key"],
        ),
        case(
            "gguf-offset-out-of-range",
            edited_gguf("gguf-offset-out-of-range", |b| {
                patch_gguf_tensor(b, "blk.0.attn_q.weight", None, Some(1 << 40))
            }),
            &[
                "gguf-offset-out-of-range.gguf",
                "blk.0.attn_q.weight",
                "outside",
            ],
        ),
        case(
            "gguf-offset-overlap",
            edited_gguf("gguf-offset-overlap", |b| {
                let q_relative = q_gguf.offset - parsed.data_offset;
                patch_gguf_tensor(b, "blk.0.attn_k.weight", None, Some(q_relative))
            }),
            &["gguf-offset-overlap.gguf", "overlaps"],
        ),
        case(
            "gguf-unsupported-type",
            edited_gguf("gguf-unsupported-type", |b| {
                patch_gguf_tensor(b, "blk.0.attn_q.weight", Some(2), None)
            }),
            &["gguf-unsupported-type.gguf", "blk.0.attn_q.weight", "Q4_0"],
        ),
        case(
            "gguf-type-mismatch",
            edited_gguf("gguf-type-mismatch", |b| {
                // F32 codes where I2_S ones belong: four times the bytes, past the data section.
                patch_gguf_tensor(b, "blk.3.ffn_down.weight", Some(0), None)
            }),
            &["gguf-type-mismatch.gguf", "blk.3.ffn_down.weight"],
        ),
        case(
            "gguf-nan-scale",
            edited_gguf("gguf-nan-scale", |b| {
                // I2_S: n/4 bytes of codes, then the f32 scale.
                let n: u64 = q_gguf.dims.iter().product();
                let at = (q_gguf.offset + n / 4) as usize;
                b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
            }),
            &["gguf-nan-scale.gguf", "blk.0.attn_q.weight", "NaN"],
        ),
        case(
            "gguf-rope-scaling-yarn",
            {
                // The llama flavor carries llama.cpp's `linear`; "yarnyy" keeps the string length.
                let mut bytes = std::fs::read(fixture("plain-bitnet-i2s.gguf")).unwrap();
                let needle = b"\x06\0\0\0\0\0\0\0linear";
                let at = bytes
                    .windows(needle.len())
                    .position(|w| w == needle)
                    .expect("the llama fixture has linear RoPE scaling");
                bytes[at + 8..at + 14].copy_from_slice(b"yarnyy");
                let path = corpus_dir().join("gguf-rope-scaling-yarn.gguf");
                std::fs::write(&path, bytes).unwrap();
                path
            },
            &["rope.scaling.type", "unsupported RoPE scaling \"yarnyy\""],
        ),
    ]
    .into_iter()
    .chain(side_file_cases())
    .collect()
}

/// Side files (config, tokenizer) that are not what their names say: each is reported as what it
/// is, and none is read without a size limit.
#[cfg(unix)]
fn side_file_cases() -> Vec<Case> {
    use std::os::unix::fs::symlink;
    let with = |case: &'static str, file: &str, make: &dyn Fn(&Path)| {
        let dir = model_dir(case);
        let path = dir.join(file);
        std::fs::remove_file(&path).unwrap();
        make(&path);
        dir
    };
    vec![
        case(
            "side-tokenizer-dev-zero",
            with("side-tokenizer-dev-zero", "tokenizer.json", &|p| {
                symlink("/dev/zero", p).unwrap()
            }),
            &["tokenizer.json", "a device, not a regular file"],
        ),
        case(
            "side-config-fifo",
            with("side-config-fifo", "config.json", &|p| {
                let made = Command::new("mkfifo").arg(p).status().unwrap();
                assert!(made.success());
            }),
            &["config.json", "FIFO"],
        ),
        case(
            "side-tokenizer-config-directory",
            with(
                "side-tokenizer-config-directory",
                "tokenizer_config.json",
                &|p| std::fs::create_dir(p).unwrap(),
            ),
            &["tokenizer_config.json", "a directory"],
        ),
        case(
            "side-tokenizer-link-loop",
            with("side-tokenizer-link-loop", "tokenizer.json", &|p| {
                symlink(p.file_name().unwrap(), p).unwrap()
            }),
            &["tokenizer.json", "symbolic link loop"],
        ),
        case(
            "side-config-broken-link",
            with("side-config-broken-link", "config.json", &|p| {
                symlink("/no/such/config.json", p).unwrap()
            }),
            &["config.json", "broken symbolic link"],
        ),
        case(
            "side-tokenizer-huge",
            with("side-tokenizer-huge", "tokenizer.json", &|p| {
                // Sparse: 100 MiB that take no disk.
                let file = std::fs::File::create(p).unwrap();
                file.set_len(100 << 20).unwrap();
            }),
            &["tokenizer.json", "larger than 64 MiB"],
        ),
        case(
            "tokenizer-id-past-embedding",
            replaced("tokenizer-id-past-embedding", "tokenizer.json", {
                // As many ids as rows, but one of them past the last row.
                let mut t: Value = serde_json::from_slice(
                    &std::fs::read(fixture("bitnet-2b4t/tokenizer.json")).unwrap(),
                )
                .unwrap();
                let vocab = t["model"]["vocab"].as_object_mut().unwrap();
                let name = vocab
                    .iter()
                    .find(|(_, id)| id == &&json!(7))
                    .unwrap()
                    .0
                    .clone();
                vocab.insert(name, json!(5000));
                serde_json::to_vec(&t).unwrap()
            }),
            &["tokenizer.json", "ids up to 5000", "1024 rows"],
        ),
    ]
}

#[cfg(not(unix))]
fn side_file_cases() -> Vec<Case> {
    Vec::new()
}

const BF16_NAN: u16 = 0x7fc0;
/// bf16 +infinity.
const BF16_INF: u16 = 0x7f80;

#[test]
fn every_malformed_input_fails_cleanly_naming_file_and_field() {
    let mut failures = Vec::new();
    for case in corpus() {
        let out = Command::new(env!("CARGO_BIN_EXE_tern"))
            .args(["run", "--prompt", "Hello", "--max-tokens", "1", "--model"])
            .arg(&case.model)
            .env("XDG_RUNTIME_DIR", "/tmp")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        let mut problems = Vec::new();
        if out.status.success() {
            problems.push("succeeded".to_string());
        }
        if code == Some(101) || code.is_none() || stderr.contains("panicked") {
            problems.push(format!("crashed (exit {code:?})"));
        }
        // Every path in the corpus holds the case's name: the message must name the file.
        for want in case.expect.iter().chain([&case.name]) {
            if !stderr.contains(want) {
                problems.push(format!("stderr lacks {want:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n  stderr: {}",
                case.name,
                problems.join(", "),
                stderr.trim().replace('\n', "\n          ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

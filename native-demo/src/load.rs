//! Loading a model for any command: resolve the argument (directory, .gguf, or Hugging Face repo id,
//! downloaded on first use), pick the GPU, upload with a progress bar.

use indicatif::{ProgressBar, ProgressStyle};
use tern::gpu::{Context, ContextOptions};
use tern::model::weights::LmHead;
use tern::{KvCacheDtype, Model, OpenOptions, Session, SessionOptions};

/// `--lm-head`: how the LM head is held on the GPU.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum LmHeadArg {
    /// In the checkpoint's float dtype.
    #[default]
    Stored,
    /// Per-row absmax int8, quantized on the GPU at load (half a bf16 head's bytes; a tied
    /// embedding becomes int8 too).
    Int8,
}

impl From<LmHeadArg> for LmHead {
    fn from(arg: LmHeadArg) -> LmHead {
        match arg {
            LmHeadArg::Stored => LmHead::Stored,
            LmHeadArg::Int8 => LmHead::Int8,
        }
    }
}

/// The model Tern ships, used when no `--model` is given: a 5.8 M-parameter BitNet b1.58 trained
/// from scratch on the Python documentation by train/ (models/tern-pydoc-6m/README.md). It lives in
/// the repository this binary was built from, so the first command works offline.
pub const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/tern-pydoc-6m");
/// The name the default model goes by (the server's model id).
pub const DEFAULT_MODEL_NAME: &str = "tern-pydoc-6m";

#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// A model directory (config.json + safetensors + tokenizer.json), a .gguf file, or a Hugging Face
    /// repo id such as microsoft/bitnet-b1.58-2B-4T (downloaded into the HF cache on first use).
    /// Default: tern-pydoc-6m, the small model trained by Tern and shipped in its repository.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// KV-cache length in tokens, cut to the model's max_position_embeddings [default: 4096;
    /// `perplexity`: 512, its evaluation window].
    #[arg(long, alias = "ctx", value_name = "TOKENS")]
    pub context: Option<usize>,
    /// Tokens per prefill batch.
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// How the KV cache stores keys and values: f16 halves its memory (and attention's reads of
    /// it); f32 keeps them exact.
    #[arg(long, value_enum, default_value_t = KvCacheArg::F16)]
    pub kv_cache: KvCacheArg,
    /// The LM head as stored, or int8 made at load.
    #[arg(long, value_enum, default_value_t = LmHeadArg::Stored)]
    pub lm_head: LmHeadArg,
}

/// `--kv-cache`: the KV cache's storage type.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvCacheArg {
    /// Half precision: half the memory of f32, each key and value rounded once.
    F16,
    /// Single precision: exact.
    F32,
}

impl KvCacheArg {
    /// The name `--kv-cache` takes.
    pub fn name(self) -> &'static str {
        match self {
            KvCacheArg::F16 => "f16",
            KvCacheArg::F32 => "f32",
        }
    }
}

impl From<KvCacheArg> for KvCacheDtype {
    fn from(arg: KvCacheArg) -> Self {
        match arg {
            KvCacheArg::F16 => KvCacheDtype::F16,
            KvCacheArg::F32 => KvCacheDtype::F32,
        }
    }
}

impl ModelArgs {
    /// The model's name as the user knows it: the `--model` argument, or the default's name.
    pub fn name(&self) -> &str {
        self.model.as_deref().unwrap_or(DEFAULT_MODEL_NAME)
    }

    /// The KV-cache length asked: `--context`, else the engine's default (4096).
    pub fn context(&self) -> usize {
        self.context
            .unwrap_or(SessionOptions::default().max_context)
    }
}

/// A session of the model `args` name, with their context, prefill batch sizes and cache type.
pub fn session(args: &ModelArgs) -> anyhow::Result<Session> {
    Ok(model(args)?.session(SessionOptions {
        max_context: args.context(),
        max_batch: args.batch,
        kv_cache: args.kv_cache.into(),
    })?)
}

/// The model `args` name, loaded with a progress bar on the adapter TERN_BACKEND/TERN_ADAPTER pick.
pub fn model(args: &ModelArgs) -> anyhow::Result<Model> {
    let source = match &args.model {
        Some(model) => model.clone(),
        None => {
            let path = std::path::PathBuf::from(DEFAULT_MODEL);
            anyhow::ensure!(
                path.is_dir(),
                "the default model {DEFAULT_MODEL_NAME} is not at {} (this binary was built from a \
                 Tern checkout that has moved): pass --model DIR|FILE.gguf|REPO-ID, e.g. \
                 --model microsoft/bitnet-b1.58-2B-4T",
                path.display()
            );
            DEFAULT_MODEL.to_string()
        }
    };
    let ctx = pollster::block_on(Context::new(&ContextOptions::from_env()))?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {bar:30} {pos}/{len} tensors [{elapsed}] {msg}")
            .expect("valid template"),
    );
    bar.set_message(ctx.adapter_name());
    let model = Model::open_with(
        &source,
        OpenOptions {
            context: Some(ctx),
            lm_head: args.lm_head.into(),
            progress: Some(&mut |done, total| {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }),
            ..OpenOptions::default()
        },
    )?;
    bar.finish_and_clear();
    Ok(model)
}

//! Which files make a model directory, written once for every place files come from: `config.json`,
//! then `model.safetensors` or `model.safetensors.index.json` and every shard it names, then the
//! optional `tokenizer.json`, `tokenizer_config.json` (its chat template) and `chat_template.jinja`.
//! Where the files come from is a [`ModelFiles`]: the file system natively (`Checkpoint::open`,
//! whose reads complete at once) and HTTP in the browser (web/src/loader.rs). Natively a path may
//! also be a `.gguf` file, or one `.safetensors` file of a directory.

use std::future::Future;

use super::checkpoint::{chat_template_from_tokenizer_config, Checkpoint};
use super::config::ModelConfig;
use super::safetensors as st;
#[cfg(not(target_arch = "wasm32"))]
use super::source::complete_now;
use super::source::TensorSource;
use crate::{Error, Result};

/// A required file that is not there; each [`ModelFiles`] says so in its own words (a path or an
/// HTTP 404).
#[derive(Clone, Copy, Debug)]
pub enum Missing<'a> {
    /// `config.json`.
    Config,
    /// Neither `model.safetensors` nor `model.safetensors.index.json`.
    Weights,
    /// A shard named by the index.
    Shard(&'a str),
}

/// The files of one model directory, by file name.
pub trait ModelFiles {
    /// `file` as messages name it (a path or a URL).
    fn name(&self, file: &str) -> String;
    /// The text of a small side file, `None` when there is none; at most
    /// [`side_file_limit`](super::source::side_file_limit) bytes for its name.
    fn side_file(&mut self, file: &str) -> impl Future<Output = Result<Option<String>>>;
    /// A weight file opened for positioned reads, `None` when there is none.
    fn weights(
        &mut self,
        file: &str,
    ) -> impl Future<Output = Result<Option<Box<dyn TensorSource>>>>;
    /// The error for a required file that is not there.
    fn missing(&self, what: Missing<'_>) -> Error;
}

impl Checkpoint {
    /// Resolves the model directory behind `files`: the config, the weights (single file or
    /// sharded), then the tokenizer files and chat template.
    pub async fn from_directory(files: &mut impl ModelFiles) -> Result<Self> {
        let config_name = files.name("config.json");
        let config_json = files
            .side_file("config.json")
            .await?
            .ok_or_else(|| files.missing(Missing::Config))?;
        let config = ModelConfig::from_hf_json(&config_name, &config_json)?;

        let mut checkpoint = if let Some(source) = files.weights("model.safetensors").await? {
            let header = st::read_header(source.as_ref()).await?;
            let name = files.name("model.safetensors");
            Self::from_safetensors(&name, config, vec![source], vec![header]).await?
        } else {
            let index_name = files.name("model.safetensors.index.json");
            let index = files
                .side_file("model.safetensors.index.json")
                .await?
                .ok_or_else(|| files.missing(Missing::Weights))?;
            let map = st::parse_index(&index_name, &index)?;
            let mut shards: Vec<&String> = map.values().collect();
            shards.sort();
            shards.dedup();
            let mut sources: Vec<Box<dyn TensorSource>> = Vec::with_capacity(shards.len());
            let mut headers = Vec::with_capacity(shards.len());
            for shard in shards {
                let source = files
                    .weights(shard)
                    .await?
                    .ok_or_else(|| files.missing(Missing::Shard(shard)))?;
                let header = st::read_header(source.as_ref()).await?;
                if let Some((tensor, _)) = map
                    .iter()
                    .find(|(t, s)| *s == shard && !header.tensors.iter().any(|h| &h.name == *t))
                {
                    return Err(Error::format(
                        files.name(shard),
                        tensor,
                        "listed in the index but missing from the shard",
                    ));
                }
                sources.push(source);
                headers.push(header);
            }
            Self::from_safetensors(&index_name, config, sources, headers).await?
        };

        checkpoint.tokenizer_json = files.side_file("tokenizer.json").await?;
        checkpoint.tokenizer_config_json = files.side_file("tokenizer_config.json").await?;
        if let Some(tc) = &checkpoint.tokenizer_config_json {
            let name = files.name("tokenizer_config.json");
            checkpoint.chat_template = chat_template_from_tokenizer_config(&name, tc)?;
        }
        if checkpoint.chat_template.is_none() {
            checkpoint.chat_template = files.side_file("chat_template.jinja").await?;
        }
        Ok(checkpoint)
    }

    /// Opens a `.gguf` file, or a directory holding `config.json`, `model.safetensors` (or
    /// `model.safetensors.index.json` and its shards) and optional tokenizer files.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: &std::path::Path) -> Result<Self> {
        // File reads complete at once: no executor needed.
        complete_now(&path.display().to_string(), Self::open_files(path))
    }

    #[cfg(not(target_arch = "wasm32"))]
    async fn open_files(path: &std::path::Path) -> Result<Self> {
        use super::source::FileSource;
        if !path.is_dir() {
            let src = FileSource::open(path)?;
            // One file of a safetensors checkpoint: the model is the directory around it.
            if !starts_with_gguf_magic(&src).await? && is_safetensors_name(path) {
                if let Some(dir) = path.parent().filter(|d| d.join("config.json").exists()) {
                    return Box::pin(Self::open_files(dir)).await;
                }
                return Err(Error::format(
                    path.display(),
                    "config.json",
                    "a safetensors file needs its config.json beside it: pass the model \
                     directory that holds both",
                ));
            }
            let g = super::gguf::read(&src).await?;
            return Self::from_gguf(Box::new(src), g).await;
        }
        Self::from_directory(&mut Directory(path)).await
    }
}

/// True when the file begins with the GGUF magic (a file too short to hold it does not).
#[cfg(not(target_arch = "wasm32"))]
async fn starts_with_gguf_magic(src: &dyn TensorSource) -> Result<bool> {
    let mut magic = [0u8; 4];
    if src.len() < magic.len() as u64 {
        return Ok(false);
    }
    src.read_at(0, &mut magic).await?;
    Ok(&magic == b"GGUF")
}

#[cfg(not(target_arch = "wasm32"))]
fn is_safetensors_name(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors")
}

/// A model directory on the local file system.
#[cfg(not(target_arch = "wasm32"))]
pub struct Directory<'a>(pub &'a std::path::Path);

#[cfg(not(target_arch = "wasm32"))]
impl ModelFiles for Directory<'_> {
    fn name(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }

    async fn side_file(&mut self, file: &str) -> Result<Option<String>> {
        super::source::read_side_file(&self.0.join(file))
    }

    async fn weights(&mut self, file: &str) -> Result<Option<Box<dyn TensorSource>>> {
        let source = super::source::FileSource::open_if_present(&self.0.join(file))?;
        Ok(source.map(|s| Box::new(s) as Box<dyn TensorSource>))
    }

    fn missing(&self, what: Missing<'_>) -> Error {
        match what {
            Missing::Config => Error::format(
                self.0.display(),
                "config.json",
                "missing (need a checkpoint directory or a .gguf file)",
            ),
            Missing::Weights => Error::format(
                self.0.display(),
                "model.safetensors",
                "missing (neither model.safetensors nor model.safetensors.index.json)",
            ),
            Missing::Shard(file) => Error::io(
                self.name(file),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ),
        }
    }
}

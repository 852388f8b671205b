//! A [`Checkpoint`] from files fetched over HTTP (or from memory in tests): the same resolution and
//! checks as the native `Checkpoint::open`. Small files (config, tokenizer) are fetched whole; weight
//! files are opened as [`TensorSource`]s read by range (`crate::range`), so only their headers are
//! read here and the tensors stream to the GPU later, a read at a time.

use std::future::Future;

use tern::format::checkpoint::{chat_template_from_tokenizer_config, Checkpoint};
use tern::format::config::ModelConfig;
use tern::format::source::{side_file_limit, TensorSource};
use tern::format::{gguf, safetensors as st};
use tern::{Error, Result};

use crate::location::ModelLocation;

/// Fetches files by URL.
pub trait Fetcher {
    /// The bytes of a small file at `url`, or `None` when there is no such file (HTTP 404).
    fn fetch(&mut self, url: &str) -> impl Future<Output = Result<Option<Vec<u8>>>>;
    /// A weight file at `url` opened for reads by range, or `None` when there is no such file.
    fn open(&mut self, url: &str) -> impl Future<Output = Result<Option<Box<dyn TensorSource>>>>;
}

async fn open_required(fetcher: &mut impl Fetcher, url: &str) -> Result<Box<dyn TensorSource>> {
    fetcher
        .open(url)
        .await?
        .ok_or_else(|| Error::Download(format!("{url}: not found (HTTP 404)")))
}

async fn fetch_text(fetcher: &mut impl Fetcher, url: &str) -> Result<Option<String>> {
    let name = url.rsplit('/').next().unwrap_or(url);
    let limit = side_file_limit(name);
    match fetcher.fetch(url).await? {
        None => Ok(None),
        Some(bytes) if bytes.len() as u64 > limit => Err(Error::format(
            url,
            "(size)",
            format!("larger than {} MiB, more than any real one", limit >> 20),
        )),
        Some(bytes) => String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Error::format(url, "(file)", "not UTF-8 text")),
    }
}

/// Fetches and resolves the checkpoint at `location`.
pub async fn load_checkpoint(
    fetcher: &mut impl Fetcher,
    location: &ModelLocation,
) -> Result<Checkpoint> {
    match location {
        ModelLocation::Gguf { url } => {
            let source = open_required(fetcher, url).await?;
            let header = gguf::read(source.as_ref()).await?;
            Checkpoint::from_gguf(source, header).await
        }
        ModelLocation::Directory { base } => load_directory(fetcher, base).await,
    }
}

async fn load_directory(fetcher: &mut impl Fetcher, base: &str) -> Result<Checkpoint> {
    let url = |file: &str| ModelLocation::file_url(base, file);
    let config_url = url("config.json");
    let config_json = fetch_text(fetcher, &config_url).await?.ok_or_else(|| {
        Error::Download(format!(
            "{config_url}: not found (HTTP 404); the model URL must name a directory with \
             config.json, or a .gguf file"
        ))
    })?;
    let config = ModelConfig::from_hf_json(&config_url, &config_json)?;

    let single_url = url("model.safetensors");
    let mut checkpoint = if let Some(source) = fetcher.open(&single_url).await? {
        let header = st::read_header(source.as_ref()).await?;
        Checkpoint::from_safetensors(&single_url, config, vec![source], vec![header]).await?
    } else {
        let index_url = url("model.safetensors.index.json");
        let index = fetch_text(fetcher, &index_url).await?.ok_or_else(|| {
            Error::Download(format!(
                "{base}: neither model.safetensors nor model.safetensors.index.json was found"
            ))
        })?;
        let map = st::parse_index(&index_url, &index)?;
        let mut shards: Vec<&String> = map.values().collect();
        shards.sort();
        shards.dedup();
        let mut sources: Vec<Box<dyn TensorSource>> = Vec::with_capacity(shards.len());
        let mut headers = Vec::with_capacity(shards.len());
        for shard in shards {
            let shard_url = url(shard);
            let source = open_required(fetcher, &shard_url).await?;
            let header = st::read_header(source.as_ref()).await?;
            if let Some((tensor, _)) = map
                .iter()
                .find(|(t, s)| *s == shard && !header.tensors.iter().any(|h| &h.name == *t))
            {
                return Err(Error::format(
                    &shard_url,
                    tensor,
                    "listed in the index but missing from the shard",
                ));
            }
            sources.push(source);
            headers.push(header);
        }
        Checkpoint::from_safetensors(&index_url, config, sources, headers).await?
    };

    checkpoint.tokenizer_json = fetch_text(fetcher, &url("tokenizer.json")).await?;
    checkpoint.tokenizer_config_json = fetch_text(fetcher, &url("tokenizer_config.json")).await?;
    if let Some(tc) = &checkpoint.tokenizer_config_json {
        checkpoint.chat_template =
            chat_template_from_tokenizer_config(&url("tokenizer_config.json"), tc)?;
    }
    if checkpoint.chat_template.is_none() {
        checkpoint.chat_template = fetch_text(fetcher, &url("chat_template.jinja")).await?;
    }
    Ok(checkpoint)
}

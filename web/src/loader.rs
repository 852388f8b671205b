//! A [`Checkpoint`] from files fetched over HTTP (or from memory in tests): the same resolution and
//! checks as the native `Checkpoint::open`. Small files (config, tokenizer) are fetched whole; weight
//! files are opened as [`TensorSource`]s read by range (`crate::range`), so only their headers are
//! read here and the tensors stream to the GPU later, a read at a time.

use std::future::Future;

use tern::format::checkpoint::Checkpoint;
use tern::format::discovery::{Missing, ModelFiles};
use tern::format::gguf;
use tern::format::source::{side_file_limit, TensorSource};
use tern::{Error, Result};

use crate::location::ModelLocation;

/// Fetches files by URL.
pub trait Fetcher {
    /// The bytes of a small file at `url`, or `None` when there is no such file (HTTP 404).
    fn fetch(&mut self, url: &str) -> impl Future<Output = Result<Option<Vec<u8>>>>;
    /// A weight file at `url` opened for reads by range, or `None` when there is no such file.
    fn open(&mut self, url: &str) -> impl Future<Output = Result<Option<Box<dyn TensorSource>>>>;
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
            let source = fetcher
                .open(url)
                .await?
                .ok_or_else(|| Error::Download(format!("{url}: not found (HTTP 404)")))?;
            let header = gguf::read(source.as_ref()).await?;
            Checkpoint::from_gguf(source, header).await
        }
        ModelLocation::Directory { base } => {
            Checkpoint::from_directory(&mut UrlDirectory { fetcher, base }).await
        }
    }
}

/// The files of the model directory at `base`, fetched by URL.
struct UrlDirectory<'a, F> {
    fetcher: &'a mut F,
    base: &'a str,
}

impl<F: Fetcher> ModelFiles for UrlDirectory<'_, F> {
    fn name(&self, file: &str) -> String {
        ModelLocation::file_url(self.base, file)
    }

    async fn side_file(&mut self, file: &str) -> Result<Option<String>> {
        let url = self.name(file);
        fetch_text(self.fetcher, &url).await
    }

    async fn weights(&mut self, file: &str) -> Result<Option<Box<dyn TensorSource>>> {
        let url = self.name(file);
        self.fetcher.open(&url).await
    }

    fn missing(&self, what: Missing<'_>) -> Error {
        Error::Download(match what {
            Missing::Config => format!(
                "{}: not found (HTTP 404); the model URL must name a directory with \
                 config.json, or a .gguf file",
                self.name("config.json")
            ),
            Missing::Weights => format!(
                "{}: neither model.safetensors nor model.safetensors.index.json was found",
                self.base
            ),
            Missing::Shard(file) => format!("{}: not found (HTTP 404)", self.name(file)),
        })
    }
}

//! HTTP with a `fetch` function (the global one of a page or a Web Worker by default): small files
//! whole, model files as [`RangeSource`]s of fixed-size byte blocks (HTTP Range requests), both kept
//! in the download cache so a reload downloads nothing. Progress is reported as
//! `onProgress(loadedBytes, totalBytes)`; [`LoadStats`] counts what went over the network.

use std::rc::Rc;

use js_sys::Function;
use tern::format::source::{TensorSource, MAX_SIDE_FILE};
use tern::{Error, Result};
use wasm_bindgen::prelude::*;
use web_sys::Blob;

use crate::cache::DownloadCache;
use crate::http::{check_ok, header_u64, read_blob_into, Http};
pub use crate::http::{js_message, LoadStats};
use crate::loader::Fetcher;
use crate::range::RangeSource;

/// Bytes per Range request and per cache entry: bounds what one download holds in memory.
pub const DEFAULT_BLOCK_BYTES: u64 = 16 << 20;

#[wasm_bindgen]
extern "C" {
    /// `fetch` of whatever global scope runs the module: `window` or a worker's `self`.
    #[wasm_bindgen(js_name = fetch, thread_local_v2)]
    static GLOBAL_FETCH: Function;
}

/// Small files whole and model files by range, through the download cache when there is one.
pub struct HttpFetcher {
    http: Rc<Http>,
    cache: Option<Rc<DownloadCache>>,
    block_bytes: u64,
}

impl HttpFetcher {
    /// Fetches with the global `fetch`, reporting `on_progress(loadedBytes, totalBytes)`.
    pub fn new(on_progress: Option<Function>) -> Self {
        Self::with_fetch(GLOBAL_FETCH.with(Function::clone), on_progress)
    }

    /// Fetches with `fetch(url, init) → Promise<Response>` (the global one, or a test server).
    pub fn with_fetch(fetch: Function, on_progress: Option<Function>) -> Self {
        Self {
            http: Rc::new(Http::new(fetch, on_progress)),
            cache: None,
            block_bytes: DEFAULT_BLOCK_BYTES,
        }
    }

    /// Keeps downloads in (and serves them from) `cache`.
    pub fn cached(mut self, cache: DownloadCache) -> Self {
        self.cache = Some(Rc::new(cache));
        self
    }

    /// Requests model files in blocks of `bytes` (a file that small may come whole from a server
    /// without Range support).
    pub fn block_bytes(mut self, bytes: u64) -> Self {
        self.block_bytes = bytes.max(1);
        self
    }

    pub fn stats(&self) -> LoadStats {
        self.http.stats.get()
    }
}

/// Files fetched whole are small ones (config, tokenizer): anything larger must be a model file
/// read by range.
const WHOLE_FILE_LIMIT: u64 = 64 << 20;

impl Fetcher for HttpFetcher {
    async fn fetch(&mut self, url: &str) -> Result<Option<Vec<u8>>> {
        let blob = match &self.cache {
            Some(cache) => match cache.whole_file(url).await {
                Some(found) => {
                    self.http.count(|s| s.cache_hits += 1);
                    if let Some(blob) = &found {
                        self.http.expect(blob.size() as u64);
                        self.http.obtained(blob.size() as u64);
                    }
                    found
                }
                None => {
                    let fetched = self.fetch_blob(url).await?;
                    if !cache.put_whole_file(url, fetched.as_ref()).await {
                        self.http.count(|s| s.cache_write_failures += 1);
                    }
                    fetched
                }
            },
            None => self.fetch_blob(url).await?,
        };
        let Some(blob) = blob else { return Ok(None) };
        // A small file is held whole: never allocate what a server claims past any side file.
        if blob.size() as u64 > MAX_SIDE_FILE {
            return Err(Error::format(
                url,
                "(size)",
                format!(
                    "{} bytes, more than any config or tokenizer file",
                    blob.size()
                ),
            ));
        }
        let mut bytes = vec![0; blob.size() as usize];
        read_blob_into(url, &blob, 0, &mut bytes).await?;
        self.http
            .count(|s| s.largest_read = s.largest_read.max(bytes.len() as u64));
        Ok(Some(bytes))
    }

    async fn open(&mut self, url: &str) -> Result<Option<Box<dyn TensorSource>>> {
        let source =
            RangeSource::open(self.http.clone(), self.cache.clone(), url, self.block_bytes).await?;
        Ok(source.map(|s| Box::new(s) as Box<dyn TensorSource>))
    }
}

impl HttpFetcher {
    /// A whole small file from the network, `None` on HTTP 404.
    async fn fetch_blob(&self, url: &str) -> Result<Option<Blob>> {
        let response = self.http.get(url, None).await?;
        if response.status() == 404 {
            return Ok(None);
        }
        check_ok(url, &response)?;
        let length = header_u64(&response, "content-length");
        // Content-Length counts encoded bytes: a compressed body may legitimately differ.
        let encoded = response.headers().get("content-encoding").ok().flatten();
        let expected = length.filter(|_| encoded.is_none());
        self.http.expect(expected.unwrap_or(0));
        self.http
            .count(|s| s.largest_request = s.largest_request.max(length.unwrap_or(0)));
        let blob = self
            .http
            .body(url, &response, expected, WHOLE_FILE_LIMIT, true)
            .await?;
        Ok(Some(blob))
    }
}

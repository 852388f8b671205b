//! The download cache: Cache Storage `tern-models-v1` (available in pages and Web Workers of secure
//! origins, https or localhost). Small files are kept whole under their URL (a 404 as an "absent"
//! marker, so probing for optional files costs no request either); model files as fixed-size blocks
//! under `URL?tern-block=I&of=BYTES`, each with the file's length. Entries are never revalidated:
//! `Engine.clearCache()` forgets them.

use js_sys::{Array, Promise, Reflect};
use tern::{Error, Result};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, Cache, CacheStorage, Headers, Request, Response, ResponseInit};

use crate::http::{header_u64, js_message};

/// The Cache Storage name (bump the version when the entry format changes).
pub const CACHE_NAME: &str = "tern-models-v1";

const FILE_LENGTH: &str = "x-tern-file-length";
const ABSENT: &str = "x-tern-absent";
const BYTES: &str = "x-tern-bytes";

pub struct DownloadCache {
    cache: Cache,
}

/// This global scope's Cache Storage, `None` where there is none (an insecure origin).
fn storage() -> Option<CacheStorage> {
    Reflect::get(&js_sys::global(), &"caches".into())
        .ok()
        .and_then(|c| c.dyn_into().ok())
}

async fn wait(promise: Promise) -> Result<JsValue> {
    JsFuture::from(promise)
        .await
        .map_err(|e| Error::Download(format!("cache {CACHE_NAME}: {}", js_message(&e))))
}

impl DownloadCache {
    /// The cache named `name`, or `None` where Cache Storage is unavailable or refuses to open.
    pub async fn open(name: &str) -> Option<Self> {
        let cache = wait(storage()?.open(name)).await.ok()?;
        Some(Self {
            cache: cache.dyn_into().ok()?,
        })
    }

    /// Deletes the cache `name`; false when there was none.
    pub async fn delete(name: &str) -> Result<bool> {
        let Some(storage) = storage() else {
            return Ok(false);
        };
        Ok(wait(storage.delete(name)).await?.is_truthy())
    }

    /// Bytes held in the cache `name` (0 when there is none).
    pub async fn size(name: &str) -> Result<f64> {
        let Some(storage) = storage() else {
            return Ok(0.0);
        };
        if !wait(storage.has(name)).await?.is_truthy() {
            return Ok(0.0);
        }
        let cache: Cache = wait(storage.open(name)).await?.unchecked_into();
        let keys: Array = wait(cache.keys()).await?.unchecked_into();
        let mut total = 0.0;
        for key in keys.iter() {
            let request: Request = key.unchecked_into();
            let found = wait(cache.match_with_request(&request)).await?;
            if let Ok(response) = found.dyn_into::<Response>() {
                total += header_u64(&response, BYTES).unwrap_or(0) as f64;
            }
        }
        Ok(total)
    }

    async fn get(&self, key: &str) -> Option<Response> {
        wait(self.cache.match_with_str(key))
            .await
            .ok()?
            .dyn_into()
            .ok()
    }

    async fn blob(response: &Response) -> Option<Blob> {
        wait(response.blob().ok()?).await.ok()?.dyn_into().ok()
    }

    /// Stores `blob` (or an absent marker) under `key`; false when the browser refuses (quota).
    async fn put(&self, key: &str, blob: Option<&Blob>, headers: &[(&str, String)]) -> bool {
        let put = async {
            let h = Headers::new().ok()?;
            for (name, value) in headers {
                h.set(name, value).ok()?;
            }
            h.set(BYTES, &blob.map_or(0.0, Blob::size).to_string())
                .ok()?;
            let init = ResponseInit::new();
            init.set_headers(&h);
            let response = Response::new_with_opt_blob_and_init(blob, &init).ok()?;
            wait(self.cache.put_with_str(key, &response)).await.ok()
        };
        put.await.is_some()
    }

    /// A small file: `Some(None)` when it was recorded as absent (HTTP 404), `None` when not cached.
    pub(crate) async fn whole_file(&self, url: &str) -> Option<Option<Blob>> {
        let response = self.get(url).await?;
        if response.headers().has(ABSENT).unwrap_or(false) {
            return Some(None);
        }
        Self::blob(&response).await.map(Some)
    }

    pub(crate) async fn put_whole_file(&self, url: &str, blob: Option<&Blob>) -> bool {
        match blob {
            Some(blob) => self.put(url, Some(blob), &[]).await,
            None => self.put(url, None, &[(ABSENT, "1".into())]).await,
        }
    }

    /// Block `index` (of `block_bytes`) of the file at `url`, with the file's length.
    pub(crate) async fn block(
        &self,
        url: &str,
        index: u64,
        block_bytes: u64,
    ) -> Option<(Blob, u64)> {
        let response = self.get(&block_key(url, index, block_bytes)).await?;
        let file_len = header_u64(&response, FILE_LENGTH)?;
        Some((Self::blob(&response).await?, file_len))
    }

    pub(crate) async fn put_block(
        &self,
        url: &str,
        index: u64,
        block_bytes: u64,
        file_len: u64,
        blob: &Blob,
    ) -> bool {
        let key = block_key(url, index, block_bytes);
        self.put(&key, Some(blob), &[(FILE_LENGTH, file_len.to_string())])
            .await
    }
}

fn block_key(url: &str, index: u64, block_bytes: u64) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}tern-block={index}&of={block_bytes}")
}

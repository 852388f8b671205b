//! HTTP through a JS `fetch` function: requests (whole or by byte range), bodies read chunk by
//! chunk into Blobs with progress and limits, and the load's counters. The layer under the download
//! cache (`cache`), the range-read model files (`range`) and the fetcher that combines them
//! (`fetch`); it imports none of them.

use std::cell::Cell;

use js_sys::{Array, Function, Reflect, Uint8Array};
use tern::{Error, Result};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Blob, Headers, ReadableStreamDefaultReader, RequestInit, Response};

/// What a load sent over the network and read from the cache (the tests assert on these).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadStats {
    /// HTTP requests sent.
    pub requests: u32,
    /// Body bytes received over the network.
    pub network_bytes: u64,
    /// Largest body asked for in one request (a block, or a small file fetched whole).
    pub largest_request: u64,
    /// Blocks and small files served from the cache.
    pub cache_hits: u32,
    /// Cache writes the browser refused (quota): those bytes will be downloaded again next time.
    pub cache_write_failures: u32,
    /// Largest single read the engine made into wasm memory.
    pub largest_read: u64,
}

/// The `fetch` function, progress and counters shared by every file of one load.
pub(crate) struct Http {
    fetch: Function,
    on_progress: Option<Function>,
    loaded: Cell<f64>,
    total: Cell<f64>,
    pub(crate) stats: Cell<LoadStats>,
}

impl Http {
    pub(crate) fn new(fetch: Function, on_progress: Option<Function>) -> Self {
        Self {
            fetch,
            on_progress,
            loaded: Cell::new(0.0),
            total: Cell::new(0.0),
            stats: Cell::new(LoadStats::default()),
        }
    }

    pub(crate) fn count(&self, edit: impl FnOnce(&mut LoadStats)) {
        let mut stats = self.stats.get();
        edit(&mut stats);
        self.stats.set(stats);
    }

    /// Adds to the bytes expected in all (a file's size, once).
    pub(crate) fn expect(&self, bytes: u64) {
        self.total.set(self.total.get() + bytes as f64);
        self.report();
    }

    /// Adds to the bytes obtained (downloaded or read from the cache, each byte once).
    pub(crate) fn obtained(&self, bytes: u64) {
        self.loaded.set(self.loaded.get() + bytes as f64);
        self.report();
    }

    fn report(&self) {
        if let Some(f) = &self.on_progress {
            let loaded = self.loaded.get();
            // A throwing progress callback must not abort the download.
            let _ = f.call2(
                &JsValue::NULL,
                &JsValue::from_f64(loaded),
                &JsValue::from_f64(self.total.get().max(loaded)),
            );
        }
    }

    /// Sends a GET for `url`, for the inclusive byte range `range` when given.
    pub(crate) async fn get(&self, url: &str, range: Option<(u64, u64)>) -> Result<Response> {
        self.request("GET", url, range).await
    }

    /// The length of the file at `url` from the Content-Length of a HEAD request.
    pub(crate) async fn head_length(&self, url: &str) -> Result<Option<u64>> {
        let response = self.request("HEAD", url, None).await?;
        check_ok(url, &response)?;
        Ok(header_u64(&response, "content-length"))
    }

    async fn request(
        &self,
        method: &str,
        url: &str,
        range: Option<(u64, u64)>,
    ) -> Result<Response> {
        let failed = |what: String| Error::Download(format!("{url}: {what}"));
        let init = RequestInit::new();
        init.set_method(method);
        if let Some((first, last)) = range {
            let headers = Headers::new().map_err(|e| failed(js_message(&e)))?;
            headers
                .set("range", &format!("bytes={first}-{last}"))
                .map_err(|e| failed(js_message(&e)))?;
            init.set_headers(&headers);
        }
        self.count(|s| s.requests += 1);
        let promise = self
            .fetch
            .call2(&js_sys::global(), &JsValue::from_str(url), &init)
            .map_err(|e| failed(js_message(&e)))?;
        JsFuture::from(js_sys::Promise::resolve(&promise))
            .await
            .map_err(|e| failed(js_message(&e)))?
            .dyn_into()
            .map_err(|_| failed("fetch did not return a Response".into()))
    }

    /// The body of `response` as a Blob (its chunks stay in JS memory, not in wasm memory), read
    /// chunk by chunk with progress when `count_progress`. Errors when it runs past `limit` bytes or
    /// differs from `expected` bytes.
    pub(crate) async fn body(
        &self,
        url: &str,
        response: &Response,
        expected: Option<u64>,
        limit: u64,
        count_progress: bool,
    ) -> Result<Blob> {
        let failed = |what: String| Error::Download(format!("{url}: {what}"));
        let chunks = Array::new();
        let mut received = 0u64;
        if let Some(body) = response.body() {
            let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
            loop {
                let chunk = JsFuture::from(reader.read())
                    .await
                    .map_err(|e| failed(format!("download interrupted: {}", js_message(&e))))?;
                if Reflect::get(&chunk, &"done".into()).is_ok_and(|d| d.is_truthy()) {
                    break;
                }
                let value: Uint8Array = Reflect::get(&chunk, &"value".into())
                    .map_err(|e| failed(js_message(&e)))?
                    .unchecked_into();
                let n = u64::from(value.length());
                received += n;
                if received > limit {
                    let _ = reader.cancel();
                    return Err(failed(format!(
                        "the response is larger than the {limit} bytes asked for"
                    )));
                }
                chunks.push(&value);
                self.count(|s| s.network_bytes += n);
                if count_progress {
                    self.obtained(n);
                }
            }
        }
        if let Some(n) = expected.filter(|&n| n != received) {
            return Err(failed(format!(
                "truncated download: {received} of {n} bytes"
            )));
        }
        Blob::new_with_u8_array_sequence(&chunks).map_err(|e| failed(js_message(&e)))
    }
}

/// The message of a JS exception (a rejected `fetch` is a TypeError such as "Failed to fetch").
pub fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

/// An error naming `url` unless `response` is a success.
pub(crate) fn check_ok(url: &str, response: &Response) -> Result<()> {
    if response.ok() {
        return Ok(());
    }
    Err(Error::Download(match response.status() {
        404 => format!("{url}: not found (HTTP 404)"),
        status => format!("{url}: HTTP {status} {}", response.status_text()),
    }))
}

pub(crate) fn header_u64(response: &Response, name: &str) -> Option<u64> {
    response
        .headers()
        .get(name)
        .ok()
        .flatten()
        .and_then(|v| v.trim().parse().ok())
}

/// Fills `buf` from byte `start` of `blob` (only that slice is read, even from a cached file).
pub(crate) async fn read_blob_into(
    url: &str,
    blob: &Blob,
    start: u64,
    buf: &mut [u8],
) -> Result<()> {
    let failed = |what: String| Error::Download(format!("{url}: reading the download: {what}"));
    let end = start + buf.len() as u64;
    let part = blob
        .slice_with_f64_and_f64(start as f64, end as f64)
        .map_err(|e| failed(js_message(&e)))?;
    let buffer = JsFuture::from(part.array_buffer())
        .await
        .map_err(|e| failed(js_message(&e)))?;
    let bytes = Uint8Array::new(&buffer);
    if bytes.length() as usize != buf.len() {
        return Err(failed(format!("{} of {} bytes", bytes.length(), buf.len())));
    }
    bytes.copy_to(buf);
    Ok(())
}

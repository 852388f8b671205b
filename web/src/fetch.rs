//! HTTP downloads with the global `fetch` (a page or a Web Worker), reading each body chunk by chunk
//! so the page sees download progress.

use js_sys::{Function, Reflect, Uint8Array};
use tern::{Error, Result};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{ReadableStreamDefaultReader, Response};

use crate::loader::Fetcher;

#[wasm_bindgen]
extern "C" {
    /// `fetch` of whatever global scope runs the module: `window` or a worker's `self`.
    #[wasm_bindgen(js_name = fetch)]
    fn global_fetch(url: &str) -> js_sys::Promise;
}

/// Downloads with progress reported as `on_progress(loadedBytes, totalBytes)`: bytes of every file
/// so far, and the sizes (Content-Length) of the files started so far.
pub struct HttpFetcher {
    on_progress: Option<Function>,
    loaded: f64,
    total: f64,
}

impl HttpFetcher {
    pub fn new(on_progress: Option<Function>) -> Self {
        Self {
            on_progress,
            loaded: 0.0,
            total: 0.0,
        }
    }

    fn report(&self) {
        if let Some(f) = &self.on_progress {
            // A throwing progress callback must not abort the download.
            let _ = f.call2(
                &JsValue::NULL,
                &JsValue::from_f64(self.loaded),
                &JsValue::from_f64(self.total.max(self.loaded)),
            );
        }
    }
}

/// The message of a JS exception (a rejected `fetch` is a TypeError such as "Failed to fetch").
pub fn js_message(e: &JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

impl Fetcher for HttpFetcher {
    async fn fetch(&mut self, url: &str) -> Result<Option<Vec<u8>>> {
        let failed = |what: String| Error::Download(format!("{url}: {what}"));
        let response: Response = JsFuture::from(global_fetch(url))
            .await
            .map_err(|e| failed(js_message(&e)))?
            .dyn_into()
            .map_err(|_| failed("fetch did not return a Response".into()))?;
        if response.status() == 404 {
            return Ok(None);
        }
        if !response.ok() {
            return Err(failed(format!(
                "HTTP {} {}",
                response.status(),
                response.status_text()
            )));
        }
        let length = response
            .headers()
            .get("content-length")
            .ok()
            .flatten()
            .and_then(|v| v.parse::<u64>().ok());
        self.total += length.unwrap_or(0) as f64;
        self.report();
        let Some(body) = response.body() else {
            return Ok(Some(Vec::new()));
        };
        let reader: ReadableStreamDefaultReader = body.get_reader().unchecked_into();
        let mut bytes =
            Vec::with_capacity(length.and_then(|n| usize::try_from(n).ok()).unwrap_or(0));
        loop {
            let chunk = JsFuture::from(reader.read())
                .await
                .map_err(|e| failed(format!("download interrupted: {}", js_message(&e))))?;
            let done = Reflect::get(&chunk, &"done".into()).is_ok_and(|d| d.is_truthy());
            if done {
                break;
            }
            let value: Uint8Array = Reflect::get(&chunk, &"value".into())
                .map_err(|e| failed(js_message(&e)))?
                .unchecked_into();
            let start = bytes.len();
            bytes.resize(start + value.length() as usize, 0);
            value.copy_to(&mut bytes[start..]);
            self.loaded += f64::from(value.length());
            self.report();
        }
        if let Some(n) = length {
            // Content-Length counts encoded bytes: a compressed body may legitimately differ.
            if bytes.len() as u64 != n
                && response
                    .headers()
                    .get("content-encoding")
                    .ok()
                    .flatten()
                    .is_none()
            {
                return Err(failed(format!(
                    "truncated download: {} of {n} bytes",
                    bytes.len()
                )));
            }
        }
        Ok(Some(bytes))
    }
}

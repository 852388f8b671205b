//! A model file read over HTTP Range requests in fixed-size blocks, each kept in the download cache:
//! the engine's reads are served from block slices, so wasm memory holds one read at a time (the
//! engine reads a tensor, or 32 MiB of a table), never the file. A server that ignores Range is
//! accepted only for a file no larger than one block (fetched whole).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use tern::format::source::{check_range, ReadFuture, TensorSource};
use tern::{Error, Result};
use web_sys::{Blob, Response};

use crate::cache::DownloadCache;
use crate::http::{check_ok, header_u64, read_blob_into, Http};

pub struct RangeSource {
    url: String,
    len: u64,
    block_bytes: u64,
    http: Rc<Http>,
    cache: Option<Rc<DownloadCache>>,
    /// The block used last: consecutive reads mostly fall in it.
    last: RefCell<Option<(u64, Blob)>>,
    /// Blocks already counted as loaded in the progress.
    counted: RefCell<HashSet<u64>>,
}

/// `first`, `last` and the total of a `Content-Range: bytes first-last/total` header.
fn content_range(response: &Response) -> Option<(u64, u64, u64)> {
    let value = response.headers().get("content-range").ok()??;
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, total.parse().ok()?))
}

impl RangeSource {
    /// Opens the file at `url` (`None` on HTTP 404): its length comes with its first block, from
    /// the cache or the network.
    pub(crate) async fn open(
        http: Rc<Http>,
        cache: Option<Rc<DownloadCache>>,
        url: &str,
        block_bytes: u64,
    ) -> Result<Option<Self>> {
        let mut source = Self {
            url: url.to_string(),
            len: 0,
            block_bytes,
            http,
            cache,
            last: RefCell::new(None),
            counted: RefCell::new(HashSet::new()),
        };
        let cached = match &source.cache {
            Some(cache) => cache.block(url, 0, block_bytes).await,
            None => None,
        };
        let (first, len) = match cached {
            Some((blob, len)) if blob.size() as u64 == len.min(block_bytes) => {
                source.http.count(|s| s.cache_hits += 1);
                source.http.expect(len);
                source.loaded(0, blob.size() as u64);
                (blob, len)
            }
            _ => match source.download_first_block().await? {
                Some(found) => found,
                None => return Ok(None),
            },
        };
        source.len = len;
        *source.last.borrow_mut() = Some((0, first));
        Ok(Some(source))
    }

    /// Block 0 and the file's length from the server; `None` on HTTP 404.
    async fn download_first_block(&self) -> Result<Option<(Blob, u64)>> {
        let url = &self.url;
        let response = self.http.get(url, Some((0, self.block_bytes - 1))).await?;
        if response.status() == 404 {
            return Ok(None);
        }
        check_ok(url, &response)?;
        let len = if response.status() == 206 {
            match content_range(&response) {
                Some((0, _, total)) => total,
                Some((first, ..)) => {
                    return Err(Error::Download(format!(
                        "{url}: asked for bytes from 0, the server sent them from {first}"
                    )))
                }
                // A cross-origin server that does not expose Content-Range (Access-Control-
                // Expose-Headers): Content-Length is always readable, so ask with HEAD.
                None => self.http.head_length(url).await?.ok_or_else(|| {
                    Error::Download(format!(
                        "{url}: the file's length is unknown (HTTP 206 without a readable \
                         Content-Range, HEAD without Content-Length)"
                    ))
                })?,
            }
        } else {
            // HTTP 200: the server ignores Range and sends the whole file, acceptable only when it
            // fits in one block.
            let ignored = |size: String| {
                Error::Download(format!(
                    "{url}: the server ignores HTTP Range requests (it answered 200 with {size}); \
                     files over {} bytes need a server that supports Range",
                    self.block_bytes
                ))
            };
            match header_u64(&response, "content-length") {
                Some(n) if n > self.block_bytes => return Err(ignored(format!("{n} bytes"))),
                Some(n) => n,
                None => {
                    let blob = self
                        .http
                        .body(url, &response, None, self.block_bytes, false)
                        .await
                        .map_err(|_| ignored("a body of unknown length".into()))?;
                    let len = blob.size() as u64;
                    self.http
                        .count(|s| s.largest_request = s.largest_request.max(len));
                    self.http.expect(len);
                    self.loaded(0, len);
                    self.keep(0, len, &blob).await;
                    return Ok(Some((blob, len)));
                }
            }
        };
        self.http.expect(len);
        let blob = self
            .receive(0, &response, len.min(self.block_bytes))
            .await?;
        self.keep(0, len, &blob).await;
        Ok(Some((blob, len)))
    }

    /// The body of block `index`'s response, `size` bytes, counted in the progress as it streams
    /// (unless an earlier download of it was).
    async fn receive(&self, index: u64, response: &Response, size: u64) -> Result<Blob> {
        self.http
            .count(|s| s.largest_request = s.largest_request.max(size));
        let live = self.counted.borrow_mut().insert(index);
        self.http
            .body(&self.url, response, Some(size), size, live)
            .await
    }

    /// Stores a downloaded block in the cache.
    async fn keep(&self, index: u64, file_len: u64, blob: &Blob) {
        if let Some(cache) = &self.cache {
            if !cache
                .put_block(&self.url, index, self.block_bytes, file_len, blob)
                .await
            {
                self.http.count(|s| s.cache_write_failures += 1);
            }
        }
    }

    /// Counts block `index` (of `bytes`) in the progress the first time it is obtained.
    fn loaded(&self, index: u64, bytes: u64) {
        if self.counted.borrow_mut().insert(index) {
            self.http.obtained(bytes);
        }
    }

    /// Block `index`: the last one used, the cached one, or a Range request.
    async fn block(&self, index: u64) -> Result<Blob> {
        if let Some((i, blob)) = &*self.last.borrow() {
            if *i == index {
                return Ok(blob.clone());
            }
        }
        let first = index * self.block_bytes;
        let size = self.block_bytes.min(self.len - first);
        let cached = match &self.cache {
            Some(cache) => cache.block(&self.url, index, self.block_bytes).await,
            None => None,
        };
        let blob = match cached {
            Some((blob, len)) if len == self.len && blob.size() as u64 == size => {
                self.http.count(|s| s.cache_hits += 1);
                blob
            }
            _ => {
                let blob = self.download_block(index, first, size).await?;
                self.keep(index, self.len, &blob).await;
                blob
            }
        };
        self.loaded(index, size);
        *self.last.borrow_mut() = Some((index, blob.clone()));
        Ok(blob)
    }

    async fn download_block(&self, index: u64, first: u64, size: u64) -> Result<Blob> {
        let url = &self.url;
        let last = first + size - 1;
        let response = self.http.get(url, Some((first, last))).await?;
        check_ok(url, &response)?;
        if response.status() != 206 {
            return Err(Error::Download(format!(
                "{url}: asked for bytes {first}-{last}, the server answered HTTP {} instead of 206 \
                 (partial content)",
                response.status()
            )));
        }
        match content_range(&response) {
            Some((f, l, total)) if (f, l, total) == (first, last, self.len) => {}
            Some((f, l, total)) => {
                return Err(Error::Download(format!(
                "{url}: asked for bytes {first}-{last} of {}, the server sent {f}-{l} of {total} \
                     (did the file change on the server?)",
                self.len
            )))
            }
            // Not exposed to this origin: the body's exact length is checked instead.
            None => {}
        }
        self.receive(index, &response, size).await
    }

    async fn fill(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(&self.url, offset, buf.len() as u64, self.len)?;
        self.http
            .count(|s| s.largest_read = s.largest_read.max(buf.len() as u64));
        let mut done = 0;
        while done < buf.len() {
            let position = offset + done as u64;
            let index = position / self.block_bytes;
            let within = position - index * self.block_bytes;
            let n = ((self.block_bytes - within) as usize).min(buf.len() - done);
            let blob = self.block(index).await?;
            read_blob_into(&self.url, &blob, within, &mut buf[done..done + n]).await?;
            done += n;
        }
        Ok(())
    }
}

impl TensorSource for RangeSource {
    fn name(&self) -> &str {
        &self.url
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> ReadFuture<'a> {
        Box::pin(self.fill(offset, buf))
    }
}

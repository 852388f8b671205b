//! Byte ranges of checkpoint files behind one async trait: a native file (positioned reads, never
//! loading the whole file), an in-memory buffer (tests), or — in the browser — HTTP Range requests
//! backed by a download cache (`tern-web`). Reads are async so a source may wait on the network;
//! file and memory reads complete at once, and [`complete_now`] runs them without an executor.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::{Error, Result};

/// A source's pending read. `Send` natively (loading may hop threads); on wasm32 sources hold
/// single-threaded JS handles, so neither the sources nor their reads are `Send`.
#[cfg(not(target_arch = "wasm32"))]
pub type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;
/// A source's pending read; not `Send` on wasm32, whose sources hold single-threaded JS handles.
#[cfg(target_arch = "wasm32")]
pub type ReadFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// `Send + Sync` natively, nothing on wasm32 (see [`ReadFuture`]).
#[cfg(not(target_arch = "wasm32"))]
pub trait SourceBounds: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> SourceBounds for T {}
/// No bounds on wasm32, where sources hold single-threaded JS handles.
#[cfg(target_arch = "wasm32")]
pub trait SourceBounds {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> SourceBounds for T {}

/// A random-access byte source holding tensors.
pub trait TensorSource: SourceBounds {
    /// The file name (or URL) used in error messages.
    fn name(&self) -> &str;
    /// Total size in bytes.
    fn len(&self) -> u64;
    /// Whether the source holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; a range past the end is an error naming the file.
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> ReadFuture<'a>;
}

/// Reads `len` bytes at `offset` into a new vector, checking the range before allocating.
pub async fn read_range(src: &dyn TensorSource, offset: u64, len: u64) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    read_range_into(src, offset, len, &mut buf).await?;
    Ok(buf)
}

/// [`read_range`] into `buf` (resized to `len`): a loader reading block after block reuses one
/// buffer instead of faulting in fresh pages for each.
pub async fn read_range_into(
    src: &dyn TensorSource,
    offset: u64,
    len: u64,
    buf: &mut Vec<u8>,
) -> Result<()> {
    check_range(src.name(), offset, len, src.len())?;
    buf.resize(len as usize, 0);
    src.read_at(offset, buf).await
}

/// The result of `work` over sources whose reads complete at once (files, memory, synthetic
/// checkpoints), without an executor; an error if it waits (a network source needs `.await`).
pub fn complete_now<T>(what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    let mut work = std::pin::pin!(work);
    match work.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Err(Error::Invalid(format!(
            "{what}: the source waits for data; read it with the async API"
        ))),
    }
}

/// Checks that `[offset, offset + len)` lies inside a file of `file_len` bytes and fits in memory.
pub fn check_range(name: &str, offset: u64, len: u64, file_len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= file_len && usize::try_from(len).is_ok() => Ok(()),
        _ => Err(Error::format(
            name,
            format!("bytes {offset}+{len}"),
            format!(
                "read past the end of the file ({file_len} bytes): {}",
                super::INCOMPLETE
            ),
        )),
    }
}

/// A checkpoint held in memory.
pub struct BytesSource {
    name: String,
    data: Vec<u8>,
}

impl BytesSource {
    /// `data`, named `name` in errors.
    pub fn new(name: impl Into<String>, data: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            data,
        }
    }
}

impl TensorSource for BytesSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.data.len() as u64
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> ReadFuture<'a> {
        let result = check_range(&self.name, offset, buf.len() as u64, self.len()).map(|()| {
            let start = offset as usize;
            buf.copy_from_slice(&self.data[start..start + buf.len()]);
        });
        Box::pin(std::future::ready(result))
    }
}

/// A checkpoint file on disk, read with positioned reads so threads can share it.
#[cfg(not(target_arch = "wasm32"))]
pub struct FileSource {
    name: String,
    file: std::fs::File,
    len: u64,
}

#[cfg(not(target_arch = "wasm32"))]
impl FileSource {
    /// Opens the regular file at `path`; a missing file is an [`Error::Io`] (`NotFound`).
    pub fn open(path: &std::path::Path) -> Result<Self> {
        Self::open_if_present(path)?.ok_or_else(|| {
            Error::io(
                path.display(),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }

    /// Like [`FileSource::open`], but `None` when nothing is at `path` (a broken link, a directory
    /// or a special file is still an error).
    pub fn open_if_present(path: &std::path::Path) -> Result<Option<Self>> {
        let name = path.display().to_string();
        let Some(file) = open_regular(path)? else {
            return Ok(None);
        };
        let len = file.metadata().map_err(|e| Error::io(&name, e))?.len();
        Ok(Some(Self { name, file, len }))
    }
}

/// The largest limit of [`side_file_limit`].
pub const MAX_SIDE_FILE: u64 = 64 << 20;

/// The largest side file (config, tokenizer, template) a model directory may hold, by name.
/// Real ones are far smaller (a 128k-token `tokenizer.json` is ~9 MiB); a limit keeps a link to
/// `/dev/zero` or a damaged file from filling memory.
pub fn side_file_limit(file_name: &str) -> u64 {
    match file_name {
        "tokenizer.json" => MAX_SIDE_FILE,
        "tokenizer_config.json" | "model.safetensors.index.json" => 16 << 20,
        _ => 1 << 20,
    }
}

/// Reads a side file of a model directory as UTF-8 text: `None` when it does not exist; an error
/// naming the path when it is something else than a regular file of at most
/// [`side_file_limit`] bytes.
#[cfg(not(target_arch = "wasm32"))]
pub fn read_side_file(path: &std::path::Path) -> Result<Option<String>> {
    use std::io::Read;
    let name = path.display().to_string();
    let Some(file) = open_regular(path)? else {
        return Ok(None);
    };
    let limit = side_file_limit(&path.file_name().unwrap_or_default().to_string_lossy());
    let mut text = String::new();
    // `take` holds even if the file grows after it was checked.
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(&name, e))?;
    if text.len() as u64 > limit {
        return Err(Error::format(
            &name,
            "(size)",
            format!(
                "larger than {} MiB, more than any real one: the file is damaged or not what \
                 its name says",
                limit >> 20
            ),
        ));
    }
    Ok(Some(text))
}

/// Opens `path` for reading if it is a regular file (following links); `None` when nothing is
/// there. Directories, FIFOs, devices, sockets, broken links and link loops are errors that say
/// what they are: a FIFO would block and a device never ends.
#[cfg(not(target_arch = "wasm32"))]
fn open_regular(path: &std::path::Path) -> Result<Option<std::fs::File>> {
    let name = path.display().to_string();
    let bad = |what: &str| Err(Error::format(&name, "(file type)", what.to_string()));
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return match std::fs::symlink_metadata(path) {
                Ok(_) => bad("a broken symbolic link (its target does not exist)"),
                Err(_) => Ok(None),
            };
        }
        Err(e) if is_link_loop(&e) => return bad("a symbolic link loop"),
        Err(e) => return Err(Error::io(&name, e)),
    };
    let kind = meta.file_type();
    if kind.is_dir() {
        return bad("a directory, not a file");
    }
    if !kind.is_file() {
        return bad(&format!("{}, not a regular file", special_file_kind(&kind)));
    }
    std::fs::File::open(path)
        .map(Some)
        .map_err(|e| Error::io(&name, e))
}

/// ELOOP, which std has no stable `ErrorKind` for: 40 on Linux, 62 on macOS and the BSDs.
#[cfg(all(not(target_arch = "wasm32"), unix))]
fn is_link_loop(e: &std::io::Error) -> bool {
    let eloop = if cfg!(any(target_os = "linux", target_os = "android")) {
        40
    } else {
        62
    };
    e.raw_os_error() == Some(eloop)
}

#[cfg(all(not(target_arch = "wasm32"), not(unix)))]
fn is_link_loop(_: &std::io::Error) -> bool {
    false
}

#[cfg(all(not(target_arch = "wasm32"), unix))]
fn special_file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(all(not(target_arch = "wasm32"), not(unix)))]
fn special_file_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

#[cfg(not(target_arch = "wasm32"))]
impl TensorSource for FileSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> ReadFuture<'a> {
        let result = check_range(&self.name, offset, buf.len() as u64, self.len).and_then(|()| {
            read_exact_at(&self.file, buf, offset).map_err(|e| Error::io(&self.name, e))
        });
        Box::pin(std::future::ready(result))
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// A memory source whose every read waits once before completing (as a network read does), and
    /// which counts its reads and their largest size.
    pub(crate) struct WaitingSource {
        pub inner: BytesSource,
        pub reads: Arc<AtomicU64>,
        pub largest_read: Arc<AtomicU64>,
    }

    impl WaitingSource {
        pub fn new(name: &str, data: Vec<u8>) -> Self {
            Self {
                inner: BytesSource::new(name, data),
                reads: Arc::default(),
                largest_read: Arc::default(),
            }
        }
    }

    /// Pending on its first poll (waking the task at once), ready on the second.
    struct WaitOnce(bool);

    impl Future for WaitOnce {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    impl TensorSource for WaitingSource {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn read_at<'a>(&'a self, offset: u64, buf: &'a mut [u8]) -> ReadFuture<'a> {
            Box::pin(async move {
                WaitOnce(false).await;
                self.reads.fetch_add(1, Ordering::Relaxed);
                self.largest_read
                    .fetch_max(buf.len() as u64, Ordering::Relaxed);
                self.inner.read_at(offset, buf).await
            })
        }
    }

    #[test]
    fn bytes_source_reads_and_rejects_out_of_range() {
        let s = BytesSource::new("mem.bin", vec![1, 2, 3, 4]);
        let mut b = [0u8; 2];
        complete_now("test", s.read_at(2, &mut b)).unwrap();
        assert_eq!(b, [3, 4]);
        let e = complete_now("test", s.read_at(3, &mut b))
            .unwrap_err()
            .to_string();
        assert!(e.contains("mem.bin"), "{e}");
        assert!(complete_now("test", read_range(&s, u64::MAX, 2)).is_err());
    }

    #[test]
    fn waiting_reads_need_an_executor() {
        let s = WaitingSource::new("net.bin", (0..10).collect());
        let e = complete_now("net.bin header", read_range(&s, 2, 3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("net.bin header") && e.contains("async"), "{e}");
        assert_eq!(
            pollster::block_on(read_range(&s, 2, 3)).unwrap(),
            vec![2, 3, 4]
        );
        let e = pollster::block_on(read_range(&s, 8, 3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("net.bin") && e.contains("past the end"), "{e}");
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn file_source_positioned_reads() {
        let path = std::env::temp_dir().join(format!("tern-source-{}.bin", std::process::id()));
        std::fs::write(&path, [9u8, 8, 7, 6, 5]).unwrap();
        let s = FileSource::open(&path).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(
            complete_now("test", read_range(&s, 1, 3)).unwrap(),
            vec![8, 7, 6]
        );
        assert!(complete_now("test", s.read_at(4, &mut [0u8; 2]))
            .unwrap_err()
            .to_string()
            .contains("tern-source"));
        std::fs::remove_file(&path).unwrap();
    }
}

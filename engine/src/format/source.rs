//! Byte ranges of checkpoint files: a native file (positioned reads, never loading the whole file) or
//! an in-memory buffer (tests, fetched blobs in the browser).

use crate::{Error, Result};

/// A random-access byte source holding tensors.
pub trait TensorSource: Send + Sync {
    /// The file name used in error messages.
    fn name(&self) -> &str;
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from `offset`; a range past the end is an error naming the file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// Reads `len` bytes at `offset` into a new vector, checking the range before allocating.
pub fn read_range(src: &dyn TensorSource, offset: u64, len: u64) -> Result<Vec<u8>> {
    check_range(src.name(), offset, len, src.len())?;
    let mut buf = vec![0u8; len as usize];
    src.read_at(offset, &mut buf)?;
    Ok(buf)
}

fn check_range(name: &str, offset: u64, len: u64, file_len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= file_len && usize::try_from(len).is_ok() => Ok(()),
        _ => Err(Error::format(
            name,
            format!("bytes {offset}+{len}"),
            format!("read past the end of the file ({file_len} bytes)"),
        )),
    }
}

/// A checkpoint held in memory.
pub struct BytesSource {
    name: String,
    data: Vec<u8>,
}

impl BytesSource {
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
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(&self.name, offset, buf.len() as u64, self.len())?;
        let start = offset as usize;
        buf.copy_from_slice(&self.data[start..start + buf.len()]);
        Ok(())
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
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let name = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| Error::io(&name, e))?;
        let len = file.metadata().map_err(|e| Error::io(&name, e))?.len();
        Ok(Self { name, file, len })
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl TensorSource for FileSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        check_range(&self.name, offset, buf.len() as u64, self.len)?;
        read_exact_at(&self.file, buf, offset).map_err(|e| Error::io(&self.name, e))
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
mod tests {
    use super::*;

    #[test]
    fn bytes_source_reads_and_rejects_out_of_range() {
        let s = BytesSource::new("mem.bin", vec![1, 2, 3, 4]);
        let mut b = [0u8; 2];
        s.read_at(2, &mut b).unwrap();
        assert_eq!(b, [3, 4]);
        let e = s.read_at(3, &mut b).unwrap_err().to_string();
        assert!(e.contains("mem.bin"), "{e}");
        assert!(read_range(&s, u64::MAX, 2).is_err());
    }

    #[test]
    #[cfg(not(target_arch = "wasm32"))]
    fn file_source_positioned_reads() {
        let path = std::env::temp_dir().join(format!("tern-source-{}.bin", std::process::id()));
        std::fs::write(&path, [9u8, 8, 7, 6, 5]).unwrap();
        let s = FileSource::open(&path).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(read_range(&s, 1, 3).unwrap(), vec![8, 7, 6]);
        assert!(s
            .read_at(4, &mut [0u8; 2])
            .unwrap_err()
            .to_string()
            .contains("tern-source"));
        std::fs::remove_file(&path).unwrap();
    }
}

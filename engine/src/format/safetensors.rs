//! safetensors headers (8-byte LE length, JSON, data) and sharded checkpoint indexes.
//!
//! [`parse_header`] works on bytes and a file length so the browser can reuse it on fetched ranges.

use super::source::{read_range, TensorSource};
use crate::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;

/// Largest JSON header accepted (the reference implementation's limit).
pub const MAX_HEADER_LEN: u64 = 100 << 20;

/// A tensor's element type, as the header's `dtype` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    /// `BOOL`, 1 byte.
    Bool,
    /// `U8`.
    U8,
    /// `I8`.
    I8,
    /// `U16`.
    U16,
    /// `I16`.
    I16,
    /// `F16`: IEEE half.
    F16,
    /// `BF16`: bfloat16.
    BF16,
    /// `U32`.
    U32,
    /// `I32`.
    I32,
    /// `F32`.
    F32,
    /// `U64`.
    U64,
    /// `I64`.
    I64,
    /// `F64`.
    F64,
    /// `F8_E4M3`: 8-bit float, 4 exponent bits.
    F8E4M3,
    /// `F8_E5M2`: 8-bit float, 5 exponent bits.
    F8E5M2,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "BOOL" => Self::Bool,
            "U8" => Self::U8,
            "I8" => Self::I8,
            "U16" => Self::U16,
            "I16" => Self::I16,
            "F16" => Self::F16,
            "BF16" => Self::BF16,
            "U32" => Self::U32,
            "I32" => Self::I32,
            "F32" => Self::F32,
            "U64" => Self::U64,
            "I64" => Self::I64,
            "F64" => Self::F64,
            "F8_E4M3" => Self::F8E4M3,
            "F8_E5M2" => Self::F8E5M2,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            Self::Bool | Self::U8 | Self::I8 | Self::F8E4M3 | Self::F8E5M2 => 1,
            Self::U16 | Self::I16 | Self::F16 | Self::BF16 => 2,
            Self::U32 | Self::I32 | Self::F32 => 4,
            Self::U64 | Self::I64 | Self::F64 => 8,
        }
    }
}

/// One tensor of a safetensors file; `offset` is absolute within the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (HF naming, e.g. `model.layers.0.self_attn.q_proj.weight`).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions, outermost first (`[rows, cols]` for a weight).
    pub shape: Vec<usize>,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Byte length of the data (elements × [`Dtype::size`], checked).
    pub len: u64,
}

/// A parsed and checked safetensors header: tensors inside the data section, none overlapping.
#[derive(Clone, Debug)]
pub struct Header {
    /// Sorted by offset.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` string pairs (e.g. `format: pt`).
    pub metadata: BTreeMap<String, String>,
    /// First byte of the data section.
    pub data_start: u64,
}

/// Reads the JSON length from the first 8 bytes and checks it against the file size before anyone
/// allocates for it.
pub fn header_len(file: &str, prefix: &[u8], file_len: u64) -> Result<u64> {
    let bytes: [u8; 8] = prefix
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            Error::format(file, "header", "file shorter than the 8-byte header length")
        })?;
    let n = u64::from_le_bytes(bytes);
    if n > MAX_HEADER_LEN || n > file_len.saturating_sub(8) {
        return Err(Error::format(
            file,
            "header",
            format!("header length {n} exceeds the file ({file_len} bytes) or the {MAX_HEADER_LEN}-byte limit: {}", super::INCOMPLETE),
        ));
    }
    Ok(n)
}

/// Parses and validates the JSON header (the bytes after the 8-byte length).
pub fn parse_header(file: &str, json: &[u8], file_len: u64) -> Result<Header> {
    let data_start = 8 + json.len() as u64;
    let data_len = file_len.checked_sub(data_start).ok_or_else(|| {
        Error::format(
            file,
            "header",
            format!(
                "header extends past the end of the file: {}",
                super::INCOMPLETE
            ),
        )
    })?;
    let map: serde_json::Map<String, Value> = serde_json::from_slice(json)
        .map_err(|e| Error::format(file, "header", format!("invalid JSON: {e}")))?;
    let mut tensors = Vec::with_capacity(map.len());
    let mut metadata = BTreeMap::new();
    for (name, v) in map {
        if name == "__metadata__" {
            let obj = v
                .as_object()
                .ok_or_else(|| Error::format(file, "__metadata__", "not an object"))?;
            for (k, v) in obj {
                let s = v.as_str().ok_or_else(|| {
                    Error::format(file, "__metadata__", format!("`{k}` is not a string"))
                })?;
                metadata.insert(k.clone(), s.to_string());
            }
            continue;
        }
        let info = parse_tensor(file, &name, &v, data_start, data_len)?;
        tensors.push(info);
    }
    tensors.sort_by_key(|t| (t.offset, t.len));
    for w in tensors.windows(2) {
        if w[0].offset + w[0].len > w[1].offset {
            return Err(Error::format(
                file,
                &w[1].name,
                format!("data overlaps tensor {}", w[0].name),
            ));
        }
    }
    Ok(Header {
        tensors,
        metadata,
        data_start,
    })
}

fn parse_tensor(
    file: &str,
    name: &str,
    v: &Value,
    data_start: u64,
    data_len: u64,
) -> Result<TensorInfo> {
    let bad = |msg: &str| Error::format(file, name, msg);
    let dtype_s = v
        .get("dtype")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing `dtype`"))?;
    let dtype = Dtype::parse(dtype_s).ok_or_else(|| bad(&format!("unknown dtype {dtype_s}")))?;
    let shape = v
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing `shape`"))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| bad("shape is not a list of non-negative integers"))?;
    let offs = v
        .get("data_offsets")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("missing `data_offsets`"))?;
    let (begin, end) = match offs.as_slice() {
        [b, e] => (b.as_u64(), e.as_u64()),
        _ => (None, None),
    };
    let (begin, end) = begin
        .zip(end)
        .ok_or_else(|| bad("data_offsets is not [begin, end]"))?;
    if begin > end || end > data_len {
        return Err(bad(&format!(
            "data_offsets [{begin}, {end}] outside the data section ({data_len} bytes){}",
            if begin <= end {
                format!(": {}", super::INCOMPLETE)
            } else {
                String::new()
            }
        )));
    }
    let bytes = shape
        .iter()
        .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| bad("shape too large"))?;
    if bytes != end - begin {
        return Err(bad(&format!(
            "{dtype_s} {shape:?} needs {bytes} bytes but data_offsets span {}",
            end - begin
        )));
    }
    Ok(TensorInfo {
        name: name.to_string(),
        dtype,
        shape,
        offset: data_start + begin,
        len: end - begin,
    })
}

/// Reads and validates the header of a safetensors source.
pub async fn read_header(src: &dyn TensorSource) -> Result<Header> {
    let file_len = src.len();
    let first = read_range(src, 0, 8.min(file_len)).await?;
    let n = header_len(src.name(), &first, file_len)?;
    let json = read_range(src, 8, n).await?;
    parse_header(src.name(), &json, file_len)
}

/// The `weight_map` of a `model.safetensors.index.json`: tensor name → shard file name.
pub fn parse_index(file: &str, json: &str) -> Result<BTreeMap<String, String>> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| Error::format(file, "index", format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::format(file, "weight_map", "missing"))?;
    map.iter()
        .map(|(k, v)| {
            let shard = v
                .as_str()
                .ok_or_else(|| Error::format(file, k, "shard name is not a string"))?;
            // Shards must sit beside the index: no paths.
            if shard.is_empty() || shard.contains(['/', '\\']) || shard == ".." {
                return Err(Error::format(
                    file,
                    k,
                    format!("invalid shard file name {shard:?}"),
                ));
            }
            Ok((k.clone(), shard.to_string()))
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a safetensors file from (name, dtype, shape, data).
    pub(crate) fn write(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        with_header(&serde_json::to_string(&header).unwrap(), &data)
    }

    pub(crate) fn with_header(json: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (json.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(json.as_bytes());
        out.extend_from_slice(data);
        out
    }

    fn parse(bytes: &[u8]) -> Result<Header> {
        let src = super::super::source::BytesSource::new("t.safetensors", bytes.to_vec());
        super::super::source::complete_now("t.safetensors", read_header(&src))
    }

    /// Over a source whose reads wait (HTTP Range reads), the header takes two reads — its length,
    /// then its JSON — and no tensor data.
    #[test]
    fn reads_the_header_alone_from_a_waiting_source() {
        use std::sync::atomic::Ordering;
        let json = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
        let src = super::super::source::tests::WaitingSource::new(
            "net.safetensors",
            with_header(json, &[0u8; 16]),
        );
        let header = pollster::block_on(read_header(&src)).unwrap();
        assert_eq!(header.tensors.len(), 1);
        assert_eq!(src.reads.load(Ordering::Relaxed), 2);
        assert_eq!(src.largest_read.load(Ordering::Relaxed), json.len() as u64);
    }

    fn err(bytes: &[u8]) -> String {
        let e = parse(bytes).unwrap_err().to_string();
        assert!(e.contains("t.safetensors"), "{e}");
        e
    }

    #[test]
    fn parses_good_file() {
        let f = write(&[
            ("a", "BF16", vec![2, 3], vec![0; 12]),
            ("b", "U8", vec![4], vec![1; 4]),
        ]);
        let h = parse(&f).unwrap();
        assert_eq!(h.metadata["format"], "pt");
        let a = &h.tensors[0];
        assert_eq!(
            (a.name.as_str(), a.dtype, a.shape.clone(), a.len),
            ("a", Dtype::BF16, vec![2, 3], 12)
        );
        assert_eq!(a.offset, h.data_start);
        assert_eq!(h.tensors[1].offset, h.data_start + 12);
    }

    #[test]
    fn rejects_malformed() {
        let good = write(&[("a", "F32", vec![2], vec![0; 8])]);
        assert!(err(&good[..5]).contains("header"));
        assert!(err(&good[..good.len() - 1]).contains("a"));
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(err(&huge).contains("header length"));
        let e = err(&with_header(
            r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 4],
        ));
        assert!(e.contains("w") && e.contains("outside"), "{e}");
        let e = err(&with_header(
            r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("w") && e.contains("needs 12"), "{e}");
        let e = err(&with_header(
            r#"{"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("w") && e.contains("dtype"), "{e}");
        let e = err(&with_header(
            r#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"y":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            &[0; 6],
        ));
        assert!(e.contains("overlaps"), "{e}");
        let e = err(&with_header(
            r#"{"w":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#,
            &[0; 8],
        ));
        assert!(e.contains("w"), "{e}");
        assert!(err(&with_header("[1,2]", &[])).contains("JSON"));
    }

    #[test]
    fn index_weight_map() {
        let m = parse_index(
            "i.json",
            r#"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(m["b"], "s2.safetensors");
        let e = parse_index("i.json", r#"{"weight_map":{"a":"../x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("i.json") && e.contains("a"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
            let _ = parse(&bytes);
            let mut f = write(&[("a", "BF16", vec![2, 3], vec![0; 12]), ("b", "U8", vec![4], vec![1; 4])]);
            for (i, b) in edits {
                let n = f.len();
                f[i % n] = b;
            }
            let _ = parse(&f);
            let _ = parse(&f[..bytes.len().min(f.len())]);
        }
    }
}

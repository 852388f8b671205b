//! GGUF v2/v3 reader: header, metadata, tensor infos, data offset.
//!
//! Every count, length and offset is untrusted: each is checked against the bytes left in the file
//! before anything is allocated for it. [`parse_prefix`] works on a prefix of the file plus its length
//! (so the browser can fetch the header in ranges); [`read`] grows the prefix from a [`TensorSource`].

use super::source::{read_range, TensorSource};
use crate::{Error, Result};
use std::collections::{BTreeMap, HashSet};

/// Headers larger than this are refused rather than read.
pub const MAX_HEADER_LEN: u64 = 256 << 20;
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_ARRAY_DEPTH: u32 = 8;
const MAX_DIMS: u32 = 4;

/// One GGUF metadata value, typed as the file types it.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// GGUF `uint8`.
    U8(u8),
    /// GGUF `int8`.
    I8(i8),
    /// GGUF `uint16`.
    U16(u16),
    /// GGUF `int16`.
    I16(i16),
    /// GGUF `uint32`.
    U32(u32),
    /// GGUF `int32`.
    I32(i32),
    /// GGUF `uint64`.
    U64(u64),
    /// GGUF `int64`.
    I64(i64),
    /// GGUF `float32`.
    F32(f32),
    /// GGUF `float64`.
    F64(f64),
    /// GGUF `bool`.
    Bool(bool),
    /// GGUF `string` (UTF-8).
    String(String),
    /// GGUF `array`: values of one type, possibly nested arrays.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// Any float, or an integer that [`MetaValue::as_u64`] accepts, as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }
    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }
}

/// The tensor types this engine reads; every other type is rejected while parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// IEEE single precision, 4 bytes a value.
    F32,
    /// IEEE half precision, 2 bytes a value.
    F16,
    /// bfloat16, 2 bytes a value.
    BF16,
    /// bitnet.cpp: n/4 bytes of 2-bit codes, one f32 scale, padding to 32 bytes.
    I2S,
    /// 256-value blocks of 54 bytes.
    Tq1_0,
    /// 256-value blocks of 66 bytes.
    Tq2_0,
}

impl GgmlType {
    fn from_id(id: u32, file: &str, tensor: &str) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            30 => Self::BF16,
            34 => Self::Tq1_0,
            35 => Self::Tq2_0,
            36 => Self::I2S,
            38 | 39 => {
                return Err(Error::format(
                    file,
                    tensor,
                    format!(
                        "tensor type {} is a per-model bitnet.cpp kernel layout, not an interchange format; \
                         use an I2_S, TQ1_0 or TQ2_0 GGUF",
                        type_name(id)
                    ),
                ))
            }
            _ => return Err(Error::format(file, tensor, format!("unsupported tensor type {}", type_name(id)))),
        })
    }

    /// Exact byte size of a tensor of this type with ggml dims `dims` (dims[0] = row length).
    fn byte_size(self, dims: &[u64]) -> Option<u64> {
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
        match self {
            Self::F32 => n.checked_mul(4),
            Self::F16 | Self::BF16 => n.checked_mul(2),
            Self::I2S => (n % 4 == 0).then_some(n / 4 + 32),
            Self::Tq1_0 => dims[0].is_multiple_of(256).then_some(n / 256 * 54),
            Self::Tq2_0 => dims[0].is_multiple_of(256).then_some(n / 256 * 66),
        }
    }

    /// The type's name as ggml spells it (`I2_S`, `TQ2_0`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::I2S => "I2_S",
            Self::Tq1_0 => "TQ1_0",
            Self::Tq2_0 => "TQ2_0",
        }
    }
}

fn type_name(id: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16", "Q4_0_4_4",
        "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "I2_S", "I8_S", "TL1", "TL2",
    ];
    NAMES
        .get(id as usize)
        .map_or_else(|| format!("#{id}"), |n| format!("{n} ({id})"))
}

/// One tensor's info from the header, checked: known type, non-zero dims, aligned, inside the data
/// section, overlapping no other tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensor {
    /// The tensor's name (llama.cpp naming, e.g. `blk.0.attn_q.weight`).
    pub name: String,
    /// How its data is encoded.
    pub ggml_type: GgmlType,
    /// ggml order: `dims[0]` is the row length (input features for a weight).
    pub dims: Vec<u64>,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Exact byte length of the data, from `ggml_type` and `dims`.
    pub len: u64,
}

impl GgufTensor {
    /// Row length (ggml `ne[0]`; `in` for a weight).
    pub fn cols(&self) -> u64 {
        self.dims[0]
    }
    /// Number of rows (product of the other dims; `out` for a weight).
    pub fn rows(&self) -> u64 {
        self.dims[1..].iter().product()
    }
}

/// A parsed GGUF header: everything but the tensor data.
#[derive(Clone, Debug)]
pub struct GgufFile {
    /// Format version (2 or 3).
    pub version: u32,
    /// Every metadata key/value pair, by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// Tensor infos in file order.
    pub tensors: Vec<GgufTensor>,
    /// Data alignment in bytes (`general.alignment`, 32 by default).
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

impl GgufFile {
    /// The metadata value under `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }
    /// `general.architecture` (e.g. `llama`, `bitnet-b1.58`), if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }
}

/// Why the cursor stopped: the prefix ended inside the file, or the file itself is bad.
enum Stop {
    NeedMore,
    Bad(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Self {
        Stop::Bad(e)
    }
}

type PResult<T> = std::result::Result<T, Stop>;

struct Cursor<'a> {
    file: &'a str,
    buf: &'a [u8],
    pos: u64,
    file_len: u64,
}

impl<'a> Cursor<'a> {
    fn left_in_file(&self) -> u64 {
        self.file_len.saturating_sub(self.pos)
    }

    fn take(&mut self, n: u64, what: &str) -> PResult<&'a [u8]> {
        if n > self.left_in_file() {
            return Err(Stop::Bad(Error::format(
                self.file,
                what,
                format!(
                    "needs {n} bytes at offset {} but the file has {}: {}",
                    self.pos,
                    self.file_len,
                    super::INCOMPLETE
                ),
            )));
        }
        let start = self.pos as usize;
        let end = self.pos + n;
        if end > self.buf.len() as u64 {
            return Err(Stop::NeedMore);
        }
        self.pos = end;
        Ok(&self.buf[start..end as usize])
    }

    fn array<const N: usize>(&mut self, what: &str) -> PResult<[u8; N]> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("take returns N bytes"))
    }
    fn u32(&mut self, what: &str) -> PResult<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> PResult<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> PResult<String> {
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Stop::Bad(Error::format(self.file, what, "string is not UTF-8")))
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in the rest of the file.
    fn count(&self, count: u64, min_size: u64, what: &str) -> PResult<usize> {
        match count.checked_mul(min_size) {
            Some(n) if n <= self.left_in_file() => Ok(count as usize),
            _ => Err(Stop::Bad(Error::format(
                self.file,
                what,
                format!(
                    "count {count} cannot fit in the {} bytes left in the file: {}",
                    self.left_in_file(),
                    super::INCOMPLETE
                ),
            ))),
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> PResult<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(self.array::<1>(key)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => {
                    return Err(Stop::Bad(Error::format(
                        self.file,
                        key,
                        format!("invalid bool byte {b}"),
                    )))
                }
            },
            8 => MetaValue::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Stop::Bad(Error::format(
                        self.file,
                        key,
                        "arrays nested too deeply",
                    )));
                }
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                let n = self.count(n, min_value_size(elem), key)?;
                // Capacity grows with bytes actually parsed, not with the untrusted count.
                let mut items = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            t => {
                return Err(Stop::Bad(Error::format(
                    self.file,
                    key,
                    format!("unknown metadata value type {t}"),
                )))
            }
        })
    }
}

fn min_value_size(ty: u32) -> u64 {
    match ty {
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}

/// Parses the GGUF header from `prefix`, the first bytes of a file of `file_len` bytes.
/// `Ok(None)`: the header continues past the prefix; call again with a longer one.
pub fn parse_prefix(file: &str, prefix: &[u8], file_len: u64) -> Result<Option<GgufFile>> {
    match parse_inner(file, prefix, file_len) {
        Ok(g) => Ok(Some(g)),
        Err(Stop::NeedMore) => Ok(None),
        Err(Stop::Bad(e)) => Err(e),
    }
}

fn parse_inner(file: &str, prefix: &[u8], file_len: u64) -> PResult<GgufFile> {
    let mut c = Cursor {
        file,
        buf: prefix,
        pos: 0,
        file_len,
    };
    if c.take(4, "magic")? != b"GGUF" {
        return Err(Error::format(file, "magic", "not a GGUF file").into());
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(Error::format(
            file,
            "version",
            format!("unsupported GGUF version {version} (need 2 or 3)"),
        )
        .into());
    }
    let n_tensors = c.u64("tensor_count")?;
    let n_kv = c.u64("metadata_kv_count")?;
    // A tensor info is at least 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset) bytes; a KV at least 13.
    let n_tensors = c.count(n_tensors, 24, "tensor_count")?;
    let n_kv = c.count(n_kv, 13, "metadata_kv_count")?;
    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&key)?;
        let v = c.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), v).is_some() {
            return Err(Error::format(file, &key, "duplicate metadata key").into());
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 20 => a,
            _ => {
                return Err(Error::format(
                    file,
                    "general.alignment",
                    format!("invalid alignment {v:?}"),
                )
                .into())
            }
        },
    };
    let mut raw = Vec::with_capacity(n_tensors.min(4096));
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::format(
                file,
                &name,
                format!("{n_dims} dimensions (1..={MAX_DIMS} allowed)"),
            )
            .into());
        }
        let dims = (0..n_dims)
            .map(|_| c.u64(&name))
            .collect::<PResult<Vec<u64>>>()?;
        let ty = c.u32(&name)?;
        let offset = c.u64(&name)?;
        raw.push((name, dims, ty, offset));
    }
    let data_offset = c.pos.div_ceil(alignment) * alignment;
    let data_len = file_len.checked_sub(data_offset).ok_or_else(|| {
        Error::format(
            file,
            "data",
            format!(
                "data section starts at {data_offset}, past the end ({file_len} bytes): {}",
                super::INCOMPLETE
            ),
        )
    })?;
    let mut names = HashSet::new();
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, ty, offset) in raw {
        if !names.insert(name.clone()) {
            return Err(Error::format(file, &name, "duplicate tensor name").into());
        }
        let ggml_type = GgmlType::from_id(ty, file, &name)?;
        if dims.contains(&0) {
            return Err(Error::format(file, &name, format!("zero dimension in {dims:?}")).into());
        }
        let len = ggml_type.byte_size(&dims).ok_or_else(|| {
            Error::format(
                file,
                &name,
                format!("dims {dims:?} are invalid for type {}", ggml_type.name()),
            )
        })?;
        if offset % alignment != 0 {
            return Err(Error::format(
                file,
                &name,
                format!("offset {offset} is not aligned to {alignment}"),
            )
            .into());
        }
        if offset.checked_add(len).is_none_or(|end| end > data_len) {
            return Err(Error::format(
                file,
                &name,
                format!(
                    "data [{offset}, +{len}) outside the data section ({data_len} bytes): {}",
                    super::INCOMPLETE
                ),
            )
            .into());
        }
        tensors.push(GgufTensor {
            name,
            ggml_type,
            dims,
            offset: data_offset + offset,
            len,
        });
    }
    let mut by_offset: Vec<&GgufTensor> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].len > w[1].offset {
            return Err(Error::format(
                file,
                &w[1].name,
                format!("data overlaps tensor {}", w[0].name),
            )
            .into());
        }
    }
    Ok(GgufFile {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// Reads the header from a source, fetching a longer prefix while the header runs past it.
pub async fn read(src: &dyn TensorSource) -> Result<GgufFile> {
    let file_len = src.len();
    let mut want = (4u64 << 20).min(file_len);
    loop {
        let prefix = read_range(src, 0, want).await?;
        if let Some(g) = parse_prefix(src.name(), &prefix, file_len)? {
            return Ok(g);
        }
        if want >= MAX_HEADER_LEN {
            return Err(Error::format(
                src.name(),
                "header",
                format!("larger than {MAX_HEADER_LEN} bytes"),
            ));
        }
        want = (want * 2).min(file_len).min(MAX_HEADER_LEN);
    }
}

/// Undoes llama.cpp's q/k row permutation (GGUF `llama` architecture: Llama3-8B-1.58, Falcon3).
/// Its converter reorders each head's rows for interleaved RoPE: file row `2j + i` of a head holds
/// the rotate_half row `i·head_dim/2 + j` that the HF layout (and this engine) uses. The first
/// `rows · row_bytes` bytes are whole rows in the file layout; anything after them (I2_S's scale and
/// padding) is kept in place.
pub fn unpermute_rope_rows(
    file: &str,
    tensor: &str,
    data: &[u8],
    rows: usize,
    row_bytes: usize,
    head_dim: usize,
) -> Result<Vec<u8>> {
    let fits = rows.checked_mul(row_bytes).is_some_and(|n| n <= data.len());
    if !fits || head_dim == 0 || !head_dim.is_multiple_of(2) || !rows.is_multiple_of(head_dim) {
        return Err(Error::format(
            file,
            tensor,
            format!(
                "cannot undo the RoPE row permutation: {rows} rows of {row_bytes} bytes in {} \
                 bytes, head_dim {head_dim}",
                data.len()
            ),
        ));
    }
    let half = head_dim / 2;
    let mut out = data.to_vec();
    for head in (0..rows).step_by(head_dim) {
        for i in 0..2 {
            for j in 0..half {
                let from = (head + 2 * j + i) * row_bytes;
                let to = (head + i * half + j) * row_bytes;
                out[to..to + row_bytes].copy_from_slice(&data[from..from + row_bytes]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::format::source::tests::WaitingSource;
    use crate::format::source::{complete_now, BytesSource};
    use proptest::prelude::*;
    use std::sync::atomic::Ordering;

    /// A minimal GGUF writer for tests.
    #[derive(Default)]
    pub(crate) struct Writer {
        pub kv: Vec<u8>,
        pub n_kv: u64,
        pub infos: Vec<u8>,
        pub n_tensors: u64,
        pub data: Vec<u8>,
    }

    pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    impl Writer {
        pub fn kv_raw(&mut self, key: &str, ty: u32, value: &[u8]) -> &mut Self {
            put_str(&mut self.kv, key);
            self.kv.extend_from_slice(&ty.to_le_bytes());
            self.kv.extend_from_slice(value);
            self.n_kv += 1;
            self
        }
        pub fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
            self.kv_raw(key, 4, &v.to_le_bytes())
        }
        pub fn kv_f32(&mut self, key: &str, v: f32) -> &mut Self {
            self.kv_raw(key, 6, &v.to_le_bytes())
        }
        pub fn kv_str(&mut self, key: &str, v: &str) -> &mut Self {
            let mut b = Vec::new();
            put_str(&mut b, v);
            self.kv_raw(key, 8, &b)
        }
        pub fn kv_strs(&mut self, key: &str, v: &[&str]) -> &mut Self {
            let mut b = 8u32.to_le_bytes().to_vec();
            b.extend_from_slice(&(v.len() as u64).to_le_bytes());
            for s in v {
                put_str(&mut b, s);
            }
            self.kv_raw(key, 9, &b)
        }
        /// Adds a tensor with ggml dims and its data, aligned to 32.
        pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: &[u8]) -> &mut Self {
            self.data.resize(self.data.len().div_ceil(32) * 32, 0);
            self.tensor_info(name, dims, ty, self.data.len() as u64);
            self.data.extend_from_slice(data);
            self
        }
        /// Adds only a tensor info, with any offset.
        pub fn tensor_info(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
            put_str(&mut self.infos, name);
            self.infos
                .extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                self.infos.extend_from_slice(&d.to_le_bytes());
            }
            self.infos.extend_from_slice(&ty.to_le_bytes());
            self.infos.extend_from_slice(&offset.to_le_bytes());
            self.n_tensors += 1;
            self
        }
        pub fn finish(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend_from_slice(&3u32.to_le_bytes());
            out.extend_from_slice(&self.n_tensors.to_le_bytes());
            out.extend_from_slice(&self.n_kv.to_le_bytes());
            out.extend_from_slice(&self.kv);
            out.extend_from_slice(&self.infos);
            out.resize(out.len().div_ceil(32) * 32, 0);
            out.extend_from_slice(&self.data);
            out
        }
    }

    fn parse(bytes: &[u8]) -> Result<GgufFile> {
        complete_now("t.gguf", read(&BytesSource::new("t.gguf", bytes.to_vec())))
    }

    /// Over a source whose reads wait (as HTTP Range reads do), a header longer than the first
    /// 4 MiB prefix is read by growing the prefix.
    #[test]
    fn reads_a_long_header_from_a_waiting_source() {
        let mut w = sample();
        let long = "x".repeat(5 << 20);
        w.kv_str("general.description", &long);
        let bytes = w.finish();
        let src = WaitingSource::new("net.gguf", bytes);
        let g = pollster::block_on(read(&src)).unwrap();
        assert_eq!(
            g.metadata
                .get("general.description")
                .and_then(MetaValue::as_str),
            Some(long.as_str())
        );
        assert_eq!(src.reads.load(Ordering::Relaxed), 2, "4 MiB, then 8 MiB");
        let e = complete_now("net.gguf", read(&src))
            .unwrap_err()
            .to_string();
        assert!(e.contains("async"), "{e}");
    }

    fn err(bytes: &[u8]) -> String {
        let e = parse(bytes).unwrap_err().to_string();
        assert!(e.contains("t.gguf"), "{e}");
        e
    }

    fn sample() -> Writer {
        let mut w = Writer::default();
        w.kv_str("general.architecture", "bitnet-b1.58")
            .kv_u32("bitnet-b1.58.block_count", 2)
            .kv_strs("tokenizer.ggml.tokens", &["a", "b", "c"]);
        // Nested array: [[1u8, 2u8], []]
        let mut nested = 9u32.to_le_bytes().to_vec();
        nested.extend_from_slice(&2u64.to_le_bytes());
        for items in [&[1u8, 2][..], &[][..]] {
            nested.extend_from_slice(&0u32.to_le_bytes());
            nested.extend_from_slice(&(items.len() as u64).to_le_bytes());
            nested.extend_from_slice(items);
        }
        w.kv_raw("test.nested", 9, &nested);
        w.tensor("norm", &[8], 0, &[0; 32]);
        w.tensor("q", &[128, 4], 36, &[0; 128 * 4 / 4 + 32]);
        w.tensor("t2", &[256, 2], 35, &[0; 132]);
        w.tensor("t1", &[256, 1], 34, &[0; 54]);
        w.tensor("e", &[4, 3], 1, &[0; 24]);
        w
    }

    #[test]
    fn parses_good_file() {
        let g = parse(&sample().finish()).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.architecture(), Some("bitnet-b1.58"));
        assert_eq!(
            g.get("bitnet-b1.58.block_count")
                .and_then(MetaValue::as_u64),
            Some(2)
        );
        assert_eq!(
            g.get("tokenizer.ggml.tokens")
                .and_then(MetaValue::as_array)
                .map(<[_]>::len),
            Some(3)
        );
        let nested = g.get("test.nested").and_then(MetaValue::as_array).unwrap();
        assert_eq!(
            nested[0],
            MetaValue::Array(vec![MetaValue::U8(1), MetaValue::U8(2)])
        );
        assert_eq!(g.alignment, 32);
        assert_eq!(g.data_offset % 32, 0);
        let q = &g.tensors[1];
        assert_eq!(
            (q.ggml_type, q.rows(), q.cols(), q.len),
            (GgmlType::I2S, 4, 128, 160)
        );
        assert_eq!(q.offset, g.data_offset + 32);
        assert_eq!(g.tensors[2].len, 132);
        assert_eq!(g.tensors[3].len, 54);
        // The header is found even when the first prefix is too short.
        let bytes = sample().finish();
        assert!(parse_prefix("t.gguf", &bytes[..40], bytes.len() as u64)
            .unwrap()
            .is_none());
    }

    #[test]
    fn rejects_malformed() {
        let good = sample().finish();
        assert!(err(&good[..30]).contains("tensor_count"));
        for cut in [100, 300, good.len() / 2] {
            err(&good[..cut]);
        }
        assert!(err(&good[..good.len() - 10]).contains("outside the data section"));
        let mut w = Writer::default();
        w.kv_raw("huge.string", 8, &(1u64 << 60).to_le_bytes());
        let e = err(&w.finish());
        assert!(e.contains("huge.string"), "{e}");
        let mut bytes = sample().finish();
        bytes[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
        assert!(err(&bytes).contains("tensor_count"));
        let mut w = Writer::default();
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend_from_slice(&(1u64 << 40).to_le_bytes());
        w.kv_raw("huge.array", 9, &arr);
        assert!(err(&w.finish()).contains("huge.array"));
        let mut w = Writer::default();
        w.tensor("w", &[32, 2], 8, &[0; 68]);
        assert!(err(&w.finish()).contains("unsupported tensor type Q8_0"));
        let mut w = Writer::default();
        w.tensor("w", &[32, 2], 38, &[0; 68]);
        let e = err(&w.finish());
        assert!(e.contains("w: tensor type TL1"), "{e}");
        let mut w = Writer::default();
        w.tensor("w", &[100, 2], 35, &[0; 132]);
        assert!(err(&w.finish()).contains("invalid for type TQ2_0"));
        let mut w = Writer::default();
        w.tensor("a", &[8], 0, &[0; 32])
            .tensor_info("b", &[8], 0, 0);
        let bytes = w.finish();
        assert!(err(&bytes).contains("overlaps"));
        let mut w = Writer::default();
        w.tensor("m", &[8], 0, &[0; 32]);
        let mut bytes = w.finish();
        bytes[4] = 1;
        assert!(err(&bytes).contains("version"));
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300),
                        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
            let _ = parse(&bytes);
            let mut f = sample().finish();
            for (i, b) in edits {
                let n = f.len();
                f[i % n] = b;
            }
            let _ = parse(&f);
            let _ = parse(&f[..bytes.len().min(f.len())]);
        }
    }

    #[test]
    fn unpermute_rope_rows_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(heads, 2, hd/2, ...).swapaxes(1, 2): file row h·hd + 2j + i holds
        // HF row h·hd + i·hd/2 + j. Rows of 3 bytes, 2 heads of head_dim 4, a 2-byte tail.
        let (rows, row_bytes, hd) = (8, 3, 4);
        let hf: Vec<u8> = (0..rows * row_bytes)
            .map(|b| b as u8)
            .chain([0xAA, 0xBB])
            .collect();
        let mut file = hf.clone();
        for h in 0..rows / hd {
            for i in 0..2 {
                for j in 0..hd / 2 {
                    let (f, r) = (h * hd + 2 * j + i, h * hd + i * hd / 2 + j);
                    file[f * row_bytes..][..row_bytes]
                        .copy_from_slice(&hf[r * row_bytes..][..row_bytes]);
                }
            }
        }
        assert_ne!(file, hf);
        let undone = unpermute_rope_rows("f.gguf", "q", &file, rows, row_bytes, hd).unwrap();
        assert_eq!(undone, hf);
        let e = unpermute_rope_rows("f.gguf", "blk.0.attn_q.weight", &file, 6, row_bytes, hd)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("f.gguf") && e.contains("blk.0.attn_q.weight"),
            "{e}"
        );
        assert!(unpermute_rope_rows("f.gguf", "q", &file, rows, 4, hd).is_err());
    }
}

//! NumPy `.npy` files: header versions 1.0, 2.0 and 3.0, C order, dtypes `|u1`, `<i4` and `<i8`.
//!
//! Images are stored as uint8 (N,H,W) or (N,H,W,C); labels as one-dimensional int64 (what
//! `np.save` produces for a Python int list), int32 or uint8.
//!
//! [`NpyFile`] reads the header only and then seeks, so a slice of rows (one severity of a
//! CIFAR-10-C file) can be read without loading the whole array. [`parse`] does the same checks on
//! bytes in memory. Neither trusts the header: sizes are computed with overflow checks and compared
//! with the real length before allocating.

use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};
use crate::fsutil::{read_up_to, write_atomic};

/// The six bytes every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// NumPy itself refuses headers above 10 000 bytes by default; anything near this cap is a lie.
const MAX_HEADER_LEN: usize = 1 << 20;
/// NumPy's own limit on the number of dimensions.
const MAX_DIMS: usize = 64;
/// Bounds the recursion of the header parser on inputs like `((((((...`.
const MAX_NESTING: usize = 16;
/// Header (magic + version + length + dict) is padded to a multiple of this, as NumPy does.
const ALIGN: usize = 64;

/// Element types this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    /// `|u1`
    U8,
    /// `<i4`
    I32,
    /// `<i8`
    I64,
}

impl Dtype {
    /// The descriptor string NumPy writes for this type.
    pub fn descr(self) -> &'static str {
        match self {
            Dtype::U8 => "|u1",
            Dtype::I32 => "<i4",
            Dtype::I64 => "<i8",
        }
    }

    pub fn item_size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::I32 => 4,
            Dtype::I64 => 8,
        }
    }

    /// Parses a descriptor; byte order is irrelevant for one-byte types, so `<u1`, `>u1` and `u1`
    /// are accepted as well. `=` (native) is little-endian on every platform this runs on.
    pub fn from_descr(s: &str) -> Option<Dtype> {
        match s {
            "|u1" | "<u1" | ">u1" | "=u1" | "u1" | "B" | "uint8" => Some(Dtype::U8),
            "<i4" | "=i4" => Some(Dtype::I32),
            "<i8" | "=i8" => Some(Dtype::I64),
            _ => None,
        }
    }
}

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version (major, minor).
    pub version: (u8, u8),
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte offset of the data from the start of the file.
    pub data_offset: u64,
}

impl Header {
    /// Number of elements (product of the shape; 1 for a 0-d array).
    pub fn num_elements(&self) -> usize {
        // Checked when the header was parsed.
        self.shape.iter().product()
    }

    /// Size of the data in bytes.
    pub fn data_bytes(&self) -> u64 {
        self.num_elements() as u64 * self.dtype.item_size() as u64
    }

    /// Bytes per row (one index of the first dimension).
    pub fn row_bytes(&self) -> usize {
        self.shape.iter().skip(1).product::<usize>() * self.dtype.item_size()
    }
}

/// The elements of an array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NpyData {
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
}

impl NpyData {
    pub fn dtype(&self) -> Dtype {
        match self {
            NpyData::U8(_) => Dtype::U8,
            NpyData::I32(_) => Dtype::I32,
            NpyData::I64(_) => Dtype::I64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            NpyData::U8(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn from_le_bytes(dtype: Dtype, bytes: Vec<u8>) -> NpyData {
        match dtype {
            Dtype::U8 => NpyData::U8(bytes),
            Dtype::I32 => NpyData::I32(
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Dtype::I64 => NpyData::I64(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
        }
    }

    /// Labels as u32; negative or too large values are a [`DataError::BadLabel`] naming `path`.
    /// `first_index` offsets the index in that error (for slices of a larger file).
    pub fn to_labels(&self, path: &Path, first_index: usize) -> Result<Vec<u32>> {
        let bad = |index: usize, value: i64| DataError::BadLabel {
            path: path.to_path_buf(),
            index: first_index + index,
            value,
            limit: u64::from(u32::MAX) + 1,
        };
        match self {
            NpyData::U8(v) => Ok(v.iter().map(|&x| u32::from(x)).collect()),
            NpyData::I32(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| u32::try_from(x).map_err(|_| bad(i, x.into())))
                .collect(),
            NpyData::I64(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| u32::try_from(x).map_err(|_| bad(i, x)))
                .collect(),
        }
    }
}

/// A whole array in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

/// Reads a header from the start of `r`; `path` is only used in errors.
pub fn read_header(r: &mut dyn Read, path: &Path) -> Result<Header> {
    let truncated = |expected: usize, got: usize| DataError::Truncated {
        path: path.to_path_buf(),
        expected_bytes: expected as u64,
        got: got as u64,
    };
    let mut pre = [0u8; 8];
    let got = read_up_to(r, &mut pre).map_err(|e| DataError::io(path, e))?;
    if got < 6 || &pre[..6] != MAGIC {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: escape(MAGIC),
            found: escape(&pre[..got.min(6)]),
        });
    }
    if got < 8 {
        return Err(truncated(8, got));
    }
    let version = (pre[6], pre[7]);
    let len_bytes = match version.0 {
        1 => 2,
        2 | 3 => 4,
        _ => {
            return Err(DataError::bad_header(
                path,
                format!(
                    "format version {}.{} (only 1.0, 2.0 and 3.0 exist)",
                    version.0, version.1
                ),
            ))
        }
    };
    let mut lb = [0u8; 4];
    let got = read_up_to(r, &mut lb[..len_bytes]).map_err(|e| DataError::io(path, e))?;
    if got < len_bytes {
        return Err(truncated(8 + len_bytes, 8 + got));
    }
    let header_len = u32::from_le_bytes(lb) as usize;
    if header_len > MAX_HEADER_LEN {
        return Err(DataError::bad_header(
            path,
            format!("declared header length {header_len} exceeds {MAX_HEADER_LEN} bytes"),
        ));
    }
    let prefix = 8 + len_bytes;
    // Grows with what is really there instead of trusting the declared length.
    let mut raw = Vec::new();
    Read::take(&mut *r, header_len as u64)
        .read_to_end(&mut raw)
        .map_err(|e| DataError::io(path, e))?;
    if raw.len() < header_len {
        return Err(truncated(prefix + header_len, prefix + raw.len()));
    }
    // Versions 1 and 2 are latin-1, where every byte is the code point of the same value.
    let text: String = if version.0 == 3 {
        String::from_utf8(raw)
            .map_err(|_| DataError::bad_header(path, "version 3.0 header is not valid UTF-8"))?
    } else {
        raw.iter().map(|&b| char::from(b)).collect()
    };
    let dict = parse_dict(&text).map_err(|reason| DataError::bad_header(path, reason))?;

    let get = |key: &str| {
        dict.iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| DataError::bad_header(path, format!("no '{key}' key in {text:?}")))
    };
    let dtype = match get("descr")? {
        Value::Str(s) => Dtype::from_descr(s).ok_or_else(|| DataError::UnknownDtype {
            path: path.to_path_buf(),
            dtype: format!("'{s}' (supported: '|u1', '<i4', '<i8')"),
        })?,
        other => {
            return Err(DataError::UnknownDtype {
                path: path.to_path_buf(),
                dtype: format!("{other} (structured dtypes are not supported)"),
            })
        }
    };
    match get("fortran_order")? {
        Value::Bool(false) => {}
        Value::Bool(true) => {
            return Err(DataError::Unsupported {
                path: path.to_path_buf(),
                what: "fortran_order is True (column-major data); only C order is read; \
                       re-save with np.save(f, np.ascontiguousarray(a))"
                    .into(),
            })
        }
        other => {
            return Err(DataError::bad_header(
                path,
                format!("fortran_order is {other}, not True or False"),
            ))
        }
    }
    let shape = match get("shape")? {
        Value::Tuple(items) | Value::List(items) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) => usize::try_from(*i).map_err(|_| {
                    DataError::bad_header(path, format!("shape entry {i} is not a size"))
                }),
                other => Err(DataError::bad_header(
                    path,
                    format!("shape entry {other} is not an integer"),
                )),
            })
            .collect::<Result<Vec<usize>>>()?,
        other => {
            return Err(DataError::bad_header(
                path,
                format!("shape {other} is not a tuple"),
            ))
        }
    };
    if shape.len() > MAX_DIMS {
        return Err(DataError::bad_header(
            path,
            format!("{} dimensions (NumPy allows {MAX_DIMS})", shape.len()),
        ));
    }
    let elements = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
    let bytes = elements.and_then(|n| n.checked_mul(dtype.item_size() as u64));
    match bytes {
        Some(b) if b <= isize::MAX as u64 => {}
        _ => {
            return Err(DataError::bad_header(
                path,
                format!("shape {shape:?} is too large to address"),
            ))
        }
    }
    Ok(Header {
        version,
        dtype,
        shape,
        data_offset: (prefix + header_len) as u64,
    })
}

/// Checks the file length against the header, so a lying header is caught before allocating.
fn check_len(header: &Header, total: u64, path: &Path) -> Result<()> {
    let expected = header.data_offset + header.data_bytes();
    if total < expected {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            expected_bytes: expected,
            got: total,
        });
    }
    if total > expected {
        return Err(DataError::TrailingData {
            path: path.to_path_buf(),
            expected_bytes: expected,
            got: total,
        });
    }
    Ok(())
}

/// Parses a whole `.npy` file held in memory; `path` is only used in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    let mut cur = Cursor::new(bytes);
    let header = read_header(&mut cur, path)?;
    check_len(&header, bytes.len() as u64, path)?;
    let data = bytes[header.data_offset as usize..].to_vec();
    Ok(NpyArray {
        data: NpyData::from_le_bytes(header.dtype, data),
        shape: header.shape,
    })
}

/// An open `.npy` file whose header has been read and checked against the file length.
#[derive(Debug)]
pub struct NpyFile {
    path: PathBuf,
    file: File,
    header: Header,
}

impl NpyFile {
    pub fn open(path: &Path) -> Result<NpyFile> {
        let mut file =
            File::open(path).map_err(|e| DataError::open(path, e, "no such .npy file"))?;
        let total = file.metadata().map_err(|e| DataError::io(path, e))?.len();
        let header = read_header(&mut io::BufReader::new(&mut file), path)?;
        check_len(&header, total, path)?;
        Ok(NpyFile {
            path: path.to_path_buf(),
            file,
            header,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    pub fn shape(&self) -> &[usize] {
        &self.header.shape
    }

    pub fn dtype(&self) -> Dtype {
        self.header.dtype
    }

    /// Size of the first dimension.
    pub fn rows(&self) -> Result<usize> {
        self.header
            .shape
            .first()
            .copied()
            .ok_or_else(|| DataError::BadShape {
                path: self.path.clone(),
                shape: vec![],
                reason: "a 0-d array has no rows".into(),
            })
    }

    /// Rows `start..start + count`, reading only those bytes.
    pub fn read_rows(&mut self, start: usize, count: usize) -> Result<NpyData> {
        let rows = self.rows()?;
        let end = start
            .checked_add(count)
            .filter(|&e| e <= rows)
            .ok_or_else(|| {
                DataError::invalid(
                    &self.path,
                    format!(
                        "rows {start}..{start}+{count} are outside the {rows} rows of the file"
                    ),
                )
            })?;
        let row_bytes = self.header.row_bytes() as u64;
        let offset = self.header.data_offset + start as u64 * row_bytes;
        let len = ((end - start) as u64 * row_bytes) as usize;
        let path = &self.path;
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| DataError::io(path, e))?;
        let mut buf = vec![0u8; len];
        self.file.read_exact(&mut buf).map_err(|e| {
            // The length was checked at open; a short read means the file shrank since.
            if e.kind() == io::ErrorKind::UnexpectedEof {
                DataError::Truncated {
                    path: path.clone(),
                    expected_bytes: offset + len as u64,
                    got: offset,
                }
            } else {
                DataError::io(path, e)
            }
        })?;
        Ok(NpyData::from_le_bytes(self.header.dtype, buf))
    }

    /// Rows `start..start + count` of a uint8 array.
    pub fn read_rows_u8(&mut self, start: usize, count: usize) -> Result<Vec<u8>> {
        self.expect_dtype(Dtype::U8)?;
        match self.read_rows(start, count)? {
            NpyData::U8(v) => Ok(v),
            _ => unreachable!("dtype checked above"),
        }
    }

    /// Labels `start..start + count` of a one-dimensional integer array.
    pub fn read_rows_labels(&mut self, start: usize, count: usize) -> Result<Vec<u32>> {
        if self.header.shape.len() != 1 {
            return Err(DataError::BadShape {
                path: self.path.clone(),
                shape: self.header.shape.clone(),
                reason: "labels must be one-dimensional".into(),
            });
        }
        self.read_rows(start, count)?.to_labels(&self.path, start)
    }

    /// The whole array.
    pub fn read_all(&mut self) -> Result<NpyArray> {
        let data = if self.header.shape.is_empty() {
            // A 0-d array: one element and no rows to slice.
            let mut buf = vec![0u8; self.header.dtype.item_size()];
            self.file
                .seek(SeekFrom::Start(self.header.data_offset))
                .and_then(|_| self.file.read_exact(&mut buf))
                .map_err(|e| DataError::io(&self.path, e))?;
            NpyData::from_le_bytes(self.header.dtype, buf)
        } else {
            let rows = self.rows()?;
            self.read_rows(0, rows)?
        };
        Ok(NpyArray {
            shape: self.header.shape.clone(),
            data,
        })
    }

    fn expect_dtype(&self, want: Dtype) -> Result<()> {
        if self.header.dtype != want {
            return Err(DataError::UnknownDtype {
                path: self.path.clone(),
                dtype: format!(
                    "'{}' where '{}' is required",
                    self.header.dtype.descr(),
                    want.descr()
                ),
            });
        }
        Ok(())
    }
}

/// Reads a whole file.
pub fn read(path: &Path) -> Result<NpyArray> {
    NpyFile::open(path)?.read_all()
}

/// Reads a uint8 array: (shape, data).
pub fn read_u8(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let mut f = NpyFile::open(path)?;
    f.expect_dtype(Dtype::U8)?;
    let a = f.read_all()?;
    match a.data {
        NpyData::U8(v) => Ok((a.shape, v)),
        _ => unreachable!("dtype checked above"),
    }
}

/// Reads a one-dimensional integer array as labels.
pub fn read_labels(path: &Path) -> Result<Vec<u32>> {
    let mut f = NpyFile::open(path)?;
    let rows = f.rows()?;
    f.read_rows_labels(0, rows)
}

/// The header bytes NumPy would write for `dtype` and `shape` (version 1.0 unless the header needs
/// more than 65 535 bytes, which takes version 2.0).
pub fn header_bytes(dtype: Dtype, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_repr = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}",
        dtype.descr(),
        shape_repr
    );
    let build = |len_bytes: usize, major: u8| {
        let unpadded = MAGIC.len() + 2 + len_bytes + dict.len() + 1;
        let pad = (ALIGN - unpadded % ALIGN) % ALIGN;
        let header_len = dict.len() + pad + 1;
        let mut out = Vec::with_capacity(unpadded + pad);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[major, 0]);
        if len_bytes == 2 {
            out.extend_from_slice(&(header_len as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(header_len as u32).to_le_bytes());
        }
        out.extend_from_slice(dict.as_bytes());
        out.resize(out.len() + pad, b' ');
        out.push(b'\n');
        (out, header_len)
    };
    let (v1, len) = build(2, 1);
    if len <= u16::MAX as usize {
        v1
    } else {
        build(4, 2).0
    }
}

fn check_shape(path: &Path, shape: &[usize], len: usize) -> Result<()> {
    if shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) != Some(len) {
        return Err(DataError::invalid(
            path,
            format!("shape {shape:?} does not match {len} elements"),
        ));
    }
    Ok(())
}

/// Writes an array of `dtype` and `shape` atomically, with the data produced by `body` (which must
/// write exactly the declared number of bytes; this lets large files be streamed from pieces).
pub(crate) fn write_streamed(
    path: &Path,
    dtype: Dtype,
    shape: &[usize],
    body: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    let header = header_bytes(dtype, shape);
    write_atomic(path, |w| {
        w.write_all(&header)?;
        body(w)
    })
}

/// Writes a uint8 array atomically.
pub fn write_u8(path: &Path, shape: &[usize], data: &[u8]) -> Result<()> {
    check_shape(path, shape, data.len())?;
    write_streamed(path, Dtype::U8, shape, |w| w.write_all(data))
}

/// Writes any array atomically.
pub fn write(path: &Path, array: &NpyArray) -> Result<()> {
    check_shape(path, &array.shape, array.data.len())?;
    write_streamed(path, array.data.dtype(), &array.shape, |w| {
        match &array.data {
            NpyData::U8(v) => w.write_all(v),
            NpyData::I32(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
            NpyData::I64(v) => v.iter().try_for_each(|x| w.write_all(&x.to_le_bytes())),
        }
    })
}

/// Writes labels as a one-dimensional array of `dtype` (int64 is what the CIFAR-10-C release uses).
pub fn write_labels(path: &Path, labels: &[u32], dtype: Dtype) -> Result<()> {
    let too_big = |i: usize, l: u32| {
        DataError::invalid(
            path,
            format!("label #{i} is {l}, too large for {}", dtype.descr()),
        )
    };
    let data = match dtype {
        Dtype::U8 => NpyData::U8(
            labels
                .iter()
                .enumerate()
                .map(|(i, &l)| u8::try_from(l).map_err(|_| too_big(i, l)))
                .collect::<Result<_>>()?,
        ),
        Dtype::I32 => NpyData::I32(
            labels
                .iter()
                .enumerate()
                .map(|(i, &l)| i32::try_from(l).map_err(|_| too_big(i, l)))
                .collect::<Result<_>>()?,
        ),
        Dtype::I64 => NpyData::I64(labels.iter().map(|&l| i64::from(l)).collect()),
    };
    write(
        path,
        &NpyArray {
            shape: vec![labels.len()],
            data,
        },
    )
}

/// Printable form of magic bytes for error messages.
fn escape(bytes: &[u8]) -> String {
    let s: String = bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    format!("\"{s}\"")
}

// -- a parser for the Python literal in the header ---------------------------------------------

/// The subset of Python literals NumPy writes into headers.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    None,
    Int(i64),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn seq(f: &mut std::fmt::Formatter<'_>, items: &[Value]) -> std::fmt::Result {
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{v}")?;
            }
            Ok(())
        }
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bool(b) => f.write_str(if *b { "True" } else { "False" }),
            Value::None => f.write_str("None"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Tuple(v) => {
                f.write_str("(")?;
                seq(f, v)?;
                f.write_str(")")
            }
            Value::List(v) => {
                f.write_str("[")?;
                seq(f, v)?;
                f.write_str("]")
            }
            Value::Dict(kv) => {
                f.write_str("{")?;
                for (i, (k, v)) in kv.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

/// Parses the header text, which must be one dict literal plus whitespace.
fn parse_dict(text: &str) -> std::result::Result<Vec<(Value, Value)>, String> {
    // Working on bytes is fine: every token is ASCII and non-ASCII bytes only occur inside
    // strings, which are sliced at ASCII quote positions and so stay valid UTF-8.
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.pos != p.s.len() {
        return Err(format!(
            "unexpected text after the header dict at byte {}",
            p.pos
        ));
    }
    match v {
        Value::Dict(kv) => Ok(kv),
        other => Err(format!("header is {other}, not a dict")),
    }
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> std::result::Result<Value, String> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err("header nests too deeply".into());
        }
        let v = match self.peek() {
            None => Err("header ends where a value was expected".into()),
            Some(q @ (b'\'' | b'"')) => self.string(q),
            Some(b'(') => self.seq(b')').map(Value::Tuple),
            Some(b'[') => self.seq(b']').map(Value::List),
            Some(b'{') => self.dict(),
            Some(c) if c == b'-' || c.is_ascii_digit() => self.int(),
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.pos;
                while self.pos < self.s.len() && self.s[self.pos].is_ascii_alphanumeric() {
                    self.pos += 1;
                }
                match &self.s[start..self.pos] {
                    b"True" => Ok(Value::Bool(true)),
                    b"False" => Ok(Value::Bool(false)),
                    b"None" => Ok(Value::None),
                    w => Err(format!("unknown word {:?}", String::from_utf8_lossy(w))),
                }
            }
            Some(c) => Err(format!(
                "unexpected character {:?} at byte {}",
                char::from(c),
                self.pos
            )),
        };
        self.depth -= 1;
        v
    }

    fn string(&mut self, quote: u8) -> std::result::Result<Value, String> {
        self.pos += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.pos) {
            self.pos += 1;
            if c == quote {
                return String::from_utf8(out)
                    .map(Value::Str)
                    .map_err(|_| "string is not valid UTF-8".into());
            }
            if c == b'\\' {
                match self.s.get(self.pos) {
                    Some(&e) => {
                        self.pos += 1;
                        out.push(e);
                    }
                    None => break,
                }
            } else {
                out.push(c);
            }
        }
        Err("unterminated string".into())
    }

    /// Python 2 wrote `10L` for longs; old CIFAR-10-C era files can carry that suffix.
    fn int(&mut self) -> std::result::Result<Value, String> {
        let start = self.pos;
        if self.s[self.pos] == b'-' {
            self.pos += 1;
        }
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_digit() {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("");
        let v: i64 = digits
            .parse()
            .map_err(|_| format!("bad integer {digits:?}"))?;
        if self.s.get(self.pos) == Some(&b'L') {
            self.pos += 1;
        }
        Ok(Value::Int(v))
    }

    fn seq(&mut self, close: u8) -> std::result::Result<Vec<Value>, String> {
        self.pos += 1;
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Ok(items);
            }
            items.push(self.value()?);
            if !self.eat(b',') {
                return if self.eat(close) {
                    Ok(items)
                } else {
                    Err(format!(
                        "expected ',' or '{}' at byte {}",
                        char::from(close),
                        self.pos
                    ))
                };
            }
        }
    }

    fn dict(&mut self) -> std::result::Result<Value, String> {
        self.pos += 1;
        let mut kv = Vec::new();
        loop {
            if self.eat(b'}') {
                return Ok(Value::Dict(kv));
            }
            let k = self.value()?;
            if !self.eat(b':') {
                return Err(format!("expected ':' at byte {}", self.pos));
            }
            let v = self.value()?;
            kv.push((k, v));
            if !self.eat(b',') {
                return if self.eat(b'}') {
                    Ok(Value::Dict(kv))
                } else {
                    Err(format!("expected ',' or '}}' at byte {}", self.pos))
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_what_numpy_writes() {
        // Bytes of np.save(f, np.zeros((2, 3), np.uint8)) with NumPy >= 1.x (64-byte alignment).
        let h = header_bytes(Dtype::U8, &[2, 3]);
        assert_eq!(h.len(), 128);
        assert_eq!(&h[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert!(h[10..].starts_with(b"{'descr': '|u1', 'fortran_order': False, 'shape': (2, 3), }"));
        assert_eq!(*h.last().unwrap(), b'\n');
        assert_eq!(header_bytes(Dtype::I64, &[7]).len() % 64, 0);
        assert!(String::from_utf8_lossy(&header_bytes(Dtype::I64, &[7])).contains("'shape': (7,)"));
    }

    #[test]
    fn parses_python_literals() {
        let d = parse_dict("{'a': (1, 2L,), \"b\": [True, None], 'c': {'x': -3}, }  \n").unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].1, Value::Tuple(vec![Value::Int(1), Value::Int(2)]));
        assert!(parse_dict("{'a': 1} x").is_err());
        assert!(parse_dict(&"(".repeat(10_000)).is_err());
        assert!(parse_dict("{'a': 99999999999999999999}").is_err());
    }
}

//! Files that are never half-written, read with bounds, and owned by one process at a time.
//!
//! * [`write_atomic`] writes to a uniquely named temporary file in the same directory,
//!   flushes it to disk, renames it over the target and flushes the directory: after a crash,
//!   readers find the old file or the new one, never a mix. [`remove_stale_temps`] deletes what
//!   a killed writer left behind (names ending in [`TEMP_SUFFIX`]). A symlink is followed (the
//!   file it names is replaced, the link stays), and a target that is not a regular file —
//!   `/dev/null`, `/dev/stdout`, a FIFO — is written in place, never replaced by a file.
//! * [`read_regular_file`] reads at most a stated number of bytes, and only from a regular
//!   file (not `/dev/zero` or a FIFO, which would never end).
//! * [`DirLock`] is an exclusive advisory lock on a directory, so that two processes cannot
//!   write one run directory.
//! * [`sha256_hex`] is the content hash used to identify data and verify checkpoints.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The mark in the name of every temporary file sgdlab writes (hidden names that contain it
/// are what [`remove_stale_temps`] removes).
pub const TEMP_SUFFIX: &str = ".sgdlab-tmp";

/// Whether `name` is one of sgdlab's temporary file names.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_SUFFIX)
}

/// Where a write to a path lands.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A regular file, or nothing yet: replaced atomically (the path after symlinks).
    Replace(PathBuf),
    /// An existing device, FIFO or socket (after symlinks; the path as given): written in place, since replacing
    /// it by a regular file would break it for every other program (`/dev/null` above all).
    InPlace(PathBuf),
}

/// Follows symlinks from `path` to the file a write must change. A dangling link or a missing
/// file is replaced at `path` itself.
fn target(path: &Path) -> Target {
    let Ok(meta) = std::fs::metadata(path) else {
        return Target::Replace(path.to_path_buf());
    };
    if !meta.is_file() && !meta.is_dir() {
        // Opened by its own name: `/dev/stdout` links to `/proc/self/fd/1`, which may name a
        // pipe that no path reaches.
        return Target::InPlace(path.to_path_buf());
    }
    // A directory is "replaced", so that the rename reports the error.
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        Target::Replace(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
    } else {
        Target::Replace(path.to_path_buf())
    }
}

/// A fresh temporary path beside `path` (beside the file it links to, for a symlink):
/// `.{name}.{pid}-{n}.sgdlab-tmp` in the same directory, unique between processes (pid) and
/// between threads of one process (a counter), and hidden. Rename it over `path` with
/// [`commit_temp`].
pub fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let path = match target(path) {
        Target::Replace(p) => p,
        Target::InPlace(_) => path.to_path_buf(),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}-{}{TEMP_SUFFIX}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(parent_dir(&path).join(tmp_name))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Renames the finished temporary file `tmp` (from [`temp_path`]) over `path` (over the file
/// it links to, for a symlink) and flushes the directory entry to disk; on error `tmp` is
/// removed and `path` is untouched. A `path` that is a device or FIFO gets `tmp`'s bytes
/// written into it instead, and `tmp` is removed.
pub fn commit_temp(tmp: &Path, path: &Path) -> std::io::Result<()> {
    let result = match target(path) {
        Target::Replace(path) => {
            std::fs::rename(tmp, &path).and_then(|()| sync_dir(parent_dir(&path)))
        }
        Target::InPlace(path) => std::fs::read(tmp).and_then(|bytes| write_in_place(&path, &bytes)),
    };
    let _ = std::fs::remove_file(tmp);
    result
}

/// Writes `bytes` into an existing device or FIFO, without creating or truncating anything.
fn write_in_place(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(bytes)?;
    file.flush()
}

/// Flushes a directory's entries (renames, new files) to disk. A no-op where directories
/// cannot be opened as files (not Unix).
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically: to a uniquely named temporary file in the same
/// directory, flushed to disk, renamed over `path`, and the directory flushed. Readers see the
/// old file or the new one, never a mix; on error the temporary file is removed and `path` is
/// untouched. A symlink keeps linking to the (new) file; a device or FIFO (`/dev/null`,
/// `/dev/stdout`) is written in place, since it cannot be replaced without breaking it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// [`write_atomic`] with the contents streamed by `write` (through a buffer) instead of held
/// in memory: a large JSON output is serialised straight into the temporary file. A device
/// or FIFO gets the streamed bytes in place.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if let Target::InPlace(device) = target(path) {
        let mut out =
            std::io::BufWriter::new(std::fs::OpenOptions::new().write(true).open(device)?);
        write(&mut out)?;
        return out.flush();
    }
    let tmp = temp_path(path)?;
    let written = (|| {
        let mut out = std::io::BufWriter::new(File::create(&tmp)?);
        write(&mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    commit_temp(&tmp, path)
}

/// Removes the temporary files ([`is_temp_name`]) that a killed writer left in `dir`; returns
/// how many. Call it only while holding the directory's [`DirLock`], so that no live writer
/// owns them. A missing directory has none.
pub fn remove_stale_temps(dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let is_temp = is_temp_name(&entry.file_name().to_string_lossy());
        if is_temp && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Opens `path` for reading if it is a regular file (after symlinks). The file is opened
/// without blocking, so that a FIFO with no writer is refused instead of waiting for one.
fn open_regular(path: &Path, what: &str) -> std::io::Result<(File, u64)> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc_nonblock());
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} must be a regular file, not a device, FIFO or directory"),
        ));
    }
    Ok((file, meta.len()))
}

/// `O_NONBLOCK` (Linux and the BSDs differ in its value).
#[cfg(unix)]
fn libc_nonblock() -> i32 {
    #[cfg(target_os = "linux")]
    {
        libc::O_NONBLOCK
    }
    #[cfg(not(target_os = "linux"))]
    {
        0x0004
    }
}

/// The largest safetensors header read: the `safetensors` crate's own limit (100 MB).
pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Reads a safetensors file whose data section may hold at most `max_data_bytes`, checking
/// what its header declares before the data are read: the file must be regular (not a
/// device or FIFO), its header at most [`MAX_SAFETENSORS_HEADER`] bytes, and its length
/// exactly the header's plus the data the header's tensors declare. A truncated file, one
/// with bytes past its declared end (a sparse 1 TB file behind a small header), or one that
/// declares more data than the caller can need is refused without reading its data.
pub fn read_safetensors_file(
    path: &Path,
    max_data_bytes: u64,
    what: &str,
) -> std::io::Result<Vec<u8>> {
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let (mut file, len) = open_regular(path, what)?;
    let mut prefix = [0u8; 8];
    if len < 8 {
        return Err(invalid(format!(
            "{what} is not a valid safetensors file: {len} bytes, too short for its header"
        )));
    }
    file.read_exact(&mut prefix)?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_SAFETENSORS_HEADER || n > len - 8 {
        return Err(invalid(format!(
            "{what} is not a valid safetensors file: it declares a header of {n} bytes, but \
             {} (the file has {len} bytes)",
            if n > MAX_SAFETENSORS_HEADER {
                format!("the limit is {MAX_SAFETENSORS_HEADER}")
            } else {
                "the file ends first".to_string()
            }
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)?;
    let declared = declared_data_bytes(&header).map_err(|e| {
        invalid(format!(
            "{what} is not a valid safetensors file: unreadable header ({e})"
        ))
    })?;
    if declared > max_data_bytes {
        return Err(invalid(format!(
            "{what} declares {} of tensor data, more than the {} it can hold",
            human_bytes(declared),
            human_bytes(max_data_bytes)
        )));
    }
    let expected = 8 + n + declared;
    if len != expected {
        return Err(invalid(format!(
            "{what} has {len} bytes, but its header declares {expected}: the file is {}",
            if len < expected {
                "truncated"
            } else {
                "longer than its contents (corrupt)"
            }
        )));
    }
    let mut bytes = Vec::with_capacity(expected as usize);
    bytes.extend_from_slice(&prefix);
    bytes.extend_from_slice(&header);
    drop(header);
    // Never more than declared: bytes appended meanwhile are not the file's contents.
    file.take(declared).read_to_end(&mut bytes)?;
    if bytes.len() as u64 != expected {
        return Err(invalid(format!(
            "{what} shrank while it was read ({} bytes, expected {expected})",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// The end of the last tensor's data that a safetensors header declares (the size of its
/// data section), from the `data_offsets` of its entries.
fn declared_data_bytes(header: &[u8]) -> Result<u64, String> {
    use serde::de::{IgnoredAny, MapAccess, Visitor};
    #[derive(serde::Deserialize)]
    struct Entry {
        data_offsets: (u64, u64),
    }
    struct End;
    impl<'de> Visitor<'de> for End {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a safetensors header (a JSON object)")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let mut end = 0;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "__metadata__" {
                    map.next_value::<IgnoredAny>()?;
                } else {
                    end = end.max(map.next_value::<Entry>()?.data_offsets.1);
                }
            }
            Ok(end)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(header);
    let end = serde::Deserializer::deserialize_map(&mut de, End).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(end)
}

/// Reads all of `path`, refusing anything but a regular file (after symlinks) and any file
/// longer than `max_bytes`. `what` names the file's role in errors ("data file", ...). A
/// FIFO is refused at once, never waited on.
pub fn read_regular_file(path: &Path, max_bytes: u64, what: &str) -> std::io::Result<Vec<u8>> {
    let (file, len) = open_regular(path, what)?;
    if len > max_bytes {
        return Err(too_large(what, max_bytes));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(what, max_bytes));
    }
    Ok(bytes)
}

fn too_large(what: &str, max_bytes: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{what} is larger than the limit of {}",
            human_bytes(max_bytes)
        ),
    )
}

/// The SHA-256 digest of `bytes`, as 64 lowercase hexadecimal digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// A SHA-256 hash computed incrementally: [`Sha256::update`] with each piece, then
/// [`Sha256::hex`].
#[derive(Clone, Debug, Default)]
pub struct Sha256(sha2::Sha256);

impl Sha256 {
    /// An empty hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes` to the hash.
    pub fn update(&mut self, bytes: impl AsRef<[u8]>) {
        use sha2::Digest;
        self.0.update(bytes);
    }

    /// The digest, as 64 lowercase hexadecimal digits.
    pub fn hex(self) -> String {
        use sha2::Digest;
        hex(&self.0.finalize())
    }
}

/// Lowercase hexadecimal digits of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An exclusive lock on a directory, held until dropped: the advisory lock of the file
/// [`DirLock::FILE`] in it. The operating system releases it when the process dies, so a
/// killed holder never leaves a directory locked.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// The lock file's name.
    pub const FILE: &'static str = ".sgdlab.lock";

    /// Locks `dir` (which must exist), or errors at once if another process holds it.
    pub fn acquire(dir: &Path) -> crate::Result<Self> {
        let path = dir.join(Self::FILE);
        let fail = |reason: String| crate::Error::Checkpoint {
            path: dir.display().to_string(),
            reason,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| fail(format!("cannot open the lock file {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(fail(
                "another sgdlab process is writing this directory (it holds the lock); wait \
                 for it to finish or choose another directory"
                    .to_string(),
            )),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(fail(format!("cannot lock {}: {e}", path.display())))
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Rewrites a safetensors file's JSON header with its keys (and the `__metadata__` keys)
/// sorted, so that equal contents give equal bytes.
///
/// The `safetensors` crate takes metadata as a `HashMap` and writes it in the map's order,
/// which changes from one map to the next. Reordering keys changes neither the header's
/// length nor any data offset (offsets count from the end of the header), so the data
/// section is kept as it is. Errors only on a buffer that is not a safetensors file.
pub(crate) fn canonical_safetensors(mut bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    use serde_json::Value;
    use std::collections::BTreeMap;
    let len = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or("shorter than a safetensors header")?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= bytes.len())
        .ok_or("header length beyond the end of the buffer")?;
    let header: BTreeMap<String, Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| format!("bad header: {e}"))?;
    let sorted: BTreeMap<String, Value> = header
        .into_iter()
        .map(|(k, v)| match v {
            // Written through a BTreeMap, whatever serde_json's map type is.
            Value::Object(m) => (
                k,
                serde_json::json!(m.into_iter().collect::<BTreeMap<_, _>>()),
            ),
            v => (k, v),
        })
        .collect();
    let mut text = serde_json::to_vec(&sorted).map_err(|e| e.to_string())?;
    if text.len() > end - 8 {
        return Err("header grew when sorted".to_string());
    }
    // The same keys and values: the same length, up to the padding (spaces) at the end.
    text.resize(end - 8, b' ');
    bytes[8..end].copy_from_slice(&text);
    Ok(bytes)
}

/// Bytes in human units: `512 B`, `3.2 GB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1000.0 {
            break;
        }
        value /= 1000.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each check of a safetensors file's declared sizes, with the message that names it: too
    /// short for the length prefix, a header past the limit (a sparse file, so that nothing
    /// of that size is written), a header past the end, data past or short of the declared
    /// end, data beyond what the caller can need, and a good file read whole.
    #[test]
    fn safetensors_files_are_checked_against_their_declared_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let read = |bytes: &[u8], max: u64| {
            std::fs::write(&path, bytes).unwrap();
            read_safetensors_file(&path, max, "the file").map_err(|e| e.to_string())
        };
        let with_len = |n: u64, rest: &[u8]| [&n.to_le_bytes()[..], rest].concat();
        assert!(
            read(b"short", 1 << 20)
                .unwrap_err()
                .contains("5 bytes, too short")
        );
        let huge = with_len(MAX_SAFETENSORS_HEADER + 1, b"");
        std::fs::write(&path, &huge).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2 * MAX_SAFETENSORS_HEADER)
            .unwrap();
        let err = read_safetensors_file(&path, u64::MAX, "the file").unwrap_err();
        assert!(err.to_string().contains("the limit is 100000000"), "{err}");
        for n in [3, 1000] {
            let err = read(&with_len(n, b"{}"), 1 << 20).unwrap_err();
            assert!(err.contains("the file ends first"), "{n}: {err}");
        }
        // A header of exactly the limit is read (and here refused for what it holds).
        std::fs::write(&path, with_len(MAX_SAFETENSORS_HEADER, b"")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(8 + MAX_SAFETENSORS_HEADER)
            .unwrap();
        let err = read_safetensors_file(&path, u64::MAX, "the file").unwrap_err();
        assert!(err.to_string().contains("unreadable header"), "{err}");
        let header =
            br#"{"__metadata__":{"a":"b"},"t":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        let good = [&with_len(header.len() as u64, header)[..], b"abcd"].concat();
        assert_eq!(read(&good, 4).unwrap(), good);
        let err = read(&good, 3).unwrap_err();
        assert!(
            err.contains("declares 4 B of tensor data, more than the 3 B"),
            "{err}"
        );
        let err = read(&good[..good.len() - 1], 4).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let err = read(&[&good[..], b"x"].concat(), 4).unwrap_err();
        assert!(err.contains("longer than its contents"), "{err}");
        let err = read(&with_len(2, b"[]"), 4).unwrap_err();
        assert!(
            err.contains("unreadable header") && err.contains("expected a safetensors header"),
            "{err}"
        );
        // The data section's size is the largest end offset, whatever the order of entries.
        let two = br#"{"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
        assert_eq!(declared_data_bytes(two), Ok(4));
        assert_eq!(declared_data_bytes(br#"{"__metadata__":{}}"#), Ok(0));
    }

    #[test]
    fn canonical_headers_sort_keys_and_keep_data() {
        let data = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let views = [("b", &data[..4]), ("a", &data[4..])].map(|(name, raw)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::tensor::Dtype::F32, vec![1], raw)
                    .unwrap();
            (name.to_string(), view)
        });
        let meta = std::collections::HashMap::from(
            ["z", "y", "x", "w", "v", "u"].map(|k| (k.to_string(), k.repeat(3))),
        );
        let raw = safetensors::serialize(views.clone(), Some(meta.clone())).unwrap();
        let canon = canonical_safetensors(raw.clone()).unwrap();
        assert_eq!(canon.len(), raw.len());
        let text = std::str::from_utf8(&canon[8..canon.len() - 8]).unwrap();
        let (u, z) = (text.find("\"u\"").unwrap(), text.find("\"z\"").unwrap());
        assert!(u < z, "{text}");
        let st = safetensors::SafeTensors::deserialize(&canon).unwrap();
        assert_eq!(st.tensor("b").unwrap().data(), &data[..4]);
        assert_eq!(st.tensor("a").unwrap().data(), &data[4..]);
        let (_, header) = safetensors::SafeTensors::read_metadata(&canon).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap(), &meta);
        assert!(canonical_safetensors(vec![1, 2, 3]).is_err());
        assert!(canonical_safetensors(vec![255; 16]).is_err());
    }

    /// The writer must never replace a device by a regular file: once a test wrote
    /// `--json /dev/null` through a rename, the machine's `/dev/null` became a file, and every
    /// program reading it (cargo's rustc probe among them) read junk. The device is reached
    /// through a symlink in a scratch directory, so that a regression replaces the link, never
    /// `/dev/null` itself.
    #[cfg(unix)]
    #[test]
    fn devices_are_written_in_place_and_symlinks_kept() {
        use std::os::unix::fs::FileTypeExt;
        let dir = std::env::temp_dir().join(format!("sgdlab-io-dev-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let null_link = dir.join("null");
        std::os::unix::fs::symlink("/dev/null", &null_link).unwrap();
        write_atomic(&null_link, b"discarded").unwrap();
        let tmp = temp_path(&null_link).unwrap();
        std::fs::write(&tmp, b"also discarded").unwrap();
        commit_temp(&tmp, &null_link).unwrap();
        assert!(!tmp.exists(), "the temporary file is removed");
        let link_meta = std::fs::symlink_metadata(&null_link).unwrap();
        assert!(link_meta.file_type().is_symlink(), "the link was replaced");
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        assert_eq!(std::fs::read(&null_link).unwrap(), b"");

        // A link to a regular file still links to it, and the file has the new bytes.
        let real = dir.join("real.json");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read(&real).unwrap(), b"new");
        // A dangling link is replaced by the file (there is nothing to follow it to).
        let dangling = dir.join("dangling.json");
        std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
        write_atomic(&dangling, b"x").unwrap();
        assert_eq!(std::fs::read(&dangling).unwrap(), b"x");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !is_temp_name(n)), "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_and_replaces() {
        let dir = std::env::temp_dir().join(format!("sgdlab-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temp file left"
        );
        assert!(write_atomic(&dir.join("missing/out.json"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_names_are_unique_and_stale_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("loss.png");
        let (a, b) = (temp_path(&target).unwrap(), temp_path(&target).unwrap());
        assert_ne!(a, b);
        assert_eq!(a.parent(), Some(dir.path()));
        std::fs::write(&a, b"left by a killed writer").unwrap();
        std::fs::write(dir.path().join("keep.txt"), b"not ours").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 1);
        assert!(!a.exists());
        assert!(dir.path().join("keep.txt").exists());
        assert_eq!(remove_stale_temps(&dir.path().join("absent")).unwrap(), 0);
    }

    #[test]
    fn reads_only_bounded_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.csv");
        std::fs::write(&path, b"1,2\n").unwrap();
        assert_eq!(read_regular_file(&path, 4, "data").unwrap(), b"1,2\n");
        assert_eq!(read_regular_file(&path, 100, "data").unwrap(), b"1,2\n");
        let err = read_regular_file(&path, 3, "data").unwrap_err().to_string();
        assert!(err.contains("larger than the limit"), "{err}");
        let err = read_regular_file(dir.path(), 100, "data")
            .unwrap_err()
            .to_string();
        assert!(err.contains("regular file"), "{err}");
        #[cfg(unix)]
        {
            let err = read_regular_file(Path::new("/dev/zero"), 100, "data")
                .unwrap_err()
                .to_string();
            assert!(err.contains("regular file"), "{err}");
        }
    }

    #[test]
    fn a_locked_directory_refuses_a_second_writer() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let err = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another sgdlab process"), "{err}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn sha256_matches_a_known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

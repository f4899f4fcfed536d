//! File output that never leaves a half-written file behind.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: to a temporary file in the same directory, flushed to
/// disk, then renamed over `path`. Readers see the old file or the new one, never a mix; on
/// error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} is not a file path", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! Compression of large payloads and results: zstd, base64 inside the stored JSON so the
//! envelope stays JSON that the scripts (`cancel.lua`) and readers can parse. Only values
//! above `worker.compress_above` bytes are compressed; reading is transparent
//! ([`Envelope`](super::Envelope) and [`Finished`](super::Finished) decompress while they
//! deserialize), so stored jobs written with either setting read back the same.
use base64::Engine;
use serde_json::value::RawValue;

/// zstd's default level: most of the gain, at a few hundred MB/s.
const LEVEL: i32 = 3;
/// The most a stored value may decompress to: a corrupt or hostile value fails to read
/// rather than exhausting memory.
const MAX_DECOMPRESSED: usize = 64 * 1024 * 1024;

/// Compressed and base64-encoded JSON text.
pub(crate) fn compress(json: &str) -> Result<String, String> {
    let bytes = zstd::bulk::compress(json.as_bytes(), LEVEL).map_err(|e| format!("zstd: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The JSON value [`compress`] encoded.
pub(crate) fn decompress(encoded: &str) -> Result<Box<RawValue>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("compressed value is not base64: {e}"))?;
    let json = zstd::bulk::decompress(&bytes, MAX_DECOMPRESSED).map_err(|e| format!("zstd: {e}"))?;
    let text = String::from_utf8(json).map_err(|e| format!("decompressed value is not UTF-8: {e}"))?;
    RawValue::from_string(text).map_err(|e| format!("decompressed value is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_shrinks_repetitive_json() {
        let json =
            serde_json::json!({"lines": vec![serde_json::json!({"sku": "AMAZON_US_25", "qty": 1}); 500]}).to_string();
        let packed = compress(&json).expect("compress");
        assert!(packed.len() * 5 < json.len(), "{} → {}", json.len(), packed.len());
        assert_eq!(decompress(&packed).expect("decompress").get(), json);
        assert!(decompress("not base64!").is_err());
        assert!(decompress("aGVsbG8=").is_err(), "base64 of something that is not zstd");
    }
}

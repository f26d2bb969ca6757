//! Reading the public keys: one PEM file, or every file of a directory (key rotation: a
//! new key is added beside the old one, tokens signed by either verify, then the old one
//! is removed).
//!
//! Owns: turning `--*-auth-public-key-path` into decoding keys. Must never: start a
//! server on a half-read key set (any unreadable or non-Ed25519 file is an error naming
//! it), or accept a key of another type.

use std::path::Path;

use jsonwebtoken::DecodingKey;

use super::AuthError;

/// A PEM public key is well under 1 KiB; a larger file is not one.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The keys at `path` (a file, or a directory of files; at least one key).
pub fn load(path: &Path) -> Result<Vec<DecodingKey>, AuthError> {
    let err = |p: &Path, reason: String| AuthError::Keys {
        path: p.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(path, e.to_string()))?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(|e| err(path, e.to_string()))? {
            let entry = entry.map_err(|e| err(path, e.to_string()))?;
            let p = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            // Follows symlinks (Kubernetes mounts secrets as links to a hidden dir).
            if !hidden && std::fs::metadata(&p).is_ok_and(|m| m.is_file()) {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(err(path, "the directory holds no key files".into()));
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .iter()
        .map(|f| load_file(f).map_err(|r| err(f, r)))
        .collect()
}

fn load_file(path: &Path) -> Result<DecodingKey, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_KEY_FILE {
        return Err(format!(
            "{len} bytes is too large for a PEM public key (at most {MAX_KEY_FILE})"
        ));
    }
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    DecodingKey::from_ed_pem(&pem).map_err(|e| {
        format!("not an Ed25519 public key in PEM (\"-----BEGIN PUBLIC KEY-----\"): {e}")
    })
}

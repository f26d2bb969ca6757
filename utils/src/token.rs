//! The token a client sends as its password to a safekeeper that checks them: read from
//! a file (`--token-file`, `--auth-token-file`) or an environment variable
//! (`SAFEKEEPER_TOKEN`, `SAFEKEEPER_AUTH_TOKEN`).
//!
//! Owns: where a client's token comes from and that it is sane (non-empty, small, one
//! line). Must never: print the token (errors name the file or variable only).

use std::io::Read;
use std::path::{Path, PathBuf};

/// The longest token accepted (a safekeeper reads at most 8 KiB of password).
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("could not read the token file \"{}\": {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file or variable holds no usable token.
    #[error("{from}: {why}")]
    Bad {
        /// The file or variable.
        from: String,
        /// What is wrong (never the token).
        why: &'static str,
    },
    /// Both a file and the variable were given.
    #[error("both {file} and {var} are set; give one")]
    Both {
        /// The flag naming the file.
        file: &'static str,
        /// The variable.
        var: &'static str,
    },
}

/// The token from `file` (the flag `flag` named it) or the variable `var`; `None` if
/// neither is given. Surrounding whitespace (a trailing newline) is removed.
pub fn client_token(
    file: Option<&Path>,
    flag: &'static str,
    var: &'static str,
) -> Result<Option<String>, TokenError> {
    let env = std::env::var(var).ok().filter(|v| !v.is_empty());
    match (file, env) {
        (Some(_), Some(_)) => Err(TokenError::Both { file: flag, var }),
        (None, None) => Ok(None),
        (None, Some(v)) => check(v, var.to_string()).map(Some),
        (Some(p), None) => {
            let read = |source| TokenError::Read {
                path: p.to_path_buf(),
                source,
            };
            let mut text = String::new();
            std::fs::File::open(p)
                .map_err(read)?
                .take(MAX_TOKEN_LEN as u64 + 1)
                .read_to_string(&mut text)
                .map_err(read)?;
            check(text, p.display().to_string()).map(Some)
        }
    }
}

fn check(text: String, from: String) -> Result<String, TokenError> {
    let t = text.trim();
    let bad = |why| {
        Err(TokenError::Bad {
            from: from.clone(),
            why,
        })
    };
    if t.is_empty() {
        return bad("empty");
    }
    if t.len() > MAX_TOKEN_LEN {
        return bad("longer than 8 KiB: not a token");
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("holds more than one line or word: expected one JWT");
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "aaa.bbb.ccc\n").unwrap();
        let var = "UTILS_TOKEN_TEST_UNSET";
        assert_eq!(
            client_token(Some(&p), "--token-file", var)
                .unwrap()
                .as_deref(),
            Some("aaa.bbb.ccc")
        );
        assert!(client_token(None, "--token-file", var).unwrap().is_none());
        std::fs::write(&p, "\n").unwrap();
        assert!(client_token(Some(&p), "--token-file", var).is_err());
        std::fs::write(&p, "a b").unwrap();
        assert!(client_token(Some(&p), "--token-file", var).is_err());
        std::fs::write(&p, "x".repeat(MAX_TOKEN_LEN + 1)).unwrap();
        assert!(client_token(Some(&p), "--token-file", var).is_err());
        let missing = dir.path().join("missing");
        let e = client_token(Some(&missing), "--token-file", var).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}

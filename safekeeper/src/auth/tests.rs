//! Verification: what is accepted and every way a token is refused. Keys are made here
//! with `ring`; good tokens are signed with jsonwebtoken's encoder, forged ones by hand.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

use super::*;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

struct Key {
    pkcs8: Vec<u8>,
    public_pem: String,
}

impl Key {
    fn new() -> Key {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .unwrap()
            .as_ref()
            .to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(pair.public_key().as_ref());
        let public_pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&der)
        );
        Key { pkcs8, public_pem }
    }

    fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::EdDSA),
            claims,
            &EncodingKey::from_ed_der(&self.pkcs8),
        )
        .unwrap()
    }
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// `header.claims.` with the header and claims as given.
fn unsigned(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    let input = unsigned(&json!({"alg": "HS256", "typ": "JWT"}), claims);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let sig = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

fn write(dir: &Path, name: &str, key: &Key) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, &key.public_pem).unwrap();
    p
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

const TENANT: &str = "0123456789abcdef0123456789abcdef";
const OTHER: &str = "fedcba9876543210fedcba9876543210";

fn invalid(r: Result<Claims, AuthError>) -> String {
    match r {
        Err(AuthError::Invalid(m)) => m,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn scopes() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new();
    let auth = JwtAuth::load(&write(dir.path(), "k.pem", &key)).unwrap();
    let all = auth
        .verify(&key.sign(&json!({"scope": "safekeeperdata"})))
        .unwrap();
    assert_eq!(all.scope, Scope::SafekeeperData);
    assert!(all.allows_all());
    assert!(all.allows_tenant(&TENANT.parse().unwrap()));

    let t = auth
        .verify(&key.sign(&json!({"scope": "tenant", "tenant_id": TENANT})))
        .unwrap();
    assert_eq!(t.scope, Scope::Tenant(TENANT.parse().unwrap()));
    assert!(!t.allows_all());
    assert!(t.allows_tenant(&TENANT.parse().unwrap()));
    assert!(!t.allows_tenant(&OTHER.parse().unwrap()));

    // Other claims (iat, sub, aud) do not matter.
    let extra = json!({"scope": "safekeeperdata", "iat": now(), "sub": "x", "aud": "y"});
    assert!(auth.verify(&key.sign(&extra)).is_ok());

    for bad in [
        json!({"scope": "admin"}),
        json!({"scope": "pageserverapi"}),
        json!({"scope": "SafekeeperData"}),
        json!({"scope": "tenant"}),
        json!({"scope": "tenant", "tenant_id": "xyz"}),
        json!({"tenant_id": TENANT}),
        json!({"scope": 1}),
    ] {
        invalid(auth.verify(&key.sign(&bad)));
    }
    assert!(matches!(auth.verify(""), Err(AuthError::Missing)));
}

#[test]
fn expiry() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new();
    let auth = JwtAuth::load(&write(dir.path(), "k.pem", &key)).unwrap();
    let ok = json!({"scope": "safekeeperdata", "exp": now() + 3600});
    assert!(auth.verify(&key.sign(&ok)).is_ok());
    let old = json!({"scope": "safekeeperdata", "exp": now() - 3600});
    assert!(invalid(auth.verify(&key.sign(&old))).contains("expired"));
    // An `exp` that is not a number is refused, not ignored.
    let text = json!({"scope": "safekeeperdata", "exp": "1"});
    invalid(auth.verify(&key.sign(&text)));
    let text = json!({"scope": "safekeeperdata", "exp": (now() - 3600).to_string()});
    invalid(auth.verify(&key.sign(&text)));
}

#[test]
fn other_algorithms_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new();
    let auth = JwtAuth::load(&write(dir.path(), "k.pem", &key)).unwrap();
    let c = json!({"scope": "safekeeperdata"});
    // alg none, with and without a trailing signature part.
    let none = unsigned(&json!({"alg": "none", "typ": "JWT"}), &c);
    invalid(auth.verify(&format!("{none}.")));
    invalid(auth.verify(&none));
    invalid(auth.verify(&format!("{}.", unsigned(&json!({"alg": "None"}), &c))));
    // HS256 with some secret, and with the public key (PEM text and raw bytes) as the
    // secret: the classic confusion of a public key for an HMAC secret.
    assert!(invalid(auth.verify(&hs256(b"secret", &c))).contains("EdDSA"));
    invalid(auth.verify(&hs256(key.public_pem.as_bytes(), &c)));
    let pair = Ed25519KeyPair::from_pkcs8(&key.pkcs8).unwrap();
    invalid(auth.verify(&hs256(pair.public_key().as_ref(), &c)));
    // An EdDSA signature under a header that claims another algorithm.
    let good = key.sign(&c);
    let sig = good.rsplit('.').next().unwrap();
    for alg in ["RS256", "ES256", "HS256", "PS256"] {
        let forged = format!("{}.{sig}", unsigned(&json!({"alg": alg, "typ": "JWT"}), &c));
        invalid(auth.verify(&forged));
    }
    // Claims swapped under a good signature.
    let (head, _) = good.split_once('.').unwrap();
    let swapped = format!(
        "{head}.{}.{sig}",
        b64(json!({"scope": "tenant", "tenant_id": TENANT})
            .to_string()
            .as_bytes())
    );
    invalid(auth.verify(&swapped));
    // Garbage.
    for junk in ["x", "a.b.c", "....", "\u{0}.\u{0}.\u{0}"] {
        invalid(auth.verify(junk));
    }
}

#[test]
fn wrong_key_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2, stranger) = (Key::new(), Key::new(), Key::new());
    let c = json!({"scope": "safekeeperdata"});
    let single = JwtAuth::load(&write(dir.path(), "k1.pem", &k1)).unwrap();
    assert!(single.verify(&k1.sign(&c)).is_ok());
    assert!(invalid(single.verify(&k2.sign(&c))).contains("signature"));

    write(dir.path(), "k2.pem", &k2);
    std::fs::write(dir.path().join(".hidden"), "not a key").unwrap();
    let both = JwtAuth::load(dir.path()).unwrap();
    assert_eq!(both.key_count(), 2);
    assert!(both.verify(&k1.sign(&c)).is_ok());
    assert!(both.verify(&k2.sign(&c)).is_ok());
    invalid(both.verify(&stranger.sign(&c)));
    // An expired token signed by the second key says "expired", not "bad signature".
    let old = json!({"scope": "safekeeperdata", "exp": now() - 3600});
    assert!(invalid(both.verify(&k2.sign(&old))).contains("expired"));
}

#[test]
fn bad_key_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(JwtAuth::load(&empty), Err(AuthError::Keys { .. })));
    assert!(matches!(
        JwtAuth::load(&dir.path().join("missing")),
        Err(AuthError::Keys { .. })
    ));
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    assert!(matches!(JwtAuth::load(&junk), Err(AuthError::Keys { .. })));
    // A directory with one good and one bad file names the bad one.
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    write(&mixed, "a.pem", &Key::new());
    std::fs::write(
        mixed.join("b.pem"),
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    match JwtAuth::load(&mixed) {
        Err(AuthError::Keys { path, .. }) => assert!(path.ends_with("b.pem"), "{path}"),
        other => panic!("{other:?}"),
    }
}

//! cosign-compatible signatures: the "simple signing" payload, ECDSA P-256
//! with SHA-256 (DER signatures, base64 in the registry), keys in PEM.
//!
//! Signing keys: an unencrypted EC P-256 private key, PKCS#8 (`BEGIN PRIVATE
//! KEY`, `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`) or
//! SEC1 (`BEGIN EC PRIVATE KEY`, `openssl ecparam -genkey -name prime256v1`).
//! cosign's own password-encrypted keys are not read: sign those with
//! `cosign sign --key`, tenet verifies the result all the same.
//! Verification keys: a PEM `PUBLIC KEY` (what `cosign.pub` and `openssl
//! pkey -pubout` write), uncompressed P-256.

use std::path::Path;

use base64::Engine as _;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::Value;

/// The payload `type` cosign writes and checks.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

/// DER of `AlgorithmIdentifier { id-ecPublicKey, prime256v1 }`'s contents
/// as they start a P-256 SubjectPublicKeyInfo: SEQUENCE(89) { SEQUENCE(19)
/// { OID 1.2.840.10045.2.1, OID 1.2.840.10045.3.1.7 }, BIT STRING(66) 00 }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The `AlgorithmIdentifier` SEQUENCE of a P-256 key (for PKCS#8).
const P256_ALGORITHM: [u8; 21] = [
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];

/// A P-256 signing key.
pub struct SigningKey(EcdsaKeyPair);

/// A P-256 verification key (the uncompressed point).
#[derive(Debug, Clone)]
pub struct VerifyKey(Vec<u8>);

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl SigningKey {
    /// Reads an EC P-256 private key from a PEM file (PKCS#8 or SEC1).
    pub fn load(path: &Path) -> Result<Self, String> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let pem = read_pem(path, "--key")?;
        let bad = |m: &str| format!("--key {}: {m}", path.display());
        let text = String::from_utf8_lossy(&pem);
        if text.contains("ENCRYPTED") {
            return Err(bad(
                "an encrypted key (cosign's own format): tenet reads unencrypted EC P-256 keys \
                 (openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256); \
                 or sign with `cosign sign --key` (tenet verifies cosign's signatures)",
            ));
        }
        let pkcs8 = match PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| bad(&format!("no PEM private key ({e})")))?
        {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            PrivateKeyDer::Sec1(k) => sec1_to_pkcs8(k.secret_sec1_der()),
            PrivateKeyDer::Pkcs1(_) => return Err(bad("an RSA key; an EC P-256 key is needed")),
            _ => return Err(bad("unknown key type; an EC P-256 key is needed")),
        };
        let rng = ring::rand::SystemRandom::new();
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
            .map(SigningKey)
            .map_err(|e| bad(&format!("not a usable EC P-256 private key ({e})")))
    }

    /// Signs `msg` (ECDSA P-256, SHA-256): the DER signature.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let rng = ring::rand::SystemRandom::new();
        self.0
            .sign(&rng, msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|e| format!("signing failed: {e}"))
    }

    /// The matching verification key.
    pub fn public(&self) -> VerifyKey {
        VerifyKey(self.0.public_key().as_ref().to_vec())
    }
}

impl VerifyKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of an EC P-256 key.
    pub fn load(path: &Path, flag: &str) -> Result<Self, String> {
        use rustls_pki_types::SubjectPublicKeyInfoDer;
        use rustls_pki_types::pem::PemObject;
        let pem = read_pem(path, flag)?;
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(&pem).map_err(|e| {
            format!(
                "{flag} {}: no PEM PUBLIC KEY ({e}); cosign.pub or `openssl pkey -pubout` output is expected",
                path.display()
            )
        })?;
        Self::from_spki(spki.as_ref()).map_err(|m| format!("{flag} {}: {m}", path.display()))
    }

    /// From SubjectPublicKeyInfo DER: only uncompressed P-256 points.
    pub fn from_spki(der: &[u8]) -> Result<Self, String> {
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if der.len() == 91 && point.first() == Some(&0x04) => {
                Ok(VerifyKey(point.to_vec()))
            }
            _ => Err("not an EC P-256 public key (ECDSA P-256 is what cosign signs with)".into()),
        }
    }

    /// Whether `sig` (DER) is this key's ECDSA P-256/SHA-256 signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, &self.0)
            .verify(msg, sig)
            .is_ok()
    }
}

/// Wraps a SEC1 `ECPrivateKey` into PKCS#8 (what ring reads).
fn sec1_to_pkcs8(sec1: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(&P256_ALGORITHM);
    body.push(0x04);
    push_len(&mut body, sec1.len());
    body.extend_from_slice(sec1);
    let mut out = vec![0x30];
    push_len(&mut out, body.len());
    out.extend(body);
    out
}

/// A DER length.
fn push_len(out: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
}

/// The simple-signing payload for a manifest digest (`sha256:<hex>`) in
/// repository `docker_reference` (`registry/repo`), as cosign writes it.
pub fn payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    // serde_json keeps the order of a struct's fields; cosign's field order
    // is critical{identity, image, type}, optional.
    #[derive(serde::Serialize)]
    struct Identity<'a> {
        #[serde(rename = "docker-reference")]
        docker_reference: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Image<'a> {
        #[serde(rename = "docker-manifest-digest")]
        digest: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Critical<'a> {
        identity: Identity<'a>,
        image: Image<'a>,
        #[serde(rename = "type")]
        kind: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        critical: Critical<'a>,
        optional: Option<()>,
    }
    serde_json::to_vec(&Payload {
        critical: Critical {
            identity: Identity { docker_reference },
            image: Image { digest },
            kind: PAYLOAD_TYPE,
        },
        optional: None,
    })
    .expect("payload serializes")
}

/// The manifest digest a payload vouches for, after checking its type. The
/// key `docker-manifest-digest` is matched without regard to case (cosign's
/// spec writes `Docker-manifest-digest`, its tools `docker-manifest-digest`).
pub fn payload_digest(payload: &[u8]) -> Result<String, String> {
    let v: Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let critical = v
        .get("critical")
        .ok_or("payload has no \"critical\" section")?;
    let kind = critical.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != PAYLOAD_TYPE {
        return Err(format!("payload type is {kind:?}, not {PAYLOAD_TYPE:?}"));
    }
    critical
        .get("image")
        .and_then(Value::as_object)
        .and_then(|o| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("docker-manifest-digest"))
        })
        .and_then(|(_, d)| d.as_str())
        .map(str::to_owned)
        .ok_or_else(|| "payload names no critical.image.docker-manifest-digest".into())
}

/// Base64 (standard, padded), as cosign's signature annotation.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes [`b64`].
pub fn unb64(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| format!("signature is not base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_cosigns_simple_signing_json() {
        let p = payload("127.0.0.1:5000/q", "sha256:abc");
        assert_eq!(
            std::str::from_utf8(&p).unwrap(),
            r#"{"critical":{"identity":{"docker-reference":"127.0.0.1:5000/q"},"image":{"docker-manifest-digest":"sha256:abc"},"type":"cosign container image signature"},"optional":null}"#
        );
        assert_eq!(payload_digest(&p).unwrap(), "sha256:abc");
        let spec_case = br#"{"critical":{"identity":{"docker-reference":"x"},"image":{"Docker-manifest-digest":"sha256:def"},"type":"cosign container image signature"},"optional":{"creator":"atomic"}}"#;
        assert_eq!(payload_digest(spec_case).unwrap(), "sha256:def");
        let other = br#"{"critical":{"image":{"docker-manifest-digest":"sha256:def"},"type":"atomic container signature"}}"#;
        assert!(payload_digest(other).unwrap_err().contains("payload type"));
    }

    #[test]
    fn a_generated_key_signs_and_its_public_half_verifies() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            b64(pkcs8.as_ref())
        );
        std::fs::write(&path, pem).unwrap();
        let key = SigningKey::load(&path).unwrap();
        let sig = key.sign(b"hello").unwrap();
        let public = key.public();
        assert!(public.verify(b"hello", &sig));
        assert!(!public.verify(b"hellO", &sig));
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&public.0);
        assert!(VerifyKey::from_spki(&spki).unwrap().verify(b"hello", &sig));
        spki[20] ^= 1; // another curve's OID
        assert!(VerifyKey::from_spki(&spki).is_err());
    }
}

//! The signature-side fuzzing harness (see [`crate::fuzzing`]): every parser that sees an
//! attacker's image metadata or certificate payload, on one input.

use std::sync::OnceLock;

use ::base64::Engine as _;
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::{X509, X509NameBuilder};

use super::{
    CertificatePolicy, KeyType, SignatureProperties, SignatureVerifier, chain, decode_signature,
    der, load_certificates, parse_hash_method,
};

/// A self-signed certificate for `key` (made once per process).
fn self_signed(key: &PKey<Private>) -> Option<X509> {
    let mut name = X509NameBuilder::new().ok()?;
    name.append_entry_by_text("CN", "imgpipe fuzz").ok()?;
    let name = name.build();
    let mut b = X509::builder().ok()?;
    b.set_version(2).ok()?;
    let serial = BigNum::from_u32(1).ok()?.to_asn1_integer().ok()?;
    b.set_serial_number(&serial).ok()?;
    b.set_subject_name(&name).ok()?;
    b.set_issuer_name(&name).ok()?;
    b.set_pubkey(key).ok()?;
    let (from, until) = (
        Asn1Time::days_from_now(0).ok()?,
        Asn1Time::days_from_now(3650).ok()?,
    );
    b.set_not_before(&from).ok()?;
    b.set_not_after(&until).ok()?;
    b.sign(key, MessageDigest::sha256()).ok()?;
    Some(b.build())
}

/// (key type, hash method, certificate) for an ECDSA P-384 and an RSA-2048 key.
fn keys() -> &'static [(&'static str, &'static str, X509)] {
    static KEYS: OnceLock<Vec<(&'static str, &'static str, X509)>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let ec = EcGroup::from_curve_name(Nid::SECP384R1)
            .and_then(|g| EcKey::generate(&g))
            .and_then(PKey::from_ec_key)
            .ok();
        let rsa = Rsa::generate(2048).and_then(PKey::from_rsa).ok();
        let mut v = Vec::new();
        if let Some(c) = ec.as_ref().and_then(self_signed) {
            v.push(("ECC_SECP384R1", "SHA-384", c));
        }
        if let Some(c) = rsa.as_ref().and_then(self_signed) {
            v.push(("RSA-PSS", "SHA-256", c));
        }
        v
    })
}

/// Every parser of attacker-controlled signature metadata, on `data`: the `img_signature`
/// text (lenient base64), the hash-method and key-type names, the properties as a Glance JSON
/// object, a certificate payload (PEM or DER) and the DER walk over each certificate's
/// encoding and over the raw bytes, and the raw bytes as a signature (DER ECDSA
/// `SEQUENCE{r, s}`, RSA-PSS) verified against a fixed digest. Panics only on a bug.
pub fn signature_inputs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = decode_signature(&text);
    let _ = parse_hash_method(&text);
    let _ = KeyType::parse(&text);
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = SignatureProperties::from_json(&v);
    }
    if let Ok(certs) = load_certificates(data) {
        for c in &certs {
            let _ = chain::describe(c);
            if let Ok(d) = c.to_der() {
                let _ = der::basic_constraints(&d);
            }
        }
    }
    let _ = der::basic_constraints(data);
    let policy = CertificatePolicy::default();
    for (key_type, hash_method, cert) in keys() {
        let props = SignatureProperties {
            signature: ::base64::engine::general_purpose::STANDARD.encode(data),
            hash_method: (*hash_method).to_string(),
            key_type: (*key_type).to_string(),
            certificate_uuid: None,
        };
        if let Ok(v) = SignatureVerifier::new(&props, cert, &policy) {
            let digest = vec![0u8; v.hash_algorithm().output_len()];
            // A random signature verifying against a zero digest would be a forgery.
            assert!(
                v.verify_digest(&digest).is_err(),
                "fuzzed signature verified"
            );
        }
    }
}

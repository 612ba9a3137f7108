//! Image-signature and certificate verification compatible with OpenStack's cursive (the
//! library Glance uses on upload and Nova on download).
//!
//! The verifier is split around the stream, as the engine needs it:
//! - [`SignatureVerifier::new`] runs every check that needs no image bytes — properties,
//!   signature encoding, hash method, key type against the signing certificate, and (with a
//!   trusted list) the certificate chain. Failures carry [`Phase::BeforeStream`].
//! - The engine hashes the image bytes **as stored in Glance** with
//!   [`SignatureVerifier::hash_algorithm`] on its own threads (one pass, shared with the
//!   multihash check when the algorithms coincide).
//! - [`SignatureVerifier::verify_digest`] checks the signature over that prehashed digest.
//!   Failures carry [`Phase::AfterStream`]; the consumer must then discard everything.
//!
//! Accepted signatures (cursive's): RSA-PSS with MGF1 using the signing hash and any salt
//! length (auto-detected, as python-cryptography ≥ 42 does; [`PssSalt::Maximum`] demands the
//! maximum, which `openssl dgst -sigopt rsa_padding_mode:pss` produces); DSA and ECDSA as DER
//! `SEQUENCE { r, s }`. Where imgpipe deliberately differs from cursive is listed in
//! `docs/signatures.md`.
//!
//! ```no_run
//! # fn demo(image: &[u8], cert_pem: &[u8]) -> Result<(), imgpipe_crypto::signature::SignatureError> {
//! use imgpipe_crypto::hash::Hasher;
//! use imgpipe_crypto::signature::{
//!     load_certificates, CertificatePolicy, SignatureProperties, SignatureVerifier,
//! };
//! let props = SignatureProperties {
//!     signature: "…base64…".into(),
//!     hash_method: "SHA-256".into(),
//!     key_type: "RSA-PSS".into(),
//!     certificate_uuid: Some("…".into()),
//! };
//! let cert = load_certificates(cert_pem)?.remove(0);
//! let verifier = SignatureVerifier::new(&props, &cert, &CertificatePolicy::default())?;
//! let mut h = Hasher::new(verifier.hash_algorithm());
//! h.update(image); // in the engine: chunk by chunk, on a hashing thread
//! verifier.verify_digest(&h.finish())?;
//! # Ok(()) }
//! ```

mod base64;
mod chain;
mod der;
pub(crate) mod fuzz;

use std::fmt;
use std::time::SystemTime;

use openssl::ec::EcGroup;
use openssl::md::{Md, MdRef};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};
use openssl::pkey_ctx::PkeyCtx;
use openssl::rsa::Padding;
use openssl::sign::RsaPssSaltlen;
use openssl::x509::X509;

use crate::hash::Algorithm;

/// Image property names (Glance image properties).
pub mod property {
    /// Base64 signature.
    pub const SIGNATURE: &str = "img_signature";
    /// `SHA-224` … `SHA-512`.
    pub const HASH_METHOD: &str = "img_signature_hash_method";
    /// `RSA-PSS`, `DSA`, `ECC_*`.
    pub const KEY_TYPE: &str = "img_signature_key_type";
    /// Key-manager (Barbican) id of the signing certificate.
    pub const CERTIFICATE_UUID: &str = "img_signature_certificate_uuid";
}

/// Whether a failure happened before any image byte was needed, or after the whole stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Properties, certificate or trust were rejected: nothing needs to be downloaded.
    BeforeStream,
    /// The signature does not match the streamed bytes: everything must be discarded.
    AfterStream,
}

/// A signature or certificate check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureError {
    /// When it failed.
    pub phase: Phase,
    /// Stable id of the failed check, e.g. `signature.hash_method`. The full list:
    /// `signature.missing_property`, `signature.too_large`, `signature.base64`,
    /// `signature.empty`, `signature.hash_method`, `signature.key_type`,
    /// `signature.key_type_unsupported`, `signature.public_key_type`, `signature.curve`,
    /// `signature.digest_length`, `signature.invalid`, `signature.backend`,
    /// `certificate.parse`, `certificate.empty`, `certificate.too_large`,
    /// `certificate.validity`, `certificate.chain`, `certificate.chain_loop`,
    /// `certificate.path_length`.
    pub check: &'static str,
    /// What was wrong, the value seen and what was allowed.
    pub message: String,
}

impl SignatureError {
    fn before(check: &'static str, message: impl Into<String>) -> Self {
        SignatureError {
            phase: Phase::BeforeStream,
            check,
            message: message.into(),
        }
    }
    fn after(check: &'static str, message: impl Into<String>) -> Self {
        SignatureError {
            phase: Phase::AfterStream,
            check,
            message: message.into(),
        }
    }
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = match self.phase {
            Phase::BeforeStream => "before streaming",
            Phase::AfterStream => "after streaming",
        };
        write!(f, "{} ({phase}): {}", self.check, self.message)
    }
}

impl std::error::Error for SignatureError {}

/// The `img_signature*` properties of an image, as strings exactly as Glance returns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureProperties {
    /// `img_signature`: base64 (decoded leniently, as cursive does).
    pub signature: String,
    /// `img_signature_hash_method`.
    pub hash_method: String,
    /// `img_signature_key_type`.
    pub key_type: String,
    /// `img_signature_certificate_uuid` (used to fetch the certificate; the verifier itself
    /// takes the certificate).
    pub certificate_uuid: Option<String>,
}

impl SignatureProperties {
    /// Collect the four properties through `get` (e.g. a JSON object's string fields).
    /// All four must be present, as cursive's `get_verifier` demands; a present but empty
    /// value is left to the later checks, as in cursive.
    ///
    /// # Errors
    /// `signature.missing_property` naming the first missing one (cursive's order:
    /// certificate uuid, hash method, signature, key type).
    pub fn from_lookup<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, SignatureError> {
        let order = [
            property::CERTIFICATE_UUID,
            property::HASH_METHOD,
            property::SIGNATURE,
            property::KEY_TYPE,
        ];
        for name in order {
            if get(name).is_none() {
                return Err(SignatureError::before(
                    "signature.missing_property",
                    format!(
                        "image property {name} is missing; signature verification needs \
                         img_signature, img_signature_hash_method, img_signature_key_type and \
                         img_signature_certificate_uuid"
                    ),
                ));
            }
        }
        let value = |n: &str| get(n).unwrap_or_default().to_string();
        Ok(SignatureProperties {
            signature: value(property::SIGNATURE),
            hash_method: value(property::HASH_METHOD),
            key_type: value(property::KEY_TYPE),
            certificate_uuid: Some(value(property::CERTIFICATE_UUID)),
        })
    }

    /// [`Self::from_lookup`] over a Glance image JSON object (properties are top-level string
    /// fields; a non-string value counts as missing).
    ///
    /// # Errors
    /// As [`Self::from_lookup`].
    pub fn from_json(image: &serde_json::Value) -> Result<Self, SignatureError> {
        Self::from_lookup(|name| image.get(name).and_then(serde_json::Value::as_str))
    }

    /// Whether `get` has all four properties (cursive's `should_create_verifier`).
    pub fn present<'a>(get: impl Fn(&str) -> Option<&'a str>) -> bool {
        [
            property::SIGNATURE,
            property::HASH_METHOD,
            property::KEY_TYPE,
            property::CERTIFICATE_UUID,
        ]
        .iter()
        .all(|n| get(n).is_some())
    }
}

/// Which certificates to trust, and when "now" is.
#[derive(Debug, Clone)]
pub struct CertificatePolicy {
    /// Trusted certificates (Nova's `trusted_image_certificates` / default trusted ids,
    /// already fetched). `None`: no chain validation — as cursive on Glance upload and Nova
    /// without certificate validation; an expired or not-yet-valid signing certificate is then
    /// only reported in [`SignatureVerifier::warnings`]. `Some(list)`: cursive's
    /// `verify_certificate` rules (an empty list trusts nothing).
    pub trusted: Option<Vec<X509>>,
    /// The time validity dates are checked against.
    pub now: SystemTime,
}

impl Default for CertificatePolicy {
    fn default() -> Self {
        CertificatePolicy {
            trusted: None,
            now: SystemTime::now(),
        }
    }
}

/// RSA-PSS salt-length rule on verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PssSalt {
    /// Any salt length, recovered from the signature (cursive with python-cryptography ≥ 42).
    #[default]
    Auto,
    /// Only the maximum salt length for the key and hash (cursive with python-cryptography
    /// ≤ 41; what `openssl dgst -sigopt rsa_padding_mode:pss` and python-cryptography's
    /// `PSS.MAX_LENGTH` produce).
    Maximum,
}

/// Whether the curve of an EC certificate must match `ECC_<curve>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CurveCheck {
    /// The certificate's curve must be the one the key type names (imgpipe default).
    #[default]
    Strict,
    /// Any EC certificate is accepted for any `ECC_*` key type (cursive's behaviour).
    CursiveCompatible,
}

/// Verification knobs beyond cursive's fixed behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerifyOptions {
    /// RSA-PSS salt rule.
    pub pss_salt: PssSalt,
    /// EC curve rule.
    pub curve_check: CurveCheck,
}

/// An `img_signature_key_type` value imgpipe implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// `RSA-PSS`.
    RsaPss,
    /// `DSA`.
    Dsa,
    /// `ECC_<curve>`: ECDSA on that curve.
    Ecc(Curve),
}

/// The curves cursive has ever registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// `ECC_SECP384R1` (NIST P-384).
    Secp384r1,
    /// `ECC_SECP521R1` (NIST P-521).
    Secp521r1,
    /// `ECC_SECT571K1` (binary; dropped by python-cryptography 47).
    Sect571k1,
    /// `ECC_SECT409K1` (binary).
    Sect409k1,
    /// `ECC_SECT571R1` (binary).
    Sect571r1,
    /// `ECC_SECT409R1` (binary).
    Sect409r1,
}

impl Curve {
    const ALL: [Curve; 6] = [
        Curve::Secp384r1,
        Curve::Secp521r1,
        Curve::Sect571k1,
        Curve::Sect409k1,
        Curve::Sect571r1,
        Curve::Sect409r1,
    ];

    /// The OpenSSL NID.
    pub fn nid(self) -> Nid {
        match self {
            Curve::Secp384r1 => Nid::SECP384R1,
            Curve::Secp521r1 => Nid::SECP521R1,
            Curve::Sect571k1 => Nid::SECT571K1,
            Curve::Sect409k1 => Nid::SECT409K1,
            Curve::Sect571r1 => Nid::SECT571R1,
            Curve::Sect409r1 => Nid::SECT409R1,
        }
    }

    /// The key-type name, e.g. `ECC_SECP384R1`.
    pub fn key_type_name(self) -> &'static str {
        match self {
            Curve::Secp384r1 => "ECC_SECP384R1",
            Curve::Secp521r1 => "ECC_SECP521R1",
            Curve::Sect571k1 => "ECC_SECT571K1",
            Curve::Sect409k1 => "ECC_SECT409K1",
            Curve::Sect571r1 => "ECC_SECT571R1",
            Curve::Sect409r1 => "ECC_SECT409R1",
        }
    }

    /// Whether the linked OpenSSL implements this curve (binary curves can be compiled out).
    pub fn supported(self) -> bool {
        let ok = EcGroup::from_curve_name(self.nid()).is_ok();
        let _ = openssl::error::ErrorStack::get();
        ok
    }
}

impl KeyType {
    /// Parse an exact, case-sensitive `img_signature_key_type`.
    pub fn parse(name: &str) -> Option<KeyType> {
        match name {
            "RSA-PSS" => Some(KeyType::RsaPss),
            "DSA" => Some(KeyType::Dsa),
            _ => Curve::ALL
                .iter()
                .copied()
                .find(|c| c.key_type_name() == name)
                .map(KeyType::Ecc),
        }
    }

    /// The property value naming this key type.
    pub fn name(self) -> &'static str {
        match self {
            KeyType::RsaPss => "RSA-PSS",
            KeyType::Dsa => "DSA",
            KeyType::Ecc(c) => c.key_type_name(),
        }
    }
}

/// Parse an exact `img_signature_hash_method` (`SHA-224`, `SHA-256`, `SHA-384`, `SHA-512`).
pub fn parse_hash_method(name: &str) -> Option<Algorithm> {
    match name {
        "SHA-224" => Some(Algorithm::Sha224),
        "SHA-256" => Some(Algorithm::Sha256),
        "SHA-384" => Some(Algorithm::Sha384),
        "SHA-512" => Some(Algorithm::Sha512),
        _ => None,
    }
}

fn message_digest(algo: Algorithm) -> Option<&'static MdRef> {
    match algo {
        Algorithm::Sha224 => Some(Md::sha224()),
        Algorithm::Sha256 => Some(Md::sha256()),
        Algorithm::Sha384 => Some(Md::sha384()),
        Algorithm::Sha512 => Some(Md::sha512()),
        _ => None,
    }
}

/// Decode an `img_signature` value exactly as cursive does (Python's non-strict
/// `base64.b64decode`): characters outside the base64 alphabet are skipped, decoding stops
/// at the first padding that completes a quantum, a non-ASCII character or an incomplete
/// final quantum is an error. An empty result is *not* an error here (cursive rejects it only
/// after the certificate checks; [`SignatureVerifier::new`] does the same).
///
/// # Errors
/// `signature.too_large` (over [`MAX_SIGNATURE_TEXT`] characters) or `signature.base64`.
pub fn decode_signature(text: &str) -> Result<Vec<u8>, SignatureError> {
    if text.len() > MAX_SIGNATURE_TEXT {
        return Err(SignatureError::before(
            "signature.too_large",
            format!(
                "img_signature is {} characters; at most {MAX_SIGNATURE_TEXT} are accepted",
                text.len()
            ),
        ));
    }
    base64::decode_lenient(text).map_err(|e| {
        let why = match e {
            base64::Base64Error::NonAscii(at) => format!("a non-ASCII character at byte {at}"),
            base64::Base64Error::DanglingCharacter => {
                "one base64 character more than a multiple of four".to_string()
            }
            base64::Base64Error::IncorrectPadding => "incorrect padding".to_string(),
        };
        SignatureError::before(
            "signature.base64",
            format!("img_signature is not valid base64: {why}"),
        )
    })
}

/// Largest `img_signature` string accepted (an RSA-16384 signature is 2 732 base64 chars).
pub const MAX_SIGNATURE_TEXT: usize = 64 * 1024;
/// Largest certificate bundle [`load_certificates`] parses.
pub const MAX_CERTIFICATE_BYTES: usize = 4 * 1024 * 1024;
/// Most certificates [`load_certificates`] returns from one bundle.
pub const MAX_CERTIFICATES: usize = 1024;

/// Parse one or more certificates: PEM (any number of `CERTIFICATE` blocks; other blocks are
/// skipped) or a single DER certificate (no trailing bytes).
///
/// # Errors
/// `certificate.too_large`, `certificate.parse`, `certificate.empty`.
pub fn load_certificates(bytes: &[u8]) -> Result<Vec<X509>, SignatureError> {
    if bytes.len() > MAX_CERTIFICATE_BYTES {
        return Err(SignatureError::before(
            "certificate.too_large",
            format!(
                "certificate data is {} bytes; at most {MAX_CERTIFICATE_BYTES} are accepted",
                bytes.len()
            ),
        ));
    }
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let certs = if is_pem {
        X509::stack_from_pem(bytes).map_err(|e| {
            SignatureError::before("certificate.parse", format!("PEM certificate data: {e}"))
        })?
    } else {
        let cert = X509::from_der(bytes).map_err(|e| {
            SignatureError::before(
                "certificate.parse",
                format!("data is neither PEM nor a DER X.509 certificate: {e}"),
            )
        })?;
        let used = cert.to_der().map(|d| d.len()).unwrap_or(0);
        if used != bytes.len() {
            return Err(SignatureError::before(
                "certificate.parse",
                format!(
                    "DER certificate of {used} bytes followed by {} unexpected bytes",
                    bytes.len().saturating_sub(used)
                ),
            ));
        }
        vec![cert]
    };
    let _ = openssl::error::ErrorStack::get();
    if certs.is_empty() {
        return Err(SignatureError::before(
            "certificate.empty",
            "the data contains no CERTIFICATE block",
        ));
    }
    if certs.len() > MAX_CERTIFICATES {
        return Err(SignatureError::before(
            "certificate.too_large",
            format!(
                "{} certificates in one bundle; at most {MAX_CERTIFICATES} are accepted",
                certs.len()
            ),
        ));
    }
    Ok(certs)
}

/// A signature verifier whose pre-stream checks passed.
pub struct SignatureVerifier {
    key_type: KeyType,
    hash: Algorithm,
    signature: Vec<u8>,
    key: PKey<Public>,
    options: VerifyOptions,
    warnings: Vec<String>,
}

impl fmt::Debug for SignatureVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignatureVerifier")
            .field("key_type", &self.key_type)
            .field("hash", &self.hash)
            .field("signature_len", &self.signature.len())
            .field("options", &self.options)
            .field("warnings", &self.warnings)
            .finish()
    }
}

impl SignatureVerifier {
    /// Run every pre-stream check with the default [`VerifyOptions`].
    ///
    /// # Errors
    /// See [`Self::new_with_options`].
    pub fn new(
        props: &SignatureProperties,
        signing_cert: &X509,
        policy: &CertificatePolicy,
    ) -> Result<Self, SignatureError> {
        Self::new_with_options(props, signing_cert, policy, VerifyOptions::default())
    }

    /// Run every pre-stream check, in cursive's order: signature encoding, hash method, key
    /// type, the certificate's key family (and curve, unless
    /// [`CurveCheck::CursiveCompatible`]), a non-empty signature, then — with a trusted list —
    /// the certificate chain.
    ///
    /// # Errors
    /// A [`SignatureError`] with [`Phase::BeforeStream`]: `signature.too_large`,
    /// `signature.base64`, `signature.hash_method`, `signature.key_type`,
    /// `signature.key_type_unsupported`, `signature.public_key_type`, `signature.curve`,
    /// `signature.empty`, `certificate.validity`, `certificate.chain`,
    /// `certificate.chain_loop`, `certificate.path_length`, `signature.backend`.
    pub fn new_with_options(
        props: &SignatureProperties,
        signing_cert: &X509,
        policy: &CertificatePolicy,
        options: VerifyOptions,
    ) -> Result<Self, SignatureError> {
        let signature = decode_signature(&props.signature)?;
        let hash = parse_hash_method(&props.hash_method).ok_or_else(|| {
            SignatureError::before(
                "signature.hash_method",
                format!(
                    "img_signature_hash_method {:?} is not one of SHA-224, SHA-256, SHA-384, \
                     SHA-512 (exact spelling)",
                    props.hash_method
                ),
            )
        })?;
        let key_type = KeyType::parse(&props.key_type).ok_or_else(|| {
            SignatureError::before(
                "signature.key_type",
                format!(
                    "img_signature_key_type {:?} is not one of RSA-PSS, DSA, ECC_SECP384R1, \
                     ECC_SECP521R1, ECC_SECT571K1, ECC_SECT409K1, ECC_SECT571R1, ECC_SECT409R1",
                    props.key_type
                ),
            )
        })?;
        if let KeyType::Ecc(curve) = key_type
            && !curve.supported()
        {
            return Err(SignatureError::before(
                "signature.key_type_unsupported",
                format!(
                    "img_signature_key_type {} names a curve the linked OpenSSL does not \
                     implement",
                    curve.key_type_name()
                ),
            ));
        }
        let key = signing_cert.public_key().map_err(|e| {
            SignatureError::before(
                "signature.public_key_type",
                format!("the signing certificate's public key cannot be used: {e}"),
            )
        })?;
        check_key_family(key_type, &key, options.curve_check)?;
        if signature.is_empty() {
            return Err(SignatureError::before(
                "signature.empty",
                "img_signature decodes to zero bytes",
            ));
        }
        let mut warnings = Vec::new();
        match &policy.trusted {
            Some(trusted) => {
                chain::verify_certificate(signing_cert, trusted, policy.now, &mut warnings)?
            }
            None => {
                if let Err(why) = chain::within_dates(signing_cert, policy.now) {
                    warnings.push(format!(
                        "the signing certificate {} is outside its validity dates ({why}); \
                         accepted because no trusted certificates were configured, as cursive \
                         does",
                        chain::describe(signing_cert)
                    ));
                }
            }
        }
        Ok(SignatureVerifier {
            key_type,
            hash,
            signature,
            key,
            options,
            warnings,
        })
    }

    /// The digest the engine must compute over the image bytes as stored.
    pub fn hash_algorithm(&self) -> Algorithm {
        self.hash
    }

    /// The key type the signature was declared with.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Non-fatal findings of the pre-stream checks (e.g. an expired signing certificate with
    /// no trusted list, trusted certificates that were skipped).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Check the signature against the digest of the whole image (computed with
    /// [`Self::hash_algorithm`]).
    ///
    /// # Errors
    /// [`Phase::AfterStream`]: `signature.digest_length` (wrong-size digest: a caller bug),
    /// `signature.invalid` (the signature does not match), `signature.backend`.
    pub fn verify_digest(&self, digest: &[u8]) -> Result<(), SignatureError> {
        if digest.len() != self.hash.output_len() {
            return Err(SignatureError::after(
                "signature.digest_length",
                format!(
                    "a {} digest has {} bytes, got {}",
                    self.hash,
                    self.hash.output_len(),
                    digest.len()
                ),
            ));
        }
        let result = self.verify_inner(digest);
        let _ = openssl::error::ErrorStack::get();
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(SignatureError::after(
                "signature.invalid",
                format!(
                    "the {} signature ({} bytes) does not match the {} digest {} of the image",
                    self.key_type.name(),
                    self.signature.len(),
                    self.hash,
                    hex::encode(digest)
                ),
            )),
            Err(e) => Err(SignatureError::after("signature.backend", e)),
        }
    }

    fn verify_inner(&self, digest: &[u8]) -> Result<bool, String> {
        let md = message_digest(self.hash).ok_or("hash method has no OpenSSL digest")?;
        let setup = |e: openssl::error::ErrorStack| format!("OpenSSL verify setup: {e}");
        let mut ctx = PkeyCtx::new(&self.key).map_err(setup)?;
        ctx.verify_init().map_err(setup)?;
        if self.key_type == KeyType::RsaPss {
            ctx.set_rsa_padding(Padding::PKCS1_PSS).map_err(setup)?;
        }
        ctx.set_signature_md(md).map_err(setup)?;
        if self.key_type == KeyType::RsaPss {
            ctx.set_rsa_mgf1_md(md).map_err(setup)?;
            let salt = match self.options.pss_salt {
                // -2 on verify = RSA_PSS_SALTLEN_AUTO: recover the salt length.
                PssSalt::Auto => RsaPssSaltlen::MAXIMUM_LENGTH,
                PssSalt::Maximum => {
                    let bits = self.key.bits();
                    let em_len = bits.saturating_sub(1).div_ceil(8);
                    let max = i64::from(em_len) - md.size() as i64 - 2;
                    if max < 0 {
                        return Ok(false);
                    }
                    RsaPssSaltlen::custom(i32::try_from(max).map_err(|e| e.to_string())?)
                }
            };
            ctx.set_rsa_pss_saltlen(salt).map_err(setup)?;
        }
        // Malformed signatures (bad DER, wrong length) are errors in OpenSSL: a mismatch.
        Ok(ctx.verify(digest, &self.signature).unwrap_or(false))
    }
}

fn check_key_family(
    key_type: KeyType,
    key: &PKey<Public>,
    curve_check: CurveCheck,
) -> Result<(), SignatureError> {
    let family = match key.id() {
        Id::RSA | Id::RSA_PSS => "RSA",
        Id::DSA => "DSA",
        Id::EC => "EC",
        _ => "another algorithm",
    };
    let want = match key_type {
        KeyType::RsaPss => "RSA",
        KeyType::Dsa => "DSA",
        KeyType::Ecc(_) => "EC",
    };
    if family != want {
        return Err(SignatureError::before(
            "signature.public_key_type",
            format!(
                "img_signature_key_type {} needs an {want} certificate but the signing \
                 certificate holds an {family} key",
                key_type.name()
            ),
        ));
    }
    if let (KeyType::Ecc(curve), CurveCheck::Strict) = (key_type, curve_check) {
        let actual = key
            .ec_key()
            .ok()
            .and_then(|k| k.group().curve_name())
            .map(|n| n.short_name().unwrap_or("unnamed").to_string())
            .unwrap_or_else(|| "an unnamed curve".to_string());
        let matches = key
            .ec_key()
            .ok()
            .and_then(|k| k.group().curve_name())
            .is_some_and(|n| n == curve.nid());
        if !matches {
            return Err(SignatureError::before(
                "signature.curve",
                format!(
                    "img_signature_key_type {} but the signing certificate's key is on {actual}",
                    curve.key_type_name()
                ),
            ));
        }
    }
    Ok(())
}

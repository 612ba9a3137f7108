//! Certificate trust, reproducing cursive's `certificate_utils.verify_certificate`.
//!
//! Rules (cursive 0.3, as Nova runs it with `enforce_valid_dates`, `enforce_signing_extensions`
//! and `enforce_path_length` all on):
//! 1. A trusted certificate is usable only if `now` is within its validity dates and it has
//!    basicConstraints `CA:TRUE` *and* a keyUsage extension with `keyCertSign`; unusable ones
//!    are skipped (here: with a warning).
//! 2. The signing certificate must be within its validity dates.
//! 3. The chain is built upwards: the issuer of each link is the first usable trusted
//!    certificate (in list order) whose subject equals the link's issuer name and whose key
//!    verifies the link's signature. RSA issuers verify with PKCS#1 v1.5 only, so an
//!    RSASSA-PSS-signed certificate never links (cursive quirk, kept). Issuers whose key is
//!    not RSA, EC or DSA never link (cursive crashes on them).
//! 4. Building ends when a link's issuer is the link itself (a self-signed root in the trusted
//!    list); failing to find an issuer fails the whole check.
//! 5. Every certificate above the signing certificate with a pathLenConstraint must allow the
//!    number of intermediates below it.
//!
//! Difference: cursive loops forever on an issuer cycle (A issued by B, B by A, both trusted);
//! imgpipe stops after as many links as there are usable trusted certificates and reports
//! `certificate.chain_loop`.

use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::nid::Nid;
use openssl::pkey::Id;
use openssl::x509::{X509, X509KeyUsage, X509NameRef, X509Ref};

use super::{Phase, SignatureError, der};

fn err(check: &'static str, message: String) -> SignatureError {
    SignatureError {
        phase: Phase::BeforeStream,
        check,
        message,
    }
}

/// A short human name for a certificate in messages: its subject and validity.
pub(crate) fn describe(cert: &X509Ref) -> String {
    let subject = name_text(cert.subject_name());
    format!(
        "\"{subject}\" (valid {} to {})",
        cert.not_before(),
        cert.not_after()
    )
}

fn name_text(name: &X509NameRef) -> String {
    let mut parts = Vec::new();
    for e in name.entries() {
        let key = e.object().nid().short_name().unwrap_or("?").to_string();
        let value = e
            .data()
            .to_string()
            .unwrap_or_else(|_| hex::encode(e.data().as_slice()));
        parts.push(format!("{key}={value}"));
    }
    parts.join(", ")
}

/// Names compare attribute by attribute (OID and decoded value), like python-cryptography's
/// `Name.__eq__`; the ASN.1 string type does not matter.
fn names_equal(a: &X509NameRef, b: &X509NameRef) -> bool {
    let mut ia = a.entries();
    let mut ib = b.entries();
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) => {
                if x.object().to_string() != y.object().to_string() {
                    return false;
                }
                let same = match (x.data().to_string(), y.data().to_string()) {
                    (Ok(u), Ok(v)) => u == v,
                    _ => x.data().as_slice() == y.data().as_slice(),
                };
                if !same {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

fn unix_seconds(t: &Asn1TimeRef) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(t).ok()?;
    i64::from(d.days)
        .checked_mul(86_400)?
        .checked_add(i64::from(d.secs))
}

/// `Ok(())` when `now` is within `[notBefore, notAfter]` (inclusive, like cursive); else a
/// description of which bound failed.
pub(crate) fn within_dates(cert: &X509Ref, now: SystemTime) -> Result<(), String> {
    let (secs, nanos) = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            (
                -i64::try_from(d.as_secs()).unwrap_or(i64::MAX) - i64::from(d.subsec_nanos() > 0),
                0,
            )
        }
    };
    let (Some(nb), Some(na)) = (
        unix_seconds(cert.not_before()),
        unix_seconds(cert.not_after()),
    ) else {
        return Err("its validity dates cannot be interpreted".to_string());
    };
    if secs < nb {
        return Err(format!(
            "it is not valid before {} (now is {secs} s since the epoch)",
            cert.not_before()
        ));
    }
    if secs > na || (secs == na && nanos > 0) {
        return Err(format!(
            "it expired at {} (now is {secs} s since the epoch)",
            cert.not_after()
        ));
    }
    Ok(())
}

/// cursive's `can_sign_certificates`: basicConstraints CA:TRUE and keyUsage keyCertSign, both
/// extensions present.
fn can_sign_certificates(cert: &X509Ref) -> Result<(), String> {
    let der = cert
        .to_der()
        .map_err(|e| format!("it cannot be re-encoded: {e}"))?;
    match der::basic_constraints(&der) {
        Ok(Some(bc)) if bc.ca => {}
        Ok(Some(_)) => return Err("its basicConstraints say CA:FALSE".to_string()),
        Ok(None) => return Err("it has no basicConstraints extension".to_string()),
        Err(e) => return Err(format!("its basicConstraints cannot be read: {e}")),
    }
    match cert.key_usage() {
        None => Err("it has no keyUsage extension".to_string()),
        Some(ku) if ku.contains(X509KeyUsage::KEY_CERT_SIGN) => Ok(()),
        Some(_) => Err("its keyUsage lacks keyCertSign".to_string()),
    }
}

/// cursive's `is_issuer`: subject/issuer names match and `issuer`'s key verifies `cert`.
fn is_issuer(issuer: &X509Ref, cert: &X509Ref) -> bool {
    if !names_equal(issuer.subject_name(), cert.issuer_name()) {
        return false;
    }
    let Ok(key) = issuer.public_key() else {
        return false;
    };
    let ok = match key.id() {
        Id::RSA | Id::RSA_PSS => {
            // cursive verifies RSA certificate signatures with PKCS#1 v1.5 only.
            cert.signature_algorithm().object().nid() != Nid::RSASSAPSS
                && cert.verify(&key).unwrap_or(false)
        }
        Id::EC | Id::DSA => cert.verify(&key).unwrap_or(false),
        _ => false,
    };
    // Drop whatever a failed verification left on OpenSSL's error queue.
    let _ = openssl::error::ErrorStack::get();
    ok
}

fn der_of(cert: &X509Ref) -> Vec<u8> {
    cert.to_der().unwrap_or_default()
}

/// Verify `signing` against `trusted` at `now`, cursive's way. Skipped trusted certificates
/// are reported in `warnings`.
pub(crate) fn verify_certificate(
    signing: &X509Ref,
    trusted: &[X509],
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Result<(), SignatureError> {
    let mut usable: Vec<(usize, &X509)> = Vec::new();
    for (i, cert) in trusted.iter().enumerate() {
        let verdict = within_dates(cert, now).and_then(|()| can_sign_certificates(cert));
        match verdict {
            Ok(()) => usable.push((i, cert)),
            Err(why) => warnings.push(format!(
                "trusted certificate #{i} {} cannot sign certificates and is ignored: {why}",
                describe(cert)
            )),
        }
    }
    if let Err(why) = within_dates(signing, now) {
        return Err(err(
            "certificate.validity",
            format!(
                "the signing certificate {} is outside its validity dates: {why}",
                describe(signing)
            ),
        ));
    }
    // chain[0] = topmost link found so far; None = the signing certificate itself.
    let mut chain: Vec<(Option<usize>, &X509Ref)> = vec![(None, signing)];
    let mut current: &X509Ref = signing;
    loop {
        let Some(&(idx, issuer)) = usable.iter().find(|(_, c)| is_issuer(c, current)) else {
            let which = match chain.first().and_then(|(i, _)| *i) {
                None => "the signing certificate".to_string(),
                Some(i) => format!("trusted certificate #{i}"),
            };
            return Err(err(
                "certificate.chain",
                format!(
                    "certificate chain building failed: no usable trusted certificate ({} of \
                     {} usable) issued {which} {} (issuer \"{}\"); the chain must reach a \
                     self-signed CA in the trusted list",
                    usable.len(),
                    trusted.len(),
                    describe(current),
                    name_text(current.issuer_name())
                ),
            ));
        };
        if der_of(issuer) == der_of(current) {
            break;
        }
        if chain.len() > usable.len() {
            return Err(err(
                "certificate.chain_loop",
                format!(
                    "certificate chain building failed: the trusted certificates issue each \
                     other in a cycle (more than {} links)",
                    usable.len()
                ),
            ));
        }
        chain.insert(0, (Some(idx), issuer));
        current = issuer;
    }
    // Path length: every link above the signing certificate.
    let n = chain.len();
    for (i, (idx, cert)) in chain.iter().enumerate().take(n.saturating_sub(1)) {
        let bc = der::basic_constraints(&der_of(cert)).ok().flatten();
        let Some(bc) = bc else {
            return Err(err(
                "certificate.path_length",
                format!(
                    "trusted certificate #{} has no basicConstraints extension",
                    idx.unwrap_or_default()
                ),
            ));
        };
        let Some(limit) = bc.path_len else { continue };
        // intermediates strictly between this certificate and the signing certificate
        let needed = (n - i).saturating_sub(2);
        if usize::try_from(limit).unwrap_or(usize::MAX) < needed {
            return Err(err(
                "certificate.path_length",
                format!(
                    "trusted certificate #{} {} allows {limit} intermediate certificate(s) \
                     below it (pathLenConstraint) but the chain has {needed}",
                    idx.unwrap_or_default(),
                    describe(cert)
                ),
            ));
        }
    }
    Ok(())
}

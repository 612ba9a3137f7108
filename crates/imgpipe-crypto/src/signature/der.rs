//! The one X.509 detail the `openssl` crate does not expose safely: whether a certificate
//! carries a basicConstraints extension and what it says. A minimal, bounds-checked DER walk
//! over the certificate's own encoding (already parsed by OpenSSL, so well-formed in practice;
//! every step is still checked and a surprise yields `Err`, never a panic).

/// A decoded basicConstraints extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BasicConstraints {
    /// `cA` (DEFAULT FALSE).
    pub ca: bool,
    /// `pathLenConstraint`, if present (values above `u32::MAX` saturate).
    pub path_len: Option<u32>,
}

/// basicConstraints OID 2.5.29.19, content octets.
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];

struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Read one TLV from the front of `input`; returns it and the rest.
fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), &'static str> {
    let (&tag, rest) = input.split_first().ok_or("truncated tag")?;
    if tag & 0x1f == 0x1f {
        return Err("high tag numbers are not used in certificates");
    }
    let (&first, mut rest) = rest.split_first().ok_or("truncated length")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err("unsupported length form");
        }
        let (bytes, after) = rest.split_at_checked(n).ok_or("truncated length")?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    let (body, rest) = rest.split_at_checked(len).ok_or("length beyond the data")?;
    Ok((Tlv { tag, body }, rest))
}

/// The basicConstraints extension of a DER certificate: `Ok(None)` when absent.
///
/// # Errors
/// A malformed structure or the extension appearing twice (which python-cryptography, and so
/// cursive, refuses as well).
pub(crate) fn basic_constraints(cert_der: &[u8]) -> Result<Option<BasicConstraints>, &'static str> {
    let (cert, _) = read(cert_der)?;
    let (tbs, _) = read(cert.body)?;
    let mut fields = tbs.body;
    let mut found = None;
    while !fields.is_empty() {
        let (field, rest) = read(fields)?;
        fields = rest;
        // [3] EXPLICIT Extensions
        if field.tag != 0xa3 {
            continue;
        }
        let (exts, _) = read(field.body)?;
        let mut list = exts.body;
        while !list.is_empty() {
            let (ext, rest) = read(list)?;
            list = rest;
            let (oid, mut inner) = read(ext.body)?;
            if oid.tag != 0x06 || oid.body != OID_BASIC_CONSTRAINTS {
                continue;
            }
            if found.is_some() {
                return Err("duplicate basicConstraints extension");
            }
            let (mut next, after) = read(inner)?;
            if next.tag == 0x01 {
                // critical BOOLEAN
                inner = after;
                next = read(inner)?.0;
            }
            if next.tag != 0x04 {
                return Err("extnValue is not an OCTET STRING");
            }
            let (seq, _) = read(next.body)?;
            if seq.tag != 0x30 {
                return Err("basicConstraints is not a SEQUENCE");
            }
            let mut bc = BasicConstraints {
                ca: false,
                path_len: None,
            };
            let mut items = seq.body;
            while !items.is_empty() {
                let (item, rest) = read(items)?;
                items = rest;
                match item.tag {
                    0x01 => bc.ca = item.body.iter().any(|&b| b != 0),
                    0x02 => {
                        if item.body.first().is_some_and(|&b| b & 0x80 != 0) {
                            return Err("negative pathLenConstraint");
                        }
                        let digits = item.body.iter().skip_while(|&&b| b == 0);
                        let mut v: u64 = 0;
                        for &b in digits {
                            v = v.saturating_mul(256).saturating_add(u64::from(b));
                        }
                        bc.path_len = Some(u32::try_from(v).unwrap_or(u32::MAX));
                    }
                    _ => return Err("unexpected field in basicConstraints"),
                }
            }
            found = Some(bc);
        }
    }
    Ok(found)
}

//! LUKS1 and LUKS2 encrypted volumes. The payload (the virtual disk) starts at the payload
//! offset (LUKS1, in 512-byte sectors) or at the crypt segment's offset (LUKS2 JSON metadata).

use crate::Format;

use super::probe::{Ctx, Deferred, Finding, Found, Probe, arr, conclude, gate};

const MAGIC: &[u8] = b"LUKS\xba\xbe";
const LUKS2_BIN_HEADER: u64 = 4096;
/// LUKS2 header sizes allowed by the on-disk format (binary header + JSON area).
const LUKS2_HDR_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];

/// Probe for LUKS (v1 or v2).
pub(crate) fn probe(ctx: &Ctx<'_>) -> Probe {
    if let Some(p) = gate(ctx, 0, MAGIC) {
        return p;
    }
    let mut f = Found::new(Format::Luks);
    let r = (|| {
        let version = ctx.get(6, 2).map(|b| u16::from_be_bytes(arr(b)))?;
        match version {
            1 => {
                f.subformat = Some("luks1");
                let payload = u64::from(ctx.be32(104)?);
                let key_bytes = ctx.be32(108)?;
                if payload == 0 || !matches!(key_bytes, 16 | 32 | 64) {
                    f.findings.push(Finding::malformed(
                        "luks.header",
                        format!(
                            "LUKS1 payload offset {payload} sectors, key size {key_bytes} bytes; \
                             allowed: a non-zero offset and a 16, 32 or 64-byte key"
                        ),
                    ));
                }
                f.deferred.push(Deferred::Payload {
                    format: Format::Luks,
                    offset: payload.saturating_mul(512),
                    size: None,
                });
            }
            2 => {
                f.subformat = Some("luks2");
                let hdr_size = ctx.be64(8)?;
                if !LUKS2_HDR_SIZES.contains(&hdr_size) {
                    f.findings.push(Finding::malformed(
                        "luks.header",
                        format!(
                            "LUKS2 header size is {hdr_size}; allowed: a power of two in 16 KiB..=4 MiB"
                        ),
                    ));
                    return Ok(());
                }
                let json = ctx.get(LUKS2_BIN_HEADER, hdr_size - LUKS2_BIN_HEADER)?;
                let json = json.split(|&b| b == 0).next().unwrap_or(&[]);
                match luks2_segment(json) {
                    Ok((offset, size)) => f.deferred.push(Deferred::Payload {
                        format: Format::Luks,
                        offset,
                        size,
                    }),
                    Err(why) => f.findings.push(Finding::malformed("luks.metadata", why)),
                }
            }
            v => f.findings.push(Finding::malformed(
                "luks.version",
                format!("LUKS version is {v}; allowed: 1 or 2"),
            )),
        }
        Ok(())
    })();
    conclude(f, r)
}

/// The data segment of LUKS2 JSON metadata: `(offset, Some(size) | None for "dynamic")`.
fn luks2_segment(json: &[u8]) -> Result<(u64, Option<u64>), String> {
    let v: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| format!("LUKS2 JSON metadata does not parse: {e}"))?;
    let segs = v
        .get("segments")
        .and_then(|s| s.as_object())
        .ok_or("LUKS2 JSON metadata has no segments object")?;
    if segs.len() != 1 {
        return Err(format!(
            "LUKS2 metadata has {} segments; allowed: exactly one crypt segment",
            segs.len()
        ));
    }
    let seg = segs
        .values()
        .next()
        .ok_or("LUKS2 metadata has no segment")?;
    let num = |k: &str| -> Result<Option<u64>, String> {
        match seg.get(k).and_then(|x| x.as_str()) {
            Some("dynamic") if k == "size" => Ok(None),
            Some(s) => s
                .parse::<u64>()
                .map(Some)
                .map_err(|_| format!("LUKS2 segment {k} is {s:?}; allowed: a decimal byte count")),
            None => Err(format!("LUKS2 segment has no string {k}")),
        }
    };
    let offset = num("offset")?.ok_or("LUKS2 segment offset is missing")?;
    Ok((offset, num("size")?))
}

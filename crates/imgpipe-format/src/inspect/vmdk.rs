//! VMDK: the hosted sparse extent header (`KDMV`) with its embedded text descriptor, and
//! text-only descriptor files (recognised, always rejected).

use crate::Format;

use super::probe::{Ctx, Deferred, Finding, Found, Probe, Stop, conclude, gate, le32_at, le64_at};

const MAGIC: &[u8] = b"KDMV";
/// Grain directory offset meaning "look in the footer" (streamOptimized).
pub(crate) const GD_AT_END: u64 = u64::MAX;
/// Descriptor cap: at most 2048 sectors (1 MiB), as qemu.
const MAX_DESC_SECTORS: u64 = 2048;
/// A text-only descriptor is looked for in at most this many leading bytes.
const TEXT_SCAN: u64 = 64 * 1024;
/// Descriptor lines longer than this are malformed (and never echoed in full).
const MAX_LINE: usize = 1024;

/// What the streamOptimized footer must repeat from the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FooterExpect {
    pub version: u32,
    pub desc_offset: u64,
    pub desc_size: u64,
}

/// Check the last 1536 bytes of a streamOptimized VMDK whose header defers to the footer:
/// footer marker, footer header, end-of-stream marker.
pub(crate) fn check_footer(exp: &FooterExpect, tail: &[u8]) -> Option<Finding> {
    let bad = |why: String| Some(Finding::malformed("vmdk.footer", why));
    if tail.len() < 1536 {
        return bad(format!(
            "streamOptimized VMDK has its grain directory in a footer but the stream is only {} \
             bytes long; allowed: footer marker + footer + end-of-stream marker (1536 bytes)",
            tail.len()
        ));
    }
    let (marker, rest) = tail.split_at(512);
    let (footer, eos) = rest.split_at(512);
    if le32_at(marker, 8) != 0 || le32_at(marker, 12) != 3 || marker[16..].iter().any(|&b| b != 0) {
        return bad(format!(
            "footer marker has size {} type {}; allowed: size 0, type 3 (footer), zero padding",
            le32_at(marker, 8),
            le32_at(marker, 12)
        ));
    }
    if footer.get(..4) != Some(MAGIC) {
        return bad("footer does not start with KDMV".into());
    }
    let (v, doff, dsize, gd) = (
        le32_at(footer, 4),
        le64_at(footer, 28),
        le64_at(footer, 36),
        le64_at(footer, 56),
    );
    if v != exp.version || doff != exp.desc_offset || dsize != exp.desc_size {
        return bad(format!(
            "footer (version {v}, descriptor {doff}+{dsize}) differs from the header (version {}, \
             descriptor {}+{})",
            exp.version, exp.desc_offset, exp.desc_size
        ));
    }
    if gd == GD_AT_END {
        return bad("footer's grain directory offset points at another footer".into());
    }
    if eos.iter().any(|&b| b != 0) {
        return bad(format!(
            "last 512 bytes are not an end-of-stream marker (type {}); allowed: all zero",
            le32_at(eos, 12)
        ));
    }
    None
}

/// Probe for a sparse VMDK (`KDMV` at 0).
pub(crate) fn probe(ctx: &Ctx<'_>) -> Probe {
    if let Some(p) = gate(ctx, 0, MAGIC) {
        return p;
    }
    let mut f = Found::new(Format::Vmdk);
    let r = body(ctx, &mut f);
    conclude(f, r)
}

fn body(ctx: &Ctx<'_>, f: &mut Found) -> Result<(), Stop> {
    let version = ctx.le32(4)?;
    let capacity = ctx.le64(12)?;
    let desc_offset = ctx.le64(28)?;
    let desc_size = ctx.le64(36)?;
    let gd_offset = ctx.le64(56)?;
    f.virtual_size = Some(capacity.saturating_mul(512));
    if !(1..=3).contains(&version) {
        f.findings.push(Finding::malformed(
            "vmdk.version",
            format!("VMDK sparse header version is {version}; allowed: 1..=3"),
        ));
        return Ok(());
    }
    if capacity.checked_mul(512).is_none() {
        f.findings.push(Finding::malformed(
            "vmdk.capacity",
            format!("VMDK capacity {capacity} sectors overflows a byte count"),
        ));
    }
    if capacity == 0 {
        // qemu then opens the descriptor's extents instead of this file (CVE-2022-47951 shape).
        f.findings.push(Finding::unsafe_(
            "vmdk.capacity_zero",
            "VMDK sparse header capacity is 0, which makes qemu follow the descriptor's extents; \
             allowed: a non-zero capacity",
        ));
    }
    if desc_offset != 1 || desc_size == 0 || desc_size > MAX_DESC_SECTORS {
        f.findings.push(Finding::malformed(
            "vmdk.descriptor_range",
            format!(
                "VMDK descriptor at sector {desc_offset} with {desc_size} sectors; allowed: sector \
                 1, 1..={MAX_DESC_SECTORS} sectors"
            ),
        ));
        return Ok(());
    }
    let raw = ctx.get(512, desc_size * 512)?;
    let text = raw.split(|&b| b == 0).next().unwrap_or(&[]);
    let desc = parse_descriptor(text, f);
    if let Some(desc) = desc {
        let stream = desc.create_type.eq_ignore_ascii_case("streamOptimized");
        f.subformat = Some(if stream {
            "streamOptimized"
        } else {
            "monolithicSparse"
        });
        if gd_offset == GD_AT_END {
            if stream {
                f.deferred.push(Deferred::VmdkFooter(FooterExpect {
                    version,
                    desc_offset,
                    desc_size,
                }));
            } else {
                f.findings.push(Finding::malformed(
                    "vmdk.footer",
                    "VMDK grain directory is in a footer but createType is not streamOptimized",
                ));
            }
        }
    }
    Ok(())
}

struct Descriptor {
    create_type: String,
}

/// Parse and check a descriptor; findings go to `f`. Returns the descriptor when its createType
/// is acceptable.
fn parse_descriptor(text: &[u8], f: &mut Found) -> Option<Descriptor> {
    let Ok(text) = std::str::from_utf8(text) else {
        f.findings.push(Finding::malformed(
            "vmdk.descriptor",
            "VMDK descriptor is not ASCII text",
        ));
        return None;
    };
    if !text.is_ascii() {
        f.findings.push(Finding::malformed(
            "vmdk.descriptor",
            "VMDK descriptor is not ASCII text",
        ));
        return None;
    }
    let mut create_type: Option<String> = None;
    let mut extents: Vec<&str> = Vec::new();
    for raw_line in text.lines() {
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() > MAX_LINE {
            f.findings.push(Finding::malformed(
                "vmdk.descriptor",
                format!(
                    "VMDK descriptor line of {} bytes; allowed: at most {MAX_LINE}",
                    line.len()
                ),
            ));
            return None;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if ["RW", "RDONLY", "NOACCESS"]
            .iter()
            .any(|a| first.eq_ignore_ascii_case(a))
        {
            extents.push(line);
        } else if let Some((k, v)) = line.split_once('=') {
            let key = k.trim();
            let val = v.trim().trim_matches('"');
            if key.starts_with("ddb.") {
                continue;
            }
            if key.contains(char::is_whitespace) {
                f.findings.push(Finding::malformed(
                    "vmdk.descriptor",
                    format!("VMDK descriptor line {line:?} is neither a field nor an extent"),
                ));
                return None;
            }
            match key.to_ascii_lowercase().as_str() {
                "createtype" => create_type = Some(val.to_string()),
                "parentcid" if !val.eq_ignore_ascii_case("ffffffff") => {
                    f.findings.push(Finding::unsafe_(
                        "vmdk.parent_cid",
                        format!("VMDK parentCID is {val}; allowed: ffffffff (no parent)"),
                    ))
                }
                "parentfilenamehint" => f.findings.push(Finding::unsafe_(
                    "vmdk.parent_hint",
                    format!("VMDK names a parent {val:?} (parentFileNameHint); allowed: none"),
                )),
                _ => {}
            }
        } else {
            f.findings.push(Finding::malformed(
                "vmdk.descriptor",
                format!("VMDK descriptor line {line:?} is neither a field nor an extent"),
            ));
            return None;
        }
    }
    let Some(ct) = create_type else {
        f.findings.push(Finding::unsafe_(
            "vmdk.create_type",
            "VMDK descriptor has no createType; allowed: monolithicSparse or streamOptimized",
        ));
        return None;
    };
    let ok_type =
        ct.eq_ignore_ascii_case("monolithicSparse") || ct.eq_ignore_ascii_case("streamOptimized");
    if !ok_type {
        f.findings.push(Finding::unsafe_(
            "vmdk.create_type",
            format!("VMDK createType is {ct:?}; allowed: monolithicSparse or streamOptimized"),
        ));
    }
    if extents.len() != 1 {
        f.findings.push(Finding::unsafe_(
            "vmdk.extents",
            format!(
                "VMDK descriptor lists {} extents; allowed: exactly one SPARSE extent",
                extents.len()
            ),
        ));
    }
    for e in &extents {
        // ACCESS SIZE TYPE ["FILENAME" [OFFSET]]
        let mut parts = e.splitn(4, char::is_whitespace).filter(|s| !s.is_empty());
        let _access = parts.next();
        let _size = parts.next();
        let ty = parts.next().unwrap_or("");
        let rest = parts.next().unwrap_or("").trim();
        if !ty.eq_ignore_ascii_case("SPARSE") {
            f.findings.push(Finding::unsafe_(
                "vmdk.extent_type",
                format!("VMDK extent {e:?} has type {ty:?}; allowed: SPARSE (this file)"),
            ));
        }
        let name = rest.strip_prefix('"').and_then(|r| r.split_once('"'));
        match name {
            Some((n, after)) => {
                if n.is_empty() || n.contains(['/', '\\']) || n == ".." || n.contains(':') {
                    f.findings.push(Finding::unsafe_(
                        "vmdk.extent_path",
                        format!(
                            "VMDK extent names {n:?}, a path that can refer to another file; \
                             allowed: a bare file name (this file)"
                        ),
                    ));
                }
                if !after.trim().is_empty() {
                    f.findings.push(Finding::unsafe_(
                        "vmdk.extent_type",
                        format!(
                            "VMDK extent {e:?} has an offset; allowed: a SPARSE extent without one"
                        ),
                    ));
                }
            }
            None => f.findings.push(Finding::malformed(
                "vmdk.extent_path",
                format!("VMDK extent {e:?} has no quoted file name"),
            )),
        }
    }
    ok_type.then_some(Descriptor { create_type: ct })
}

/// Probe for a text-only VMDK descriptor file: leading ASCII text with a `createType=` line.
pub(crate) fn probe_text(ctx: &Ctx<'_>) -> Probe {
    // The first 512 bytes (or the whole stream, if shorter) must be text.
    let head = match ctx.get(0, 512) {
        Ok(b) => b,
        Err(Stop::Need(n)) => return Probe::Need(n),
        Err(Stop::Short { .. }) => ctx.data,
    };
    if head.is_empty() || !head.iter().all(|&b| is_text(b)) || head.get(..4) == Some(MAGIC) {
        return Probe::NotThis;
    }
    let scan = match ctx.get(0, TEXT_SCAN) {
        Ok(b) => b,
        Err(Stop::Need(n)) => return Probe::Need(n),
        Err(Stop::Short { .. }) => ctx.data.get(..TEXT_SCAN as usize).unwrap_or(ctx.data),
    };
    let text_len = scan.iter().position(|&b| !is_text(b)).unwrap_or(scan.len());
    let text = scan.get(..text_len).unwrap_or(&[]);
    let has_create = text.split(|&b| b == b'\n').any(|l| {
        let l = l.trim_ascii_start();
        l.len() >= 10 && l[..10].eq_ignore_ascii_case(b"createtype") && {
            l[10..].trim_ascii_start().first() == Some(&b'=')
        }
    });
    if !has_create {
        return Probe::NotThis;
    }
    let mut f = Found::new(Format::Vmdk);
    f.subformat = Some("descriptor");
    f.findings.push(Finding::unsafe_(
        "vmdk.text_descriptor",
        "VMDK is a text-only descriptor file whose extents live in other files; allowed: a \
         single-file sparse VMDK (KDMV header)",
    ));
    // Still report what the descriptor itself says (parent, extents) for the record.
    let _ = parse_descriptor(text, &mut f);
    Probe::Found(Box::new(f))
}

fn is_text(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | b'\r' | 0x20..=0x7e)
}

/// Fuzzing: the names and whether-unsafe of the findings of the descriptor check on `text`;
/// `text` is cut at its first NUL, as the probe does.
pub(crate) fn descriptor_findings(text: &[u8]) -> Vec<(&'static str, bool)> {
    let mut f = Found::new(Format::Vmdk);
    let text = text.split(|&b| b == 0).next().unwrap_or(&[]);
    let _ = parse_descriptor(text, &mut f);
    f.findings
        .iter()
        .map(|x| (x.check, x.class == super::probe::Class::Unsafe))
        .collect()
}

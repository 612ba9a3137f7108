//! The inspector against a corpus of real images (qemu-img, qemu-io, genisoimage, xorriso, sgdisk,
//! sfdisk) and crafted unsafe variants: formats, subformats, virtual sizes equal to
//! `qemu-img info -f <fmt>`, named rejections, chunking invariance, provisional semantics, policy.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "support/inspect_corpus.rs"]
mod corpus;

use corpus::{CHUNKS, Case, Expect, inspect_bytes, inspect_file, qemu_virtual_size};
use imgpipe_format::Format;
use imgpipe_format::inspect::{Inspector, PartitionTable, Policy, ViolationKind};

fn build() -> Option<(tempfile::TempDir, Vec<Case>)> {
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus::build(dir.path())?;
    Some((dir, cases))
}

#[test]
fn corpus_verdicts_match_qemu_and_expectations() {
    let Some((_dir, cases)) = build() else { return };
    let mut failures = Vec::new();
    let (mut accepted, mut rejected) = (0, 0);
    for c in &cases {
        let (_, v) = inspect_file(&c.path, Policy::default(), 65536);
        match &c.expect {
            Expect::Accept {
                format,
                subformat,
                partition,
            } => {
                accepted += 1;
                let want_vs = qemu_virtual_size(c.qemu_fmt.unwrap(), &c.path);
                if v.format != *format
                    || v.subformat != *subformat
                    || v.partition_table != *partition
                    || !v.is_safe()
                    || v.virtual_size != Some(want_vs)
                {
                    failures.push(format!(
                        "{}: want {format} {subformat:?} {partition:?} safe size {want_vs}, got {} {:?} \
                         {:?} size {:?} violations {:?}",
                        c.name, v.format, v.subformat, v.partition_table, v.virtual_size, v.violations
                    ));
                }
            }
            Expect::Reject { format, check } => {
                rejected += 1;
                if v.format != *format || v.violation(check).is_none() {
                    failures.push(format!(
                        "{}: want {format} rejected by {check}, got {} {:?}",
                        c.name, v.format, v.violations
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("corpus: {accepted} accepted, {rejected} rejected");
    if corpus::require_oracles() {
        assert!(accepted >= 40, "only {accepted} accepted images");
    }
    assert!(accepted + rejected >= 40);
}

#[test]
fn corpus_verdicts_do_not_depend_on_chunking() {
    let Some((_dir, cases)) = build() else { return };
    for c in &cases {
        let data = std::fs::read(&c.path).unwrap();
        let reference = inspect_bytes(&data, Policy::default(), data.len().max(1));
        for chunk in CHUNKS {
            let chunk = if chunk == 0 { data.len().max(1) } else { chunk };
            let got = inspect_bytes(&data, Policy::default(), chunk);
            assert_eq!(got, reference, "{}: chunk size {chunk}", c.name);
        }
        // A stream-length hint must not change the final verdict.
        let mut i = Inspector::new(Policy::default()).with_stream_len(Some(data.len() as u64));
        for ch in data.chunks(4096) {
            i.feed(ch);
        }
        assert_eq!(i.finish(), reference.1, "{}: with stream length", c.name);
    }
}

#[test]
fn header_violations_are_provisional_and_decided_early() {
    let Some((_dir, cases)) = build() else { return };
    // Checks that only the end of the stream (or its length) can reveal.
    let end_only = [
        "vmdk.footer",
        "qcow2.l1_table",
        "qcow2.snapshot_table",
        "format.unsupported", // gzip etc. are prefix checks, but QED/qcow1 too: all prefix; kept for DMG
    ];
    for c in &cases {
        let data = std::fs::read(&c.path).unwrap();
        let mut i = Inspector::new(Policy::default());
        let mut decided_at = None;
        for (k, ch) in data.chunks(512).enumerate() {
            if i.feed(ch) == imgpipe_format::inspect::Status::Decided {
                decided_at = Some((k + 1) * 512);
                break;
            }
        }
        let Some(at) = decided_at else {
            // Only a stream shorter than what the probes need may stay undecided until its end.
            assert!(
                data.len() < 64 * 1024,
                "{}: not decided within {} bytes",
                c.name,
                data.len()
            );
            continue;
        };
        let p = i.provisional().unwrap().clone();
        assert!(p.bytes_examined <= Inspector::MAX_LOOKAHEAD);
        assert!(
            at as u64 <= p.bytes_examined.div_ceil(512) * 512 + 512,
            "{}: decided late",
            c.name
        );
        match (&c.expect, p.format) {
            (_, Format::Qcow2 | Format::Vmdk | Format::Vdi | Format::Luks)
                if p.subformat != Some("descriptor") =>
            {
                assert!(
                    p.bytes_examined <= 64 * 1024,
                    "{}: header format needed {}",
                    c.name,
                    p.bytes_examined
                );
            }
            _ => {}
        }
        if let Expect::Reject { check, .. } = c.expect
            && !end_only.contains(&check)
            && !c.name.contains("fixed")
            && !check.starts_with("vmdk.footer")
        {
            assert!(
                p.violation(check).is_some(),
                "{}: {check} not in provisional verdict {:?}",
                c.name,
                p.violations
            );
        }
        if let Expect::Accept { format, .. } = c.expect {
            assert!(p.is_safe(), "{}: provisional {:?}", c.name, p.violations);
            if format == Format::Vhd && c.name.contains("fixed") {
                assert_eq!(
                    p.format,
                    Format::Raw,
                    "{}: a fixed VHD is raw until its footer",
                    c.name
                );
                assert!(p.footer_pending);
            } else {
                assert_eq!(p.format, format, "{}", c.name);
            }
        }
    }
}

#[test]
fn length_dependent_checks_are_provisional_when_the_length_is_known() {
    let Some((_dir, cases)) = build() else { return };
    for c in cases.iter().filter(|c| c.name.contains("beyond file")) {
        let data = std::fs::read(&c.path).unwrap();
        let mut i = Inspector::new(Policy::default()).with_stream_len(Some(data.len() as u64));
        for ch in data.chunks(65536) {
            if i.feed(ch) == imgpipe_format::inspect::Status::Decided {
                break;
            }
        }
        let Expect::Reject { check, .. } = c.expect else {
            unreachable!()
        };
        assert!(
            i.provisional().unwrap().violation(check).is_some(),
            "{}",
            c.name
        );
    }
}

fn find<'a>(cases: &'a [Case], name: &str) -> &'a Case {
    cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

#[test]
fn policy_declared_allowed_and_cap() {
    let Some((_dir, cases)) = build() else { return };
    let pol = |declared: Option<Format>, allowed: Option<Vec<Format>>| Policy {
        declared,
        allowed,
        ..Policy::default()
    };
    let verdict = |name: &str, p: Policy| inspect_file(&find(&cases, name).path, p, 65536);

    // Declared must match detected.
    let (_, v) = verdict("qcow2 v3 data", pol(Some(Format::Raw), None));
    let m = v.violation("policy.format_mismatch").unwrap();
    assert_eq!(m.kind, ViolationKind::Policy);
    assert!(
        m.message.contains("raw") && m.message.contains("qcow2"),
        "{m}"
    );
    assert!(
        verdict("qcow2 v3 data", pol(Some(Format::Qcow2), None))
            .1
            .is_safe()
    );
    assert!(
        verdict("raw zeros", pol(Some(Format::Qcow2), None))
            .1
            .violation("policy.format_mismatch")
            .is_some()
    );

    // A raw-declared partitioned disk is raw; a hybrid ISO declared iso is iso.
    if cases.iter().any(|c| c.name == "gpt disk") {
        let (_, v) = verdict("gpt disk", pol(Some(Format::Raw), None));
        assert!(v.is_safe(), "{:?}", v.violations);
        assert_eq!(v.partition_table, Some(PartitionTable::Gpt));
    }
    if cases.iter().any(|c| c.name == "iso hybrid gpt") {
        assert!(
            verdict("iso hybrid gpt", pol(Some(Format::Iso), None))
                .1
                .is_safe()
        );
        assert!(
            verdict("iso hybrid gpt", pol(Some(Format::Raw), None))
                .1
                .violation("policy.format_mismatch")
                .is_some()
        );
    }

    // Fixed VHD: provisionally raw with the footer pending; declared vhd is fine throughout,
    // declared raw is a mismatch once the footer is seen.
    let (p, v) = verdict("vhd fixed", pol(Some(Format::Vhd), None));
    let p = p.unwrap();
    assert_eq!((p.format, p.footer_pending), (Format::Raw, true));
    assert!(p.is_safe(), "{:?}", p.violations);
    assert_eq!(v.format, Format::Vhd);
    assert!(v.is_safe(), "{:?}", v.violations);
    let (p, v) = verdict("vhd fixed", pol(Some(Format::Raw), None));
    assert!(p.unwrap().is_safe());
    assert!(v.violation("policy.format_mismatch").is_some());
    let (p, v) = verdict("vhd fixed", pol(None, Some(vec![Format::Vhd])));
    assert!(p.unwrap().is_safe());
    assert!(v.is_safe());
    let (_, v) = verdict("raw zeros", pol(Some(Format::Vhd), None));
    assert!(v.violation("policy.format_mismatch").is_some());

    // Allowed list.
    let (p, _) = verdict(
        "qcow2 v3 data",
        pol(None, Some(vec![Format::Raw, Format::Vmdk])),
    );
    let p = p.unwrap();
    let na = p.violation("policy.format_not_allowed").unwrap();
    assert!(
        na.message.contains("qcow2") && na.message.contains("vmdk"),
        "{na}"
    );
    assert!(
        verdict("qcow2 v3 data", pol(None, Some(vec![Format::Qcow2])))
            .1
            .is_safe()
    );

    // Size cap.
    let small = Policy {
        max_virtual_size: 8 << 20,
        ..Policy::default()
    };
    assert!(
        verdict("qcow2 v3 data", small.clone())
            .0
            .unwrap()
            .violation("policy.virtual_size")
            .is_some()
    );
    assert!(verdict("qcow2 v3 empty", small).0.unwrap().is_safe());
}

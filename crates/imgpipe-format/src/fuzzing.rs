//! Fuzzing entry points, not API: one function per parser, each a whole harness (the fuzz
//! targets in `fuzz/` are one-line calls), panicking only when an invariant breaks.

/// The VMDK embedded-descriptor parsers of the inspector and of the decoder, on the same text.
///
/// Invariant: the decoder never accepts a descriptor in which the inspector found a parent
/// (`vmdk.parent_cid`, `vmdk.parent_hint`), other than one extent (`vmdk.extents`) or an
/// unacceptable createType — what the decoder itself promises to refuse. It is the second line
/// behind the inspector and must not be laxer about references to other files. (Extent names
/// and offsets are the inspector's alone: the decoder reads only this file.)
pub fn vmdk_descriptor(data: &[u8]) {
    let findings = crate::inspect::vmdk::descriptor_findings(data);
    // The capacity the decoder compares the extent size with: the first extent line's size,
    // so that well-formed descriptors get past that check.
    let capacity = std::str::from_utf8(data)
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let mut w = l.split_whitespace();
                let access = w.next()?;
                ["RW", "RDONLY", "NOACCESS"]
                    .iter()
                    .any(|a| access.eq_ignore_ascii_case(a))
                    .then(|| w.next()?.parse::<u64>().ok())?
            })
        })
        .unwrap_or(0);
    let decoded = crate::decode::fuzz_vmdk_descriptor(data, capacity);
    if decoded.is_ok() {
        const SHARED: [&str; 4] = [
            "vmdk.parent_cid",
            "vmdk.parent_hint",
            "vmdk.extents",
            "vmdk.create_type",
        ];
        let unsafe_: Vec<_> = findings
            .iter()
            .filter(|(c, u)| *u && SHARED.contains(c))
            .collect();
        assert!(
            unsafe_.is_empty(),
            "the decoder accepts a descriptor the inspector finds unsafe: {unsafe_:?}"
        );
    }
}

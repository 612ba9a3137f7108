//! Streaming format inspector: decides what an image is, and whether it is safe, from its bytes
//! alone — before any byte reaches a disk — and never trusts the declared format.
//!
//! # Contract
//!
//! - Feed the stream in order, in chunks of any size: [`Inspector::feed`]. Results never depend
//!   on the chunking.
//! - Once [`Inspector::is_decided`] (at the latest after [`MAX_LOOKAHEAD`] bytes, or at end of
//!   stream), [`Inspector::provisional`] gives the format, the virtual size when the header states
//!   it, and every violation found so far. A provisional verdict with violations is final in the
//!   sense that [`Inspector::finish`] will report them too: reject at once.
//! - At end of stream [`Inspector::finish`] gives the final verdict, adding what only the end can
//!   show: a fixed VHD's footer (provisionally such a stream is [`Format::Raw`] with
//!   [`Verdict::footer_pending`] set; at finish it becomes [`Format::Vhd`]), a DMG trailer, a
//!   streamOptimized VMDK footer, a dynamic VHD's footer copy, qcow2 tables against the file
//!   length, and the virtual size of raw/ISO/LUKS streams.
//! - After the decision, `feed` only counts bytes and keeps the last 1536 of them.
//!
//! Each probe retires as soon as its magic is absent. Header formats decide within 1 KiB; ISO
//! needs 32 KiB + 6 bytes; VHDX needs its region table (192 KiB) and metadata table (qemu puts
//! it at 3 MiB); a text-only VMDK descriptor is looked for in the first 64 KiB of a text stream.
//!
//! Internally probes keep "not this format" ([`probe::Probe::NotThis`]), "malformed"
//! ([`probe::Class::Malformed`]) and "unsafe" ([`probe::Class::Unsafe`]) apart; the policy layer
//! adds [`ViolationKind::Policy`]. Every violation carries a stable dotted check id.
//!
//! ```
//! use imgpipe_format::Format;
//! use imgpipe_format::inspect::{Inspector, Policy, Status};
//!
//! // A qcow2 v3 header for a 1 GiB disk that names a backing file.
//! let mut h = vec![0u8; 64 * 1024]; // enough to rule out an ISO around it (32 KiB + 6)
//! h[..4].copy_from_slice(b"QFI\xfb");
//! h[4..8].copy_from_slice(&3u32.to_be_bytes());
//! h[8..16].copy_from_slice(&512u64.to_be_bytes()); // backing_file_offset
//! h[20..24].copy_from_slice(&16u32.to_be_bytes()); // cluster_bits
//! h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
//! h[36..40].copy_from_slice(&2u32.to_be_bytes()); // l1_size
//! h[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
//! h[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
//! h[56..60].copy_from_slice(&1u32.to_be_bytes());
//! h[96..100].copy_from_slice(&4u32.to_be_bytes());
//! h[100..104].copy_from_slice(&112u32.to_be_bytes());
//!
//! let mut insp = Inspector::new(Policy::default());
//! assert_eq!(insp.feed(&h), Status::Decided);
//! let v = insp.provisional().unwrap();
//! assert_eq!(v.format, Format::Qcow2);
//! assert_eq!(v.virtual_size, Some(1 << 30));
//! assert!(v.violations.iter().any(|x| x.check == "qcow2.backing_file"));
//! assert!(!v.is_safe());
//! ```

mod iso;
mod luks;
mod misc;
mod partition;
pub(crate) mod probe;
mod qcow2;
mod vdi;
mod vhd;
mod vhdx;
pub(crate) mod vmdk;

use std::fmt;

use crate::Format;

use probe::{Class, Ctx, Deferred, End, Finding, Found, Probe};

/// The inspector decides at the latest after this many bytes (or at end of stream). Structures
/// a header places beyond it are reported as `<format>.lookahead` violations.
pub const MAX_LOOKAHEAD: u64 = 8 << 20;

/// Default cap on the virtual size: 64 TiB.
pub const DEFAULT_MAX_VIRTUAL_SIZE: u64 = 64 << 40;

/// Bytes kept from the end of the stream for end-of-stream checks.
const TAIL: usize = 1536;

/// What the caller allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The format the image claims to be (Glance `disk_format`); `None` = no claim. A raw claim
    /// accepts a partitioned raw disk; it does not accept an ISO or a fixed VHD.
    pub declared: Option<Format>,
    /// Formats accepted at all; `None` = any format imgpipe can decode safely.
    pub allowed: Option<Vec<Format>>,
    /// Largest virtual size accepted, in bytes (default [`DEFAULT_MAX_VIRTUAL_SIZE`]).
    pub max_virtual_size: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            declared: None,
            allowed: None,
            max_virtual_size: DEFAULT_MAX_VIRTUAL_SIZE,
        }
    }
}

/// Whether the inspector has reached its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// More bytes are needed before a provisional verdict.
    Pending,
    /// [`Inspector::provisional`] is available.
    Decided,
}

/// A partition table found at the start of a raw disk (or an ISO's system area).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PartitionTable {
    /// A DOS/MBR partition table (boot signature `55 AA` at 510).
    Mbr,
    /// A protective MBR (type 0xEE) followed by a GPT header.
    Gpt,
}

/// Which kind of problem a violation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViolationKind {
    /// The structure is inconsistent, out of range, or truncated.
    Malformed,
    /// The structure is valid but unsafe: references to other files, unknown features, a
    /// polyglot, an unsupported format.
    Unsafe,
    /// The caller's [`Policy`] refuses it (declared format, allowed list, size cap).
    Policy,
}

/// One failed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Stable dotted id, e.g. `"qcow2.backing_file"`, `"polyglot"`, `"policy.format_mismatch"`.
    pub check: &'static str,
    /// Which kind of problem.
    pub kind: ViolationKind,
    /// The value seen and what is allowed.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.check, self.message)
    }
}

/// What the inspector concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The detected format (a partitioned disk is [`Format::Raw`]; a hybrid ISO is [`Format::Iso`]).
    pub format: Format,
    /// A subformat label: `"v2"`/`"v3"` (qcow2), `"monolithicSparse"`/`"streamOptimized"`/
    /// `"descriptor"` (VMDK), `"dynamic"`/`"fixed"`/`"differencing"` (VHD, VDI), `"luks1"`/`"luks2"`,
    /// `"iso9660"`/`"udf"`.
    pub subformat: Option<&'static str>,
    /// Size of the virtual disk in bytes, as `qemu-img info -f <format>` reports it. `None` while it
    /// depends on the stream length and that is not yet known (raw, ISO, LUKS provisionally).
    pub virtual_size: Option<u64>,
    /// A partition table at the start of a raw disk or an ISO.
    pub partition_table: Option<PartitionTable>,
    /// Every failed check; empty = safe.
    pub violations: Vec<Violation>,
    /// How many leading bytes the decision needed (deterministic, independent of chunking).
    pub bytes_examined: u64,
    /// The stream length: known at finish, or provisionally when given by
    /// [`Inspector::with_stream_len`].
    pub stream_len: Option<u64>,
    /// `true` for the verdict of [`Inspector::finish`].
    pub is_final: bool,
    /// Provisional raw verdicts only: the end of the stream may still turn out to be a fixed VHD
    /// footer (→ [`Format::Vhd`]) or a DMG trailer (→ [`Format::Dmg`]).
    pub footer_pending: bool,
}

impl Verdict {
    /// No violation of any kind.
    pub fn is_safe(&self) -> bool {
        self.violations.is_empty()
    }

    /// The violation with this check id, if any.
    pub fn violation(&self, check: &str) -> Option<&Violation> {
        self.violations.iter().find(|v| v.check == check)
    }
}

/// Probes, in priority order (the first match names a polyglot's verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeId {
    Qcow2,
    Qcow1,
    Vmdk,
    VmdkText,
    Vhd,
    Vhdx,
    Vdi,
    Luks,
    Misc(usize),
    Iso,
    Partition,
}

impl ProbeId {
    fn all() -> Vec<ProbeId> {
        let mut v = vec![
            ProbeId::Qcow2,
            ProbeId::Qcow1,
            ProbeId::Vmdk,
            ProbeId::VmdkText,
            ProbeId::Vhd,
            ProbeId::Vhdx,
            ProbeId::Vdi,
            ProbeId::Luks,
        ];
        v.extend((0..misc::COUNT).map(ProbeId::Misc));
        v.push(ProbeId::Iso);
        v.push(ProbeId::Partition);
        v
    }

    fn run(self, ctx: &Ctx<'_>) -> Probe {
        match self {
            ProbeId::Qcow2 => qcow2::probe(ctx),
            ProbeId::Qcow1 => qcow2::probe_qcow1(ctx),
            ProbeId::Vmdk => vmdk::probe(ctx),
            ProbeId::VmdkText => vmdk::probe_text(ctx),
            ProbeId::Vhd => vhd::probe(ctx),
            ProbeId::Vhdx => vhdx::probe(ctx),
            ProbeId::Vdi => vdi::probe(ctx),
            ProbeId::Luks => luks::probe(ctx),
            ProbeId::Misc(i) => misc::probe(ctx, i),
            ProbeId::Iso => iso::probe(ctx),
            ProbeId::Partition => partition::probe(ctx),
        }
    }
}

#[derive(Debug)]
enum SlotState {
    /// Run again once the prefix holds this many bytes.
    Pending(u64),
    Done(Option<Box<Found>>),
}

#[derive(Debug)]
struct Slot {
    id: ProbeId,
    state: SlotState,
    /// Largest prefix length this probe asked for.
    examined: u64,
}

/// What the probes concluded, before the stream length, tail and policy are applied.
#[derive(Debug, Clone)]
struct Detection {
    found: Option<Found>,
    partition: Option<PartitionTable>,
    extra: Vec<Finding>,
    examined: u64,
}

/// The last [`TAIL`] bytes of the stream, in a ring.
#[derive(Debug)]
struct Tail {
    ring: Box<[u8; TAIL]>,
    pos: usize,
    filled: usize,
}

impl Tail {
    fn new() -> Self {
        Tail {
            ring: Box::new([0u8; TAIL]),
            pos: 0,
            filled: 0,
        }
    }

    fn push(&mut self, data: &[u8]) {
        if data.len() >= TAIL {
            let start = data.len() - TAIL;
            self.ring
                .copy_from_slice(data.get(start..).unwrap_or(&[0u8; TAIL]));
            self.pos = 0;
            self.filled = TAIL;
            return;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let room = TAIL - self.pos;
            let n = room.min(rest.len());
            let (a, b) = rest.split_at(n);
            if let Some(dst) = self.ring.get_mut(self.pos..self.pos + n) {
                dst.copy_from_slice(a);
            }
            self.pos = (self.pos + n) % TAIL;
            rest = b;
        }
        self.filled = (self.filled + data.len()).min(TAIL);
    }

    /// The last `min(filled, TAIL)` bytes, oldest first.
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.filled);
        let start = (self.pos + TAIL - self.filled) % TAIL;
        for i in 0..self.filled {
            out.push(self.ring.get((start + i) % TAIL).copied().unwrap_or(0));
        }
        out
    }
}

/// The streaming inspector. See the [module documentation](self) for the contract.
#[derive(Debug)]
pub struct Inspector {
    policy: Policy,
    stream_len_hint: Option<u64>,
    buf: Vec<u8>,
    slots: Vec<Slot>,
    fed: u64,
    detection: Option<Detection>,
    provisional: Option<Verdict>,
    tail: Tail,
    /// For streams whose virtual size is their length (raw, ISO, LUKS payload): the most bytes
    /// that can still be within `max_virtual_size`. Passing it is a `policy.virtual_size`
    /// violation at once, so an endless stream stops here and not at a full disk.
    stream_cap: Option<u64>,
}

impl Inspector {
    /// The inspector decides at the latest after this many bytes (or at end of stream).
    pub const MAX_LOOKAHEAD: u64 = MAX_LOOKAHEAD;

    /// A new inspector applying `policy`.
    pub fn new(policy: Policy) -> Self {
        Inspector {
            policy,
            stream_len_hint: None,
            buf: Vec::new(),
            slots: ProbeId::all()
                .into_iter()
                .map(|id| Slot {
                    id,
                    state: SlotState::Pending(1),
                    examined: 0,
                })
                .collect(),
            fed: 0,
            detection: None,
            provisional: None,
            stream_cap: None,
            tail: Tail::new(),
        }
    }

    /// Tell the inspector the total stream length (e.g. from Glance `size` or Content-Length), so
    /// that length-dependent checks (qcow2 tables within the file, raw/LUKS virtual size) are
    /// already in the provisional verdict. [`finish`](Self::finish) reports
    /// `stream.length_mismatch` if the stream turns out to have another length.
    pub fn with_stream_len(mut self, len: Option<u64>) -> Self {
        self.stream_len_hint = len;
        self
    }

    /// Feed the next chunk of the stream.
    pub fn feed(&mut self, data: &[u8]) -> Status {
        self.fed = self.fed.saturating_add(data.len() as u64);
        self.tail.push(data);
        if self.detection.is_some() {
            self.check_stream_cap();
            return Status::Decided;
        }
        let mut rest = data;
        loop {
            let next = self.next_need();
            let have = self.buf.len() as u64;
            if next > have {
                let want = usize::try_from(next - have).unwrap_or(usize::MAX);
                let take = want.min(rest.len());
                let (a, b) = rest.split_at(take);
                self.buf.extend_from_slice(a);
                rest = b;
            }
            if (self.buf.len() as u64) < next {
                break; // this chunk is used up
            }
            self.run_pending(End::More);
            if self.all_done() {
                self.decide();
                self.check_stream_cap();
                return Status::Decided;
            }
            if self.buf.len() as u64 >= MAX_LOOKAHEAD {
                self.run_pending(End::Cap);
                self.decide();
                self.check_stream_cap();
                return Status::Decided;
            }
        }
        Status::Pending
    }

    /// Whether a provisional verdict is available.
    pub fn is_decided(&self) -> bool {
        self.detection.is_some()
    }

    /// The provisional verdict (once decided): format, virtual size if the header gives it, and
    /// the violations found so far.
    pub fn provisional(&self) -> Option<&Verdict> {
        self.provisional.as_ref()
    }

    /// End of stream: the final verdict, including end-of-stream checks.
    pub fn finish(mut self) -> Verdict {
        if self.detection.is_none() {
            self.run_pending(End::Eos);
            self.decide();
        }
        let tail = self.tail.bytes();
        let mut v = match &self.detection {
            Some(d) => verdict(d, &self.policy, Some(self.fed), Some(&tail), true),
            None => unreachable_verdict(),
        };
        if let Some(h) = self.stream_len_hint
            && h != self.fed
        {
            v.violations.push(Violation {
                check: "stream.length_mismatch",
                kind: ViolationKind::Malformed,
                message: format!("stream is {} bytes; announced length was {h}", self.fed),
            });
        }
        v
    }

    /// Flag (once) a length-sized stream that has grown past what `max_virtual_size` allows.
    fn check_stream_cap(&mut self) {
        let Some(cap) = self.stream_cap else {
            return;
        };
        if self.fed <= cap {
            return;
        }
        self.stream_cap = None;
        if let Some(v) = self.provisional.as_mut() {
            v.violations.push(Violation {
                check: "policy.virtual_size",
                kind: ViolationKind::Policy,
                message: format!(
                    "the {} stream is already longer than {cap} bytes; allowed: a virtual size \
                     of at most {} bytes",
                    v.format, self.policy.max_virtual_size
                ),
            });
        }
    }

    fn next_need(&self) -> u64 {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Pending(n) => Some(n),
                SlotState::Done(_) => None,
            })
            .min()
            .unwrap_or(0)
    }

    fn all_done(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Done(_)))
    }

    fn run_pending(&mut self, end: End) {
        let have = self.buf.len() as u64;
        let ctx = Ctx {
            data: &self.buf,
            end,
        };
        for slot in &mut self.slots {
            let SlotState::Pending(n) = slot.state else {
                continue;
            };
            if end == End::More && n > have {
                continue;
            }
            slot.examined = slot.examined.max(n.min(have));
            slot.state = match slot.id.run(&ctx) {
                Probe::Need(m) if end == End::More && m > have => SlotState::Pending(m),
                // A probe may not ask for bytes it already has, nor for more after the end.
                Probe::Need(_) | Probe::NotThis => SlotState::Done(None),
                Probe::Found(f) => SlotState::Done(Some(f)),
            };
        }
    }

    fn decide(&mut self) {
        let examined = self.slots.iter().map(|s| s.examined).max().unwrap_or(0);
        let mut found: Vec<(ProbeId, Found)> = Vec::new();
        for slot in &mut self.slots {
            if let SlotState::Done(Some(f)) =
                std::mem::replace(&mut slot.state, SlotState::Done(None))
            {
                found.push((slot.id, *f));
            }
        }
        let d = combine(found, examined);
        let v = verdict(&d, &self.policy, self.stream_len_hint, None, false);
        let max = self.policy.max_virtual_size;
        // A raw stream (no probe matched) may end with a 512-byte fixed-VHD footer.
        let raw_cap = Some(max.saturating_add(512));
        self.stream_cap = match &d.found {
            None => raw_cap,
            Some(f) => f.deferred.iter().find_map(|def| match def {
                Deferred::StreamLen => raw_cap,
                Deferred::Payload {
                    offset, size: None, ..
                } => Some(max.saturating_add(*offset)),
                _ => None,
            }),
        };
        self.provisional = Some(v);
        self.detection = Some(d);
        self.buf = Vec::new();
    }
}

fn unreachable_verdict() -> Verdict {
    Verdict {
        format: Format::Raw,
        subformat: None,
        virtual_size: None,
        partition_table: None,
        violations: vec![Violation {
            check: "inspector.internal",
            kind: ViolationKind::Malformed,
            message: "the inspector reached no decision".into(),
        }],
        bytes_examined: 0,
        stream_len: None,
        is_final: true,
        footer_pending: false,
    }
}

/// Resolve the matches of all probes into one detection (polyglots, hybrid ISOs).
fn combine(found: Vec<(ProbeId, Found)>, examined: u64) -> Detection {
    let mut partition = None;
    let mut real: Vec<Found> = Vec::new();
    for (id, f) in found {
        if id == ProbeId::Partition {
            partition = f.partition;
        } else {
            real.push(f);
        }
    }
    let mut extra = Vec::new();
    let names = |r: &[Found]| {
        r.iter()
            .map(|f| f.format.name())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    if real.len() > 1 {
        extra.push(Finding::unsafe_(
            "polyglot",
            format!(
                "stream matches several formats ({}); allowed: exactly one",
                names(&real)
            ),
        ));
    } else if let (Some(pt), Some(f)) = (partition, real.first()) {
        // An ISO's system area may hold an MBR/GPT (hybrid ISO); LUKS headers hold random salts
        // and digests where an MBR signature would be. Anything else with 55 AA is a polyglot.
        if f.format != Format::Iso && f.format != Format::Luks {
            extra.push(Finding::unsafe_(
                "polyglot",
                format!(
                    "{} header also carries an MBR boot signature (55 AA at 510, {pt:?}); allowed: \
                     one format only",
                    f.format
                ),
            ));
        }
    }
    let mut it = real.into_iter();
    let found = it.next();
    let partition = match &found {
        None => partition,
        Some(f) if f.format == Format::Iso => partition,
        Some(_) => None,
    };
    Detection {
        found,
        partition,
        extra,
        examined,
    }
}

fn is_unsupported(f: Format) -> bool {
    !matches!(
        f,
        Format::Raw
            | Format::Qcow2
            | Format::Vmdk
            | Format::Vhd
            | Format::Vhdx
            | Format::Vdi
            | Format::Iso
            | Format::Luks
    )
}

/// Build a verdict from a detection, the stream length (if known), the tail (at finish) and the
/// policy.
fn verdict(
    d: &Detection,
    policy: &Policy,
    len: Option<u64>,
    tail: Option<&[u8]>,
    is_final: bool,
) -> Verdict {
    let mut findings: Vec<Finding> = d.extra.clone();
    let raw_found = Found {
        deferred: vec![Deferred::StreamLen],
        ..Found::new(Format::Raw)
    };
    let mut f: Found = d.found.clone().unwrap_or(raw_found);
    let tail512 = tail.and_then(|t| t.get(t.len().checked_sub(512)?..));
    let mut footer_pending = false;

    if f.format == Format::Raw {
        match tail512 {
            Some(t) if t.get(..8) == Some(vhd::COOKIE) => {
                // A fixed VHD: raw data followed by a footer.
                let mut v = Found::new(Format::Vhd);
                vhd::footer_findings(t, &mut v);
                if v.subformat != Some("fixed") {
                    v.findings.push(Finding::malformed(
                        "vhd.disk_type",
                        format!(
                            "VHD footer only at the end says disk type {}; allowed there: 2 (fixed)",
                            probe::be32_at(t, 60)
                        ),
                    ));
                }
                let data_len = len.unwrap_or(0).saturating_sub(512);
                if let Some(vs) = v.virtual_size
                    && vs > data_len
                {
                    v.findings.push(Finding::malformed(
                        "vhd.fixed_size",
                        format!(
                            "fixed VHD says {vs} bytes but only {data_len} bytes precede the footer"
                        ),
                    ));
                }
                f = v;
            }
            Some(t) if misc::tail_is_dmg(t) => f = Found::new(Format::Dmg),
            Some(_) => {}
            None => footer_pending = !is_final,
        }
    } else if let Some(t) = tail512
        && f.format != Format::Vhd
        && (vhd::tail_is_footer(t) || misc::tail_is_dmg(t))
    {
        let other = if misc::tail_is_dmg(t) {
            "DMG koly trailer"
        } else {
            "VHD footer"
        };
        findings.push(Finding::unsafe_(
            "polyglot",
            format!(
                "{} stream also ends with a {other}; allowed: one format only",
                f.format
            ),
        ));
    }

    let mut virtual_size = f.virtual_size;
    for def in &f.deferred {
        match def {
            // qemu's raw driver reports the length rounded up to whole 512-byte sectors.
            Deferred::StreamLen => {
                virtual_size = len.and_then(|l| l.checked_next_multiple_of(512));
            }
            Deferred::WithinFile(tables) => {
                if let Some(len) = len {
                    for &(name, check, off, l) in tables.iter().skip(1) {
                        let end = off.saturating_add(l);
                        if end > len {
                            findings.push(Finding::malformed(
                                check,
                                format!(
                                    "qcow2 {name} [{off}, {end}) ends past the end of the \
                                     {len}-byte file"
                                ),
                            ));
                        }
                    }
                }
            }
            Deferred::Payload {
                format,
                offset,
                size,
            } => {
                if let Some(len) = len {
                    let end = offset.saturating_add(size.unwrap_or(0));
                    if end > len {
                        findings.push(Finding::malformed(
                            "luks.payload_offset",
                            format!(
                                "{format} payload [{offset}, {end}) ends past the end of the \
                                 {len}-byte stream"
                            ),
                        ));
                    } else {
                        virtual_size = Some(size.unwrap_or(len - offset));
                    }
                }
            }
            Deferred::VmdkFooter(exp) => {
                if let Some(t) = tail
                    && let Some(bad) = vmdk::check_footer(exp, t)
                {
                    findings.push(bad);
                }
            }
            Deferred::VhdFooterCopy(copy) => {
                if let Some(t) = tail512
                    && t != &copy[..]
                {
                    findings.push(Finding::malformed(
                        "vhd.footer_copy",
                        "VHD footer at the end differs from its copy at offset 0",
                    ));
                }
                if tail.is_some() && tail512.is_none() {
                    findings.push(Finding::malformed(
                        "vhd.footer_copy",
                        "dynamic VHD stream is too short to end with its footer",
                    ));
                }
            }
        }
    }

    let mut violations: Vec<Violation> = f
        .findings
        .iter()
        .chain(findings.iter())
        .map(|x| Violation {
            check: x.check,
            kind: match x.class {
                Class::Malformed => ViolationKind::Malformed,
                Class::Unsafe => ViolationKind::Unsafe,
            },
            message: x.message.clone(),
        })
        .collect();
    if is_unsupported(f.format) {
        violations.push(Violation {
            check: "format.unsupported",
            kind: ViolationKind::Unsafe,
            message: format!(
                "stream is {}, which imgpipe recognises but does not accept; allowed: raw qcow2 \
                 vmdk vhd vhdx vdi iso luks",
                f.format
            ),
        });
    }
    policy_violations(
        policy,
        f.format,
        virtual_size,
        footer_pending,
        &mut violations,
    );

    Verdict {
        format: f.format,
        subformat: f.subformat,
        virtual_size,
        // Raw and ISO keep their table; so does a fixed VHD (the table of the disk inside).
        partition_table: if matches!(f.format, Format::Raw | Format::Iso)
            || (f.format == Format::Vhd && d.found.is_none())
        {
            d.partition
        } else {
            None
        },
        violations,
        bytes_examined: d.examined,
        stream_len: len,
        is_final,
        footer_pending,
    }
}

fn policy_violations(
    policy: &Policy,
    format: Format,
    virtual_size: Option<u64>,
    footer_pending: bool,
    out: &mut Vec<Violation>,
) {
    // A provisional raw stream may still become a fixed VHD at its end.
    let could_be_vhd = footer_pending && format == Format::Raw;
    if let Some(declared) = policy.declared
        && declared != format
        && !(could_be_vhd && declared == Format::Vhd)
    {
        out.push(Violation {
            check: "policy.format_mismatch",
            kind: ViolationKind::Policy,
            message: format!("image declared as {declared} but its content is {format}"),
        });
    }
    if let Some(allowed) = &policy.allowed
        && !allowed.contains(&format)
        && !(could_be_vhd && allowed.contains(&Format::Vhd))
    {
        let list: Vec<&str> = allowed.iter().map(|f| f.name()).collect();
        out.push(Violation {
            check: "policy.format_not_allowed",
            kind: ViolationKind::Policy,
            message: format!(
                "format {format} is not allowed; allowed: {}",
                list.join(" ")
            ),
        });
    }
    if let Some(vs) = virtual_size
        && vs > policy.max_virtual_size
    {
        out.push(Violation {
            check: "policy.virtual_size",
            kind: ViolationKind::Policy,
            message: format!(
                "virtual size is {vs} bytes; allowed: at most {} bytes",
                policy.max_virtual_size
            ),
        });
    }
}

/// Fuzzing entry point (used by `fuzz/fuzz_targets/inspect.rs`): inspects `data` whole and in
/// several chunkings, with and without the stream length, and panics if the verdicts differ —
/// the inspector itself must never panic.
#[doc(hidden)]
pub fn fuzz_one(data: &[u8]) {
    let run = |chunk: usize, hint: bool| -> (Option<Verdict>, Verdict) {
        let mut i =
            Inspector::new(Policy::default()).with_stream_len(hint.then_some(data.len() as u64));
        for c in data.chunks(chunk.max(1)) {
            i.feed(c);
        }
        (i.provisional().cloned(), i.finish())
    };
    let whole = run(data.len().max(1), false);
    for chunk in [1usize, 7, 512] {
        if chunk == 1 && data.len() > 64 * 1024 {
            continue;
        }
        let other = run(chunk, false);
        assert_eq!(whole, other, "verdict depends on chunk size {chunk}");
    }
    let hinted = run(4096, true);
    assert_eq!(
        whole.1, hinted.1,
        "final verdict depends on the stream length hint"
    );
    if let Some(p) = &whole.0 {
        // A violation found provisionally is reported at finish too.
        for v in &p.violations {
            assert!(
                whole.1.violations.iter().any(|w| w.check == v.check)
                    || v.kind == ViolationKind::Policy,
                "provisional violation {v} missing at finish"
            );
        }
    }
}

#[cfg(test)]
mod tests;

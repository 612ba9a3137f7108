//! Inspector verdicts as engine errors.

use imgpipe_core::{Error, ErrorKind};
use imgpipe_format::inspect::{Verdict, ViolationKind};

/// The error for an unsafe verdict: the first violation names the check and kind; the message
/// lists every violation.
pub fn verdict_error(v: &Verdict) -> Error {
    let Some(first) = v.violations.first() else {
        return Error::new(
            ErrorKind::Internal,
            "verdict_error called on a safe verdict",
        );
    };
    let kind = match first.kind {
        ViolationKind::Malformed => ErrorKind::InvalidImage,
        ViolationKind::Unsafe => ErrorKind::UnsafeImage,
        ViolationKind::Policy if first.check.contains("size") => ErrorKind::LimitExceeded,
        ViolationKind::Policy => ErrorKind::FormatMismatch,
    };
    let all: Vec<String> = v.violations.iter().map(|x| x.to_string()).collect();
    Error::check(
        kind,
        first.check,
        format!("{} image rejected: {}", v.format, all.join("; ")),
    )
    .with_stage("inspect")
}

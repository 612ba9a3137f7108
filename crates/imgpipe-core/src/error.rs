//! The one public error type: a small stable [`ErrorKind`], the named check that failed, the
//! stage and offset where it happened, a message with the values seen, and an optional cause.

use std::fmt;

/// What kind of failure this is. Stable: drives exit codes and the report's `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// Local I/O failed (read, write, fsync, rename).
    Io,
    /// A network transfer failed (connect, HTTP status, dropped connection, stall).
    Network,
    /// The image is malformed (not what its header claims, truncated tables, …).
    InvalidImage,
    /// The image is well-formed but unsafe (backing file, external data file, polyglot, …).
    UnsafeImage,
    /// The detected format differs from the declared one, or is not allowed.
    FormatMismatch,
    /// A digest of the image bytes did not match the expected value.
    DigestMismatch,
    /// The number of image bytes did not match the expected size.
    SizeMismatch,
    /// The image signature did not verify, or its properties are invalid.
    BadSignature,
    /// The signing certificate could not be found, parsed or trusted.
    Certificate,
    /// A configured limit (size, memory, spill) was exceeded.
    LimitExceeded,
    /// The pipeline spec or arguments are invalid.
    Spec,
    /// The request needs something imgpipe does not implement.
    Unsupported,
    /// The run was cancelled (signal, caller).
    Cancelled,
    /// A bug: an internal invariant did not hold.
    Internal,
}

impl ErrorKind {
    /// Whether this kind means "the image was rejected by a check" (exit status 3).
    pub fn is_rejection(self) -> bool {
        matches!(
            self,
            ErrorKind::InvalidImage
                | ErrorKind::UnsafeImage
                | ErrorKind::FormatMismatch
                | ErrorKind::DigestMismatch
                | ErrorKind::SizeMismatch
                | ErrorKind::BadSignature
                | ErrorKind::Certificate
                | ErrorKind::LimitExceeded
        )
    }

    /// The process exit status for a run that ended with this kind: 3 rejected, 2 spec, 1 other.
    pub fn exit_code(self) -> i32 {
        if self.is_rejection() {
            3
        } else if self == ErrorKind::Spec {
            2
        } else {
            1
        }
    }

    /// Stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Network => "network",
            ErrorKind::InvalidImage => "invalid_image",
            ErrorKind::UnsafeImage => "unsafe_image",
            ErrorKind::FormatMismatch => "format_mismatch",
            ErrorKind::DigestMismatch => "digest_mismatch",
            ErrorKind::SizeMismatch => "size_mismatch",
            ErrorKind::BadSignature => "bad_signature",
            ErrorKind::Certificate => "certificate",
            ErrorKind::LimitExceeded => "limit_exceeded",
            ErrorKind::Spec => "spec",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An imgpipe error.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    check: Option<String>,
    stage: Option<String>,
    offset: Option<u64>,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Shorthand result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message that says what was wrong and the values seen.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            check: None,
            stage: None,
            offset: None,
            message: message.into(),
            source: None,
        }
    }

    /// A rejection by a named check (e.g. `digest.sha512`, `qcow2.backing_file`).
    pub fn check(kind: ErrorKind, check: impl Into<String>, message: impl Into<String>) -> Self {
        Error::new(kind, message).with_check(check)
    }

    /// An I/O error with context.
    pub fn io(context: impl Into<String>, err: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, format!("{}: {err}", context.into())).with_source(err)
    }

    /// Name the check that failed.
    pub fn with_check(mut self, check: impl Into<String>) -> Self {
        self.check = Some(check.into());
        self
    }

    /// Name the stage where the error happened (if not already named).
    pub fn with_stage(mut self, stage: impl Into<String>) -> Self {
        if self.stage.is_none() {
            self.stage = Some(stage.into());
        }
        self
    }

    /// Record the byte offset where the error happened.
    pub fn with_offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The named check that failed, if this is a check failure.
    pub fn check_name(&self) -> Option<&str> {
        self.check.as_deref()
    }

    /// The stage the error came from.
    pub fn stage(&self) -> Option<&str> {
        self.stage.as_deref()
    }

    /// The byte offset, if known.
    pub fn offset(&self) -> Option<u64> {
        self.offset
    }

    /// The message without stage/check decoration.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(stage) = &self.stage {
            write!(f, "{stage}: ")?;
        }
        if let Some(check) = &self.check {
            write!(f, "check {check} failed: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(off) = self.offset {
            write!(f, " (at byte {off})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_stage_check_and_offset() {
        let e = Error::check(
            ErrorKind::DigestMismatch,
            "digest.sha512",
            "expected ab, got cd",
        )
        .with_stage("hash:sha512")
        .with_offset(42);
        assert_eq!(
            e.to_string(),
            "hash:sha512: check digest.sha512 failed: expected ab, got cd (at byte 42)"
        );
        assert_eq!(e.kind().exit_code(), 3);
        assert_eq!(ErrorKind::Spec.exit_code(), 2);
        assert_eq!(ErrorKind::Network.exit_code(), 1);
    }
}

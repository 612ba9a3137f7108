//! Rules kept in two crates that do not depend on each other stay the same.
#![allow(clippy::unwrap_used)]

/// The spec refuses the same request headers the HTTP source refuses (the spec reader cannot
/// depend on the HTTP client, and a library caller may build `HttpOptions` without a spec).
#[test]
fn reserved_header_lists_agree() {
    let mut a: Vec<&str> = imgpipe_spec::RESERVED_HEADERS.to_vec();
    let mut b: Vec<&str> = imgpipe_io::RESERVED_HEADERS.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b);
    assert!(a.contains(&"host") && a.contains(&"range") && a.contains(&"if-range"));
}

//! `imgpipe hash`: digests in one pass per input, printed as `sha256sum` prints them, and
//! `--check` for the lists `sha256sum` (or `sha256sum --tag`) writes.

use std::path::PathBuf;

use imgpipe::hash::Algorithm;
use imgpipe::{RunReport, Spec, Status};

use crate::{ProgressMode, exit_code, print_json, run_with_progress, shown, source_of};

/// The arguments of `imgpipe hash`.
#[derive(clap::Args)]
pub struct HashArgs {
    /// Files, http(s) URLs, or `-` (stdin); at least one unless --check is given.
    inputs: Vec<String>,
    /// Algorithms, comma separated (md5 sha1 sha224 sha256 sha384 sha512 blake3). With one,
    /// lines are `sha256sum`'s (`HEX  NAME`); with several, `sha256sum --tag`'s
    /// (`SHA256 (NAME) = HEX`).
    #[arg(long, value_delimiter = ',', default_value = "sha256")]
    algo: Vec<String>,
    /// Read `HEX  NAME` or `ALGO (NAME) = HEX` lines from FILE (`-` for stdin) and check each
    /// NAME; prints `NAME: OK` or `NAME: FAILED`; exit 3 when one differs, 1 when one cannot
    /// be read. Without --algo, the algorithm of a `HEX  NAME` line follows from its length
    /// (64 hex digits: sha256).
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// Print JSON on stdout: the run report (one input) or an array of them.
    #[arg(long)]
    json: bool,
}

async fn digest(input: &str, algos: &[Algorithm], json: bool) -> RunReport {
    let mut spec = Spec::new(source_of(input));
    spec.inspect.skip = true;
    spec.verify.report.extend_from_slice(algos);
    run_with_progress(&spec, ProgressMode::Auto, json).await
}

fn parse_algos(list: &[String]) -> Result<Vec<Algorithm>, String> {
    list.iter()
        .map(|a| a.parse::<Algorithm>().map_err(|e| e.to_string()))
        .collect()
}

/// `sha256sum --tag`'s name of an algorithm.
fn tag(a: &str) -> String {
    a.to_ascii_uppercase()
}

/// The default algorithm of a bare `HEX  NAME` line, from the digest's length.
fn algo_for_len(n: usize) -> Option<Algorithm> {
    let name = match n {
        32 => "md5",
        40 => "sha1",
        56 => "sha224",
        64 => "sha256",
        96 => "sha384",
        128 => "sha512",
        _ => return None,
    };
    name.parse().ok()
}

/// One line of a checksum list: (algorithm, expected hex, name). `None` for blank lines and
/// comments; `Err` for a line in neither format.
fn parse_line(
    line: &str,
    given: Option<Algorithm>,
) -> Option<Result<(Algorithm, String, String), String>> {
    let l = line.trim_end_matches(['\r', '\n']);
    if l.trim().is_empty() || l.starts_with('#') {
        return None;
    }
    let bad = || Err(format!("not a checksum line: {l:?}"));
    // `ALGO (NAME) = HEX`
    if let Some((head, hex)) = l.rsplit_once(") = ")
        && let Some((algo, name)) = head.split_once(" (")
    {
        return Some(match algo.to_ascii_lowercase().parse::<Algorithm>() {
            Ok(a) => Ok((a, hex.trim().to_ascii_lowercase(), name.to_string())),
            Err(_) => bad(),
        });
    }
    // `HEX  NAME` (or `HEX *NAME`, binary mode)
    let Some((hex, name)) = l.split_once(' ') else {
        return Some(bad());
    };
    let name = name
        .strip_prefix(' ')
        .or_else(|| name.strip_prefix('*'))
        .unwrap_or(name);
    if !hex.bytes().all(|c| c.is_ascii_hexdigit()) || name.is_empty() {
        return Some(bad());
    }
    Some(match given.or_else(|| algo_for_len(hex.len())) {
        Some(a) => Ok((a, hex.to_ascii_lowercase(), name.to_string())),
        None => Err(format!(
            "{} hex digits match no algorithm: {l:?}",
            hex.len()
        )),
    })
}

/// Run `imgpipe hash`.
pub async fn run(a: HashArgs) -> i32 {
    let algos = match parse_algos(&a.algo) {
        Ok(v) => v,
        Err(e) => {
            errln!("imgpipe hash: {e}");
            return 2;
        }
    };
    if let Some(list) = &a.check {
        // An explicit --algo applies to bare lines; the default does not.
        let given = (a.algo != ["sha256"] || algos.len() != 1)
            .then(|| algos.first().copied())
            .flatten();
        return check(list, given).await;
    }
    if a.inputs.is_empty() {
        errln!("imgpipe hash: give at least one input (a file, an http(s) URL or -)");
        return 2;
    }
    let mut code = 0;
    let mut reports = Vec::new();
    for input in &a.inputs {
        let report = digest(input, &algos, a.json).await;
        if !a.json {
            if report.status == Status::Ok {
                for (name, hex) in &report.hashes {
                    if algos.len() == 1 {
                        outln!("{hex}  {}", shown(input));
                    } else {
                        outln!("{} ({}) = {hex}", tag(name), shown(input));
                    }
                }
            } else {
                errln!(
                    "imgpipe hash: {}: {}",
                    shown(input),
                    report.reason.as_deref().unwrap_or("failed")
                );
            }
        }
        code = code.max(exit_code(&report));
        reports.push(report);
    }
    if a.json {
        match reports.as_slice() {
            [one] => print_json(one),
            many => match serde_json::to_string_pretty(many) {
                Ok(s) => outln!("{s}"),
                Err(e) => errln!("imgpipe: cannot serialise the reports: {e}"),
            },
        }
    }
    code
}

async fn check(list: &std::path::Path, given: Option<Algorithm>) -> i32 {
    let text = if list.as_os_str() == "-" {
        let mut s = String::new();
        match std::io::Read::read_to_string(&mut std::io::stdin(), &mut s) {
            Ok(_) => s,
            Err(e) => {
                errln!("imgpipe hash: cannot read stdin: {e}");
                return 1;
            }
        }
    } else {
        match std::fs::read_to_string(list) {
            Ok(s) => s,
            Err(e) => {
                errln!("imgpipe hash: cannot read {}: {e}", list.display());
                return 1;
            }
        }
    };
    let (mut failed, mut unreadable, mut checked) = (0, 0, 0);
    for line in text.lines() {
        let (algo, want, name) = match parse_line(line, given) {
            None => continue,
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                errln!("imgpipe hash: {}: {e}", list.display());
                return 2;
            }
        };
        checked += 1;
        let report = digest(&name, &[algo], false).await;
        let got = report.hashes.values().next().cloned();
        match (report.status, got) {
            (Status::Ok, Some(h)) if h == want => outln!("{}: OK", shown(&name)),
            (Status::Ok, _) => {
                failed += 1;
                outln!("{}: FAILED", shown(&name));
            }
            _ => {
                unreadable += 1;
                outln!("{}: FAILED open or read", shown(&name));
                errln!(
                    "imgpipe hash: {}: {}",
                    shown(&name),
                    report.reason.as_deref().unwrap_or("failed")
                );
            }
        }
    }
    if checked == 0 {
        errln!("imgpipe hash: {}: no checksum lines", list.display());
        return 2;
    }
    if failed > 0 {
        errln!("imgpipe hash: WARNING: {failed} computed checksum(s) did NOT match");
    }
    if unreadable > 0 {
        errln!("imgpipe hash: WARNING: {unreadable} listed file(s) could not be read");
        return 1;
    }
    if failed > 0 { 3 } else { 0 }
}

//! Every guarantee the docs list names the test that proves it, and that test exists.
//!
//! `docs/security.md`, `docs/cache.md` and `docs/sinks.md` each have a `## Guarantees` section
//! holding a Markdown table `| Guarantee | Test |`. Each row's Test cell names one or more
//! tests as `` `crates/<crate>/<path>.rs::<fn>` ``; this test fails when a row names none, when
//! the file is missing, or when the file has no `fn <name>` (a renamed or deleted test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

const DOCS: [&str; 3] = ["docs/security.md", "docs/cache.md", "docs/sinks.md"];

/// The rows of the `## Guarantees` table: (line number, guarantee, test cell).
fn rows(text: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let mut inside = false;
    for (i, line) in text.lines().enumerate() {
        if let Some(h) = line.strip_prefix("## ") {
            inside = h.trim() == "Guarantees";
            continue;
        }
        if !inside {
            continue;
        }
        let l = line.trim();
        if !l.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 2
            || cells[0].eq_ignore_ascii_case("guarantee")
            || cells[0].chars().all(|c| c == '-' || c == ':' || c == ' ')
        {
            continue;
        }
        out.push((i + 1, cells[0].to_string(), cells[1..].join("|")));
    }
    out
}

/// The `path::fn` references in a cell.
fn refs(cell: &str) -> Vec<(String, String)> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|r| {
            let (path, name) = r.rsplit_once("::")?;
            (path.starts_with("crates/") && path.ends_with(".rs"))
                .then(|| (path.to_string(), name.to_string()))
        })
        .collect()
}

#[test]
fn every_listed_guarantee_names_an_existing_test() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut problems = Vec::new();
    let mut total = 0;
    for doc in DOCS {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let rows = rows(&text);
        if rows.is_empty() {
            problems.push(format!("{doc}: no `## Guarantees` table"));
        }
        for (line, guarantee, cell) in rows {
            total += 1;
            let r = refs(&cell);
            if r.is_empty() {
                problems.push(format!("{doc}:{line}: {guarantee:?} names no test"));
            }
            for (path, name) in r {
                let Ok(src) = std::fs::read_to_string(root.join(&path)) else {
                    problems.push(format!("{doc}:{line}: {path} does not exist"));
                    continue;
                };
                if !src.contains(&format!("fn {name}(")) {
                    problems.push(format!("{doc}:{line}: {path} has no fn {name}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(total >= 30, "only {total} guarantees listed");
}

/// The checker itself: a row without a test, a missing file and a missing function are caught.
#[test]
fn the_checker_catches_rows_without_a_real_test() {
    let doc = "# x\n## Guarantees\n| Guarantee | Test |\n|---|---|\n| a | none |\n\
               | b | `crates/imgpipe/tests/doc_guarantees.rs::rows` |\n## Other\n| c | d |\n";
    let r = rows(doc);
    assert_eq!(r.len(), 2);
    assert!(refs(&r[0].2).is_empty());
    assert_eq!(
        refs(&r[1].2),
        vec![(
            "crates/imgpipe/tests/doc_guarantees.rs".to_string(),
            "rows".to_string()
        )]
    );
}

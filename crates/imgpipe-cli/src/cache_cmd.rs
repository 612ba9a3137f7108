//! `imgpipe cache list|verify|evict|prune`: look after a verified image cache directory.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use imgpipe::spec::{parse_duration, parse_size};
use imgpipe_cache::{Cache, EntryState, EvictPolicy};

/// Arguments of `imgpipe cache`.
#[derive(clap::Args)]
pub struct CacheArgs {
    /// The cache directory (the spec's `[cache] dir`); before or after the verb.
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// The key of `mode = "raw"` entries (the spec's `[cache] key_file`; default
    /// /var/lib/imgpipe/cache.key when it exists). `verify` needs it for raw entries.
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[command(subcommand)]
    pub action: CacheAction,
}

/// What to do with the cache.
#[derive(clap::Subcommand)]
pub enum CacheAction {
    /// List entries: complete, being filled, or stale leftovers of killed fills.
    List,
    /// Re-hash entries against their sidecars (all, or the given ids). Exit 3 when one does
    /// not match.
    Verify {
        /// Entry ids (default: every complete entry).
        ids: Vec<String>,
        /// Remove entries that do not match.
        #[arg(long)]
        remove_bad: bool,
    },
    /// Remove entries by last use and total size (entries in use are skipped).
    Evict {
        /// Keep the total at most this (e.g. 20GiB); least recently used go first.
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
        /// Remove entries unused for longer than this (e.g. 24h, 7d).
        #[arg(long, value_name = "DURATION")]
        max_age: Option<String>,
        /// Remove every entry not in use.
        #[arg(long)]
        all: bool,
        /// Remove these entries (waiting for their users).
        #[arg(long = "id", value_name = "ID")]
        ids: Vec<String>,
    },
    /// Remove leftovers of killed or failed fills.
    Prune,
}

fn usage(msg: impl std::fmt::Display) -> i32 {
    errln!("imgpipe cache: {msg}");
    2
}

fn fail(e: imgpipe::Error) -> i32 {
    errln!("imgpipe cache: {e}");
    e.kind().exit_code()
}

fn print_json(v: &serde_json::Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| "{}".into())
    );
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn ago(unix: Option<u64>) -> String {
    let Some(t) = unix else { return "-".into() };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(t);
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Run `imgpipe cache …`. Exit status: 0 success; 3 `verify` found an entry that does not
/// match its sidecar; 2 bad arguments, or a cache directory others can write (check
/// `cache.dir`); 1 I/O failure. Entry files that were not regular files and were quarantined
/// are reported on stderr (check `cache.entry_file`).
pub async fn run(args: CacheArgs) -> i32 {
    // No pruning on open: `list` must show leftovers, `prune` removes them explicitly.
    let Some(dir) = args.dir.clone() else {
        errln!("imgpipe cache: --dir DIR is required (the spec's [cache] dir)");
        return 2;
    };
    let cache = match Cache::open_dir(&dir) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let code = run_on(cache.clone(), args).await;
    for w in cache.take_warnings() {
        errln!("imgpipe cache: warning: {w}");
    }
    code
}

async fn run_on(mut cache: Cache, args: CacheArgs) -> i32 {
    let json = args.json;
    let default_key = PathBuf::from(imgpipe::spec::DEFAULT_CACHE_KEY_FILE);
    let key_file = match &args.key_file {
        Some(k) => Some(k.clone()),
        None => default_key.exists().then_some(default_key),
    };
    if let Some(k) = key_file {
        match imgpipe_cache::RawKey::load(&k, cache.dir()) {
            Ok(key) => cache = cache.with_raw_key(key),
            Err(e) => return fail(e),
        }
    }
    match args.action {
        CacheAction::List => {
            let list = match cache.list() {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
            if json {
                print_json(&serde_json::json!({ "dir": cache.dir(), "entries": list }));
                return 0;
            }
            let total: u64 = list.iter().map(|e| e.bytes).sum();
            outln!(
                "{:<12}  {:<8}  {:<8}  {:>10}  {:<6}  {:>9}  {:>6}  label",
                "id",
                "state",
                "mode",
                "size",
                "format",
                "digests",
                "used"
            );
            for e in &list {
                let state = match e.state {
                    EntryState::Complete => "ok",
                    EntryState::Filling => "filling",
                    EntryState::Stale => "stale",
                };
                let sc = e.sidecar.as_ref();
                outln!(
                    "{:<12}  {:<8}  {:<8}  {:>10}  {:<6}  {:>9}  {:>6}  {}",
                    &e.id[..12],
                    state,
                    sc.map(|s| s.mode.as_str()).unwrap_or("-"),
                    human(e.bytes),
                    sc.and_then(|s| s.format.as_deref()).unwrap_or("-"),
                    sc.map(|s| s.digests.keys().cloned().collect::<Vec<_>>().join(","))
                        .unwrap_or_else(|| "-".into()),
                    ago(e.last_used_unix),
                    sc.map(|s| s.label.as_str()).unwrap_or("-"),
                );
            }
            let n = list.len();
            outln!(
                "{n} {}, {}",
                if n == 1 { "entry" } else { "entries" },
                human(total)
            );
            0
        }
        CacheAction::Verify { ids, remove_bad } => {
            let results = if ids.is_empty() {
                cache.verify_all(remove_bad).await
            } else {
                let mut v = Vec::new();
                for id in &ids {
                    match cache.verify_entry(id, remove_bad).await {
                        Ok(r) => v.push(r),
                        Err(e) => return fail(e),
                    }
                }
                Ok(v)
            };
            let results = match results {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let bad = results.iter().filter(|r| !r.ok).count();
            if json {
                print_json(&serde_json::json!({ "entries": results, "bad": bad }));
            } else {
                for r in &results {
                    let label = r.label.as_deref().unwrap_or("-");
                    if r.ok {
                        outln!("ok    {}  {} ({})", &r.id[..12], label, human(r.bytes));
                    } else {
                        let removed = if r.removed { " (removed)" } else { "" };
                        outln!("BAD   {}  {}{removed}", &r.id[..12], label);
                        for p in &r.problems {
                            outln!("        {p}");
                        }
                    }
                }
                outln!("{} verified, {bad} bad", results.len());
            }
            if bad > 0 { 3 } else { 0 }
        }
        CacheAction::Evict {
            max_size,
            max_age,
            all,
            ids,
        } => {
            let max_size = match (all, max_size) {
                (true, _) => Some(0),
                (false, Some(s)) => match parse_size(&s) {
                    Ok(n) => Some(n),
                    Err(e) => return usage(format!("--max-size: {e}")),
                },
                (false, None) => None,
            };
            let max_age: Option<Duration> = match max_age {
                Some(s) => match parse_duration(&s) {
                    Ok(d) => Some(d),
                    Err(e) => return usage(format!("--max-age: {e}")),
                },
                None => None,
            };
            if max_size.is_none() && max_age.is_none() && ids.is_empty() {
                return usage("evict needs --max-size, --max-age, --all or --id");
            }
            let mut removed: Vec<(String, u64)> = Vec::new();
            for id in &ids {
                match cache.discard(id).await {
                    Ok(true) => removed.push((id.clone(), 0)),
                    Ok(false) => errln!("imgpipe cache: no entry {id}"),
                    Err(e) => return fail(e),
                }
            }
            let report = if max_size.is_some() || max_age.is_some() {
                match cache.evict(&EvictPolicy {
                    max_size,
                    max_age,
                    now: SystemTime::now(),
                }) {
                    Ok(r) => Some(r),
                    Err(e) => return fail(e),
                }
            } else {
                None
            };
            if let Some(r) = &report {
                removed.extend(r.removed.iter().cloned());
            }
            let busy = report.as_ref().map(|r| r.busy.clone()).unwrap_or_default();
            if json {
                print_json(&serde_json::json!({
                    "removed": removed.iter().map(|(id, n)| serde_json::json!({"id": id, "bytes": n})).collect::<Vec<_>>(),
                    "busy": busy,
                    "remaining_bytes": report.as_ref().map(|r| r.remaining_bytes),
                }));
            } else {
                for (id, n) in &removed {
                    outln!("removed {id} ({})", human(*n));
                }
                for id in &busy {
                    outln!("in use, kept {id}");
                }
                if let Some(r) = &report {
                    outln!("{} left", human(r.remaining_bytes));
                }
            }
            0
        }
        CacheAction::Prune => match cache.prune() {
            Ok(r) => {
                if json {
                    print_json(&serde_json::json!(r));
                } else {
                    for id in &r.removed {
                        outln!("removed leftovers of {id}");
                    }
                    for id in &r.in_progress {
                        outln!("fill in progress, kept {id}");
                    }
                }
                0
            }
            Err(e) => fail(e),
        },
    }
}

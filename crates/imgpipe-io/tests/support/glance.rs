//! Test support shared by `imgpipe-io/tests/glance.rs` and `imgpipe-cli/tests/glance_e2e.rs`
//! (included with `#[path]`): real services started by `scripts/services/*.sh` and stopped by
//! PID on drop, a std-only HTTP/1.1 client for Glance's and Barbican's REST APIs, and the
//! fault-injecting proxy in `fault_proxy.py`. Uses only std + serde_json + tempfile.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    // Both including crates live in crates/<name>/.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn require_oracles() -> bool {
    std::env::var("IMGPIPE_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

pub fn skip<T>(why: &str) -> Option<T> {
    if require_oracles() {
        panic!("IMGPIPE_REQUIRE_ORACLES=1 and a required service/tool is unavailable: {why}");
    }
    eprintln!("SKIP: {why}");
    None
}

/// A service started by `scripts/services/NAME.sh start 0 WORKDIR`; stopped by PID on drop.
pub struct Service {
    pub name: &'static str,
    pub url: String,
    pub workdir: tempfile::TempDir,
    pub start_seconds: f64,
}

impl Service {
    pub fn start(name: &'static str, env: &[(&str, &str)]) -> Option<Service> {
        let workdir = tempfile::Builder::new()
            .prefix(&format!("imgpipe-{name}-test"))
            .tempdir()
            .unwrap();
        let script = workspace().join(format!("scripts/services/{name}.sh"));
        let t0 = Instant::now();
        let mut cmd = Command::new("bash");
        cmd.arg(&script)
            .arg("start")
            .arg("0")
            .arg(workdir.path())
            .env("IMGPIPE_SERVICE_OWNER_PID", std::process::id().to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = match cmd.output() {
            Ok(o) => o,
            Err(e) => return skip(&format!("cannot run bash: {e}")),
        };
        let url = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim()
            .to_string();
        let svc = Service {
            name,
            url,
            workdir,
            start_seconds: t0.elapsed().as_secs_f64(),
        };
        if !out.status.success() || !svc.url.starts_with("http://127.0.0.1:") {
            let msg = format!(
                "{name}.sh start failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            drop(svc);
            return skip(&msg);
        }
        eprintln!("{name} up at {} in {:.1} s", svc.url, svc.start_seconds);
        Some(svc)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let script = workspace().join(format!("scripts/services/{}.sh", self.name));
        let _ = Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(self.workdir.path())
            .status();
    }
}

/// A minimal HTTP/1.1 exchange (`Connection: close`): (status, headers lower-cased, body).
pub fn http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = TcpStream::connect(hostport).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    // Skip interim 1xx answers (100 Continue).
    let status = loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let code: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        if (100..200).contains(&code) {
            loop {
                line.clear();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
            }
            continue;
        }
        break code;
    };
    let mut hdrs = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            hdrs.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let chunked = hdrs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    (status, hdrs, body)
}

pub fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k == &name.to_ascii_lowercase())
        .map(|(_, v)| v.as_str())
}

/// Create an image record (POST /v2/images) with `props` (name, formats, properties).
pub fn create_image(glance: &str, props: serde_json::Value) -> String {
    let (st, _, body) = http(
        "POST",
        &format!("{glance}/v2/images"),
        &[("Content-Type", "application/json")],
        &serde_json::to_vec(&props).unwrap(),
    );
    assert_eq!(st, 201, "create: {}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// Upload the image data (PUT /v2/images/{id}/file, 204).
pub fn upload(glance: &str, id: &str, data: &[u8]) {
    let (st, _, body) = http(
        "PUT",
        &format!("{glance}/v2/images/{id}/file"),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    assert_eq!(st, 204, "upload: {}", String::from_utf8_lossy(&body));
}

/// Set string properties on an image (JSON-patch "add", which also replaces).
pub fn patch_props(glance: &str, id: &str, props: &[(&str, &str)]) {
    let ops: Vec<serde_json::Value> = props
        .iter()
        .map(|(k, v)| serde_json::json!({"op": "add", "path": format!("/{k}"), "value": v}))
        .collect();
    let (st, _, body) = http(
        "PATCH",
        &format!("{glance}/v2/images/{id}"),
        &[(
            "Content-Type",
            "application/openstack-images-v2.1-json-patch",
        )],
        &serde_json::to_vec(&ops).unwrap(),
    );
    assert_eq!(st, 200, "patch: {}", String::from_utf8_lossy(&body));
}

/// Create + upload a `disk_format` image; returns its id.
pub fn add_image(glance: &str, disk_format: &str, data: &[u8]) -> String {
    let id = create_image(
        glance,
        serde_json::json!({"name": "imgpipe-test", "disk_format": disk_format,
                           "container_format": "bare"}),
    );
    upload(glance, &id, data);
    id
}

/// Where Glance's file store keeps image `id` (the service's WORKDIR/images/<id>).
pub fn store_path(glance: &Service, id: &str) -> PathBuf {
    glance.workdir.path().join("images").join(id)
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The fault-injecting proxy (`fault_proxy.py`): cuts the first `cuts` image-data
/// connections after `cut_after` answer bytes. Killed (by its own child handle) on drop.
pub struct FaultProxy {
    pub url: String,
    child: Child,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

impl FaultProxy {
    pub fn start(upstream: &str, cut_after: u64, cuts: u32) -> FaultProxy {
        let dir = tempfile::tempdir().unwrap();
        let stats = dir.path().join("stats.json");
        let script = workspace().join("crates/imgpipe-io/tests/support/fault_proxy.py");
        let up = upstream
            .strip_prefix("http://")
            .unwrap()
            .trim_end_matches('/');
        let mut child = Command::new("python3")
            .arg(script)
            .arg(up)
            .arg(cut_after.to_string())
            .arg(cuts.to_string())
            .arg(&stats)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the fault proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().expect("proxy prints its port");
        FaultProxy {
            url: format!("http://127.0.0.1:{port}"),
            child,
            stats,
            _dir: dir,
        }
    }

    /// The proxy's counters once `file_requests` data connections have ended (waits ≤ 10 s).
    pub fn stats(&self, file_requests: usize) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v: serde_json::Value = std::fs::read(&self.stats)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let n = v["file_requests"].as_array().map_or(0, Vec::len);
            if n >= file_requests || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! `GlanceClient` and the Glance data source against a real OpenStack Glance 33.0.0 (PyPI,
//! gunicorn, sqlite, file store, keystone-less) started on 127.0.0.1 by
//! `scripts/services/glance.sh`, and the Keystone path against a real Keystone 30.0.0 started
//! by `scripts/services/keystone.sh`. Servers are stopped by PID from a guard's `Drop` (and by
//! the scripts' watchdog if this process is killed). Unavailable services skip the test unless
//! `IMGPIPE_REQUIRE_ORACLES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/glance.rs"]
mod support;

use std::time::{Duration, Instant};

use imgpipe_core::{ErrorKind, Source};
use imgpipe_crypto::hash::{Algorithm, Hasher};
use imgpipe_io::HttpOptions;
use imgpipe_io::glance::GlanceClient;
use imgpipe_io::keystone::{PasswordAuth, password_token};
use support::{FaultProxy, Service, add_image, create_image, patch_props, pseudo_random};

fn hex(algo: Algorithm, data: &[u8]) -> String {
    let mut h = Hasher::new(algo);
    h.update(data);
    h.finish_hex()
}

async fn read_all(src: &mut dyn Source) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = src.read().await.unwrap() {
        out.extend_from_slice(&b);
    }
    out
}

fn fast_retry() -> HttpOptions {
    HttpOptions {
        attempts: 5,
        backoff: Duration::from_millis(20),
        stall_timeout: Duration::from_secs(20),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_client_against_real_glance() {
    let Some(glance) = Service::start("glance", &[]) else {
        return;
    };
    let g = glance.url.clone();
    // The token is ignored by noauth Glance but must travel (and never leak into errors).
    let token = "gAAAAA-test-token-must-not-leak";
    let client = GlanceClient::with_options(&g, Some(token.into()), fast_retry()).unwrap();

    // --- record fields of an uploaded raw image, checked against our own digests of the data
    let data = pseudo_random(3_000_000 + 17, 1);
    let id = add_image(&g, "raw", &data);
    patch_props(&g, &id, &[("my_prop", "abc")]);
    let t = Instant::now();
    let img = client.image(&id).await.unwrap();
    eprintln!("record fetched in {:?}", t.elapsed());
    assert_eq!(img.id, id);
    assert_eq!(img.status, "active");
    assert_eq!(img.disk_format.as_deref(), Some("raw"));
    assert_eq!(img.container_format.as_deref(), Some("bare"));
    assert_eq!(img.size, Some(data.len() as u64));
    assert_eq!(
        img.checksum.as_deref(),
        Some(hex(Algorithm::Md5, &data).as_str())
    );
    assert_eq!(img.os_hash_algo.as_deref(), Some("sha512"));
    assert_eq!(
        img.os_hash_value.as_deref(),
        Some(hex(Algorithm::Sha512, &data).as_str())
    );
    assert_eq!(img.property("my_prop"), Some("abc"));
    assert_eq!(img.signature().unwrap(), None);

    // --- the data, streamed with the token, equals the upload; Glance's Content-MD5 header
    //     (hex, not RFC 1864 base64) is the data's MD5 and is known after connect()
    let mut src = client.source(&id).unwrap();
    src.connect().await.unwrap();
    assert_eq!(
        src.content_md5_hex().as_deref(),
        Some(hex(Algorithm::Md5, &data).as_str())
    );
    assert!(src.content_md5().is_some());
    let got = read_all(&mut src).await;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "downloaded bytes differ from the upload");
    assert_eq!(src.len_hint(), Some(data.len() as u64));
    assert_eq!(src.resumes(), 0);

    // --- signature properties patched onto the active image come back as a full set
    let uuid = "11111111-2222-3333-4444-555555555555";
    patch_props(
        &g,
        &id,
        &[
            ("img_signature", "c2lnbmF0dXJl"),
            ("img_signature_hash_method", "SHA-256"),
            ("img_signature_key_type", "RSA-PSS"),
            ("img_signature_certificate_uuid", uuid),
        ],
    );
    let sig = client
        .image(&id)
        .await
        .unwrap()
        .signature()
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            sig.signature.as_str(),
            sig.hash_method.as_str(),
            sig.key_type.as_str()
        ),
        ("c2lnbmF0dXJl", "SHA-256", "RSA-PSS")
    );
    assert_eq!(sig.certificate_uuid, uuid);
    // An incomplete set (one removed) is refused, as cursive does.
    let (st, _, _) = support::http(
        "PATCH",
        &format!("{g}/v2/images/{id}"),
        &[(
            "Content-Type",
            "application/openstack-images-v2.1-json-patch",
        )],
        br#"[{"op":"remove","path":"/img_signature_key_type"}]"#,
    );
    assert_eq!(st, 200);
    let e = client.image(&id).await.unwrap().signature().unwrap_err();
    assert_eq!(e.check_name(), Some("signature.properties"));
    assert!(e.message().contains("img_signature_key_type"), "{e}");

    // --- 404 for an unknown id; the token is not in the message
    let e = client
        .image("00000000-0000-4000-8000-000000000000")
        .await
        .unwrap_err();
    assert_eq!(e.check_name(), Some("glance.not_found"), "{e}");
    assert!(!e.to_string().contains(token));

    // --- a queued image (no data) is refused before any download
    let queued = create_image(
        &g,
        serde_json::json!({"name": "empty", "disk_format": "raw", "container_format": "bare"}),
    );
    let e = client.image(&queued).await.unwrap_err();
    assert_eq!(e.check_name(), Some("glance.status"), "{e}");
    assert!(e.message().contains("queued"), "{e}");
    // ... and a deactivated one too.
    let (st, _, _) = support::http(
        "POST",
        &format!("{g}/v2/images/{id}/actions/deactivate"),
        &[],
        b"",
    );
    assert_eq!(st, 204);
    let e = client.image(&id).await.unwrap_err();
    assert_eq!(e.check_name(), Some("glance.status"));
    assert!(e.message().contains("deactivated"), "{e}");

    // --- path injection never reaches the server
    let e = client.image("../../v2/images").await.unwrap_err();
    assert_eq!(e.check_name(), Some("glance.image_id"));
    assert!(client.source("x/../y").is_err());

    // --- nothing listening: a network error after the configured attempts
    let dead = GlanceClient::with_options(
        "http://127.0.0.1:9",
        Some(token.into()),
        HttpOptions {
            attempts: 2,
            backoff: Duration::from_millis(1),
            ..Default::default()
        },
    )
    .unwrap();
    let e = dead.image(&id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Network);
    assert_eq!(e.check_name(), Some("glance.unavailable"));
    assert!(e.message().contains("2 attempts"), "{e}");
    assert!(!e.to_string().contains(token));
}

/// `Range` resume against Glance's file store: a proxy cuts the data connection three times;
/// the source continues each time with `Range: bytes=N-` (checked at the proxy), delivers
/// exactly the uploaded bytes and fetches barely more than the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_resume_against_real_glance() {
    let Some(glance) = Service::start("glance", &[]) else {
        return;
    };
    let data = pseudo_random(8 << 20, 2);
    let id = add_image(&glance.url, "raw", &data);
    let cut = 1_500_000u64;
    let proxy = FaultProxy::start(&glance.url, cut, 3);
    let client = GlanceClient::with_options(&proxy.url, Some("tok".into()), fast_retry()).unwrap();
    let img = client.image(&id).await.unwrap();
    assert_eq!(img.size, Some(data.len() as u64));
    let mut src = client.source(&id).unwrap();
    let got = read_all(&mut src).await;
    assert!(got == data, "resumed download differs from the upload");
    assert_eq!(src.resumes(), 3);
    // Every 206 carried the whole image's Content-MD5 (a differing one would have failed the
    // read as "the image changed").
    assert_eq!(
        src.content_md5_hex().as_deref(),
        Some(hex(Algorithm::Md5, &data).as_str())
    );
    drop(src);
    let stats = proxy.stats(4);
    let reqs = stats["file_requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 4, "{stats}");
    assert_eq!(reqs[0]["range"], serde_json::Value::Null);
    for r in &reqs[1..] {
        let range = r["range"].as_str().expect("resumed with a Range header");
        let from: u64 = range
            .strip_prefix("bytes=")
            .and_then(|s| s.strip_suffix('-'))
            .unwrap()
            .parse()
            .unwrap();
        assert!(from > 0 && from < data.len() as u64, "{range}");
    }
    let down = stats["down_bytes"].as_u64().unwrap();
    eprintln!(
        "proxy relayed {down} bytes for a {} byte image ({:.3}x)",
        data.len(),
        down as f64 / data.len() as f64
    );
    assert!(
        (down as f64) < 1.1 * data.len() as f64,
        "{down} bytes relayed"
    );
}

/// Keystone password auth and catalog lookup against a real Keystone: the image endpoint is
/// registered in the catalog (pointing at a real Glance) and found from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_token_and_catalog_find_glance() {
    let Some(keystone) = Service::start("keystone", &[]) else {
        return;
    };
    let Some(glance) = Service::start("glance", &[]) else {
        return;
    };
    let ks = keystone.url.clone();
    // Wrong password: keystone.auth, and the password is not in the message.
    let e = password_token(
        &ks,
        "admin",
        "wrong-pass-xyz",
        "admin",
        "Default",
        "Default",
    )
    .await
    .unwrap_err();
    assert_eq!(e.check_name(), Some("keystone.auth"), "{e}");
    assert!(!e.to_string().contains("wrong-pass-xyz"));

    let (token, catalog) = password_token(&ks, "admin", "secret", "admin", "Default", "Default")
        .await
        .unwrap();
    assert!(!token.expose().is_empty());
    assert_eq!(
        catalog.endpoint("identity", "public", Some("RegionOne")),
        Some(ks.as_str())
    );
    assert_eq!(catalog.endpoint("image", "public", None), None);

    // Register Glance in the catalog through Keystone's own API, with the admin token.
    let auth = [
        ("X-Auth-Token", token.expose()),
        ("Content-Type", "application/json"),
    ];
    let (st, _, body) = support::http(
        "POST",
        &format!("{ks}/services"),
        &auth,
        br#"{"service":{"type":"image","name":"glance"}}"#,
    );
    assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));
    let svc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let sid = svc["service"]["id"].as_str().unwrap();
    for iface in ["public", "internal"] {
        let url = if iface == "public" {
            glance.url.clone()
        } else {
            "http://192.0.2.1:9292".into()
        };
        let ep = serde_json::json!({"endpoint": {"service_id": sid, "interface": iface,
                                   "region_id": "RegionOne", "url": url}});
        let (st, _, body) = support::http(
            "POST",
            &format!("{ks}/endpoints"),
            &auth,
            &serde_json::to_vec(&ep).unwrap(),
        );
        assert_eq!(st, 201, "{}", String::from_utf8_lossy(&body));
    }

    let data = pseudo_random(1 << 20, 3);
    let id = add_image(&glance.url, "raw", &data);
    let pw = PasswordAuth {
        auth_url: ks.trim_end_matches("/v3").to_string(),
        username: "admin".into(),
        password: "secret".into(),
        project_name: "admin".into(),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
    };
    let (client, catalog, _token) = GlanceClient::from_keystone(&pw, None, fast_retry())
        .await
        .unwrap();
    assert_eq!(client.endpoint(), glance.url);
    assert_eq!(
        catalog.endpoint("image", "internal", None),
        Some("http://192.0.2.1:9292")
    );
    let img = client.image(&id).await.unwrap();
    assert_eq!(img.size, Some(data.len() as u64));
    let got = read_all(&mut client.source(&id).unwrap()).await;
    assert!(got == data);
}

/// User and system CPU seconds of this process so far.
fn cpu_seconds() -> (f64, f64) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let ru = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()), 0);
        ru.assume_init()
    };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(ru.ru_utime), s(ru.ru_stime))
}

/// Benchmark helper for `benches/glance-vs-curl.sh`: drain the Glance data URL in
/// `IMGPIPE_BENCH_DATA_URL` through `HttpSource` alone (no hashing, no sink; the chunks are
/// only counted and dropped) and print one line
/// `DRAIN_SECONDS <s> BYTES <n> CHUNKS <c> CPU_USER <s> CPU_SYS <s>`: wall time from creating
/// the source to its end (no process start), and this process's CPU time over the same span,
/// to show whether the network source is what limits a run and what it costs per byte.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark helper, run by benches/glance-vs-curl.sh"]
async fn bench_drain_http_source() {
    let Ok(url) = std::env::var("IMGPIPE_BENCH_DATA_URL") else {
        eprintln!("SKIP: IMGPIPE_BENCH_DATA_URL is not set");
        return;
    };
    let (u0, s0) = cpu_seconds();
    let t = Instant::now();
    let mut src = imgpipe_io::HttpSource::new(&url, HttpOptions::default()).unwrap();
    let (mut n, mut chunks) = (0u64, 0u64);
    while let Some(b) = src.read().await.unwrap() {
        n += b.len() as u64;
        chunks += 1;
    }
    let wall = t.elapsed().as_secs_f64();
    let (u1, s1) = cpu_seconds();
    println!(
        "DRAIN_SECONDS {wall:.4} BYTES {n} CHUNKS {chunks} CPU_USER {:.4} CPU_SYS {:.4}",
        u1 - u0,
        s1 - s0
    );
}

//! Differential test against the real cursive: `tests/oracles/cursive_cases.py` generates keys,
//! certificates, a PKI, an image and tampered variants, signs them, runs cursive on every case
//! as Nova does and records the outcome; every case then goes through imgpipe, which must
//! reach the same verdict at the same phase with the matching check — except for the
//! deliberate differences listed in `docs/signatures.md`, asserted here case by case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support_sig;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::SystemTime;

use imgpipe_crypto::hash::Hasher;
use imgpipe_crypto::signature::{
    CertificatePolicy, CurveCheck, Phase, PssSalt, SignatureError, SignatureProperties,
    SignatureVerifier, VerifyOptions, decode_signature, load_certificates,
};
use openssl::x509::X509;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Before(String),
    After(String),
}

fn before(check: &str) -> Outcome {
    Outcome::Before(check.to_string())
}

/// What cursive's observed outcome means in imgpipe's terms.
fn from_cursive(obs: &Value) -> Outcome {
    let result = obs["result"].as_str().unwrap();
    let stage = obs["stage"].as_str().unwrap();
    let msg = obs["message"].as_str().unwrap();
    let by_message = |table: &[(&str, &str)]| {
        table
            .iter()
            .find(|(needle, _)| msg.contains(needle))
            .map(|(_, check)| before(check))
            .unwrap_or_else(|| panic!("unmapped cursive message at {stage}: {msg}"))
    };
    match (result, stage) {
        ("ok", _) => Outcome::Ok,
        ("InvalidSignature", "stream_verify") => Outcome::After("signature.invalid".into()),
        ("ValueError", "get_verifier") if msg.contains("ASCII") => before("signature.base64"),
        ("SignatureVerificationError", "get_verifier") => by_message(&[
            ("Required image properties", "signature.missing_property"),
            ("not properly encoded using base64", "signature.base64"),
            ("Invalid signature hash method", "signature.hash_method"),
            ("Invalid signature key type", "signature.key_type"),
            ("Invalid public key type", "signature.public_key_type"),
            (
                "Error occurred while creating the verifier",
                "signature.empty",
            ),
        ]),
        ("SignatureVerificationError", "cert_validation") => by_message(&[
            ("outside its valid date range", "certificate.validity"),
            ("sufficient length", "certificate.path_length"),
            ("Certificate chain building failed", "certificate.chain"),
            ("certificate '", "certificate.chain"),
        ]),
        _ => panic!("unmapped cursive outcome {result} at {stage}: {msg}"),
    }
}

/// Deliberate differences: case id → (cursive's outcome, imgpipe's outcome, why).
fn differences() -> BTreeMap<String, (Option<Outcome>, Outcome, &'static str)> {
    let mut d = BTreeMap::new();
    let curve = "imgpipe checks the EC curve against ECC_<curve> (CurveCheck::Strict)";
    for id in ["curve-p521-declared-p384", "curve-p256-declared-p384"] {
        d.insert(
            id.to_string(),
            (Some(Outcome::Ok), before("signature.curve"), curve),
        );
    }
    let binary = "imgpipe keeps the binary curves cursive lost with python-cryptography 47";
    for c in ["sect571k1", "sect409k1", "sect571r1", "sect409r1"] {
        for h in ["SHA-512", "SHA-256"] {
            d.insert(
                format!("good-{c}-{h}"),
                (Some(before("signature.key_type")), Outcome::Ok, binary),
            );
        }
        d.insert(
            format!("bad-{c}-bitflip"),
            (
                Some(before("signature.key_type")),
                Outcome::After("signature.invalid".into()),
                binary,
            ),
        );
    }
    d.insert(
        "bad-sect571k1-declared-sect571r1".into(),
        (
            Some(before("signature.key_type")),
            before("signature.curve"),
            binary,
        ),
    );
    for kt in ["'ECC_SECT571K1'", "'ECC_SECT409R1'"] {
        d.insert(
            format!("bad-key-type-{kt}"),
            (
                Some(before("signature.key_type")),
                before("signature.public_key_type"),
                binary,
            ),
        );
    }
    d.insert(
        "bad-issuer-cycle".into(),
        (
            None,
            before("certificate.chain_loop"),
            "cursive never terminates on an issuer cycle; imgpipe stops",
        ),
    );
    d
}

struct Fixture {
    dir: PathBuf,
    cases: Value,
}

/// The oracle runs once per test binary; its output lives under Cargo's per-target temp dir
/// (regenerated on every run, never committed).
fn fixture() -> Option<&'static Fixture> {
    static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
    FIXTURE.get_or_init(generate).as_ref()
}

fn generate() -> Option<Fixture> {
    let python = support_sig::oracle_python(&["cursive", "castellan", "cryptography"])?;
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        support_sig::unavailable("the openssl CLI is not installed");
        return None;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("signature_cursive");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracles/cursive_cases.py");
    support_sig::run(&python, &[script.as_os_str(), dir.as_os_str()]);
    let cases: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cases.json")).unwrap()).unwrap();
    Some(Fixture { dir, cases })
}

fn load_cert(fx: &Fixture, name: &str) -> X509 {
    let rel = fx.cases["cert_files"][name]
        .as_str()
        .unwrap_or_else(|| panic!("no certificate file for {name}"));
    let mut certs = load_certificates(&std::fs::read(fx.dir.join(rel)).unwrap()).unwrap();
    assert_eq!(certs.len(), 1);
    certs.remove(0)
}

fn image_digest(fx: &Fixture, image: &str, v: &SignatureVerifier, chunk: usize) -> Vec<u8> {
    let data = std::fs::read(fx.dir.join(image)).unwrap();
    let mut h = Hasher::new(v.hash_algorithm());
    for c in data.chunks(chunk.max(1)) {
        h.update(c);
    }
    h.finish()
}

fn err_outcome(e: SignatureError) -> Outcome {
    match e.phase {
        Phase::BeforeStream => Outcome::Before(e.check.to_string()),
        Phase::AfterStream => Outcome::After(e.check.to_string()),
    }
}

/// Run one case through imgpipe; also returns the verifier's warnings.
fn run_imgpipe(fx: &Fixture, case: &Value, options: VerifyOptions) -> (Outcome, Vec<String>) {
    let p = &case["properties"];
    let props = match SignatureProperties::from_json(p) {
        Ok(p) => p,
        Err(e) => return (err_outcome(e), Vec::new()),
    };
    let cert = load_cert(fx, case["signing_cert"].as_str().unwrap());
    let trusted = case["trusted"].as_array().map(|names| {
        names
            .iter()
            .map(|n| n.as_str().unwrap())
            // an id the key manager does not know: cursive skips it; no certificate to pass
            .filter(|n| *n != "<missing>")
            .map(|n| load_cert(fx, n))
            .collect::<Vec<_>>()
    });
    let policy = CertificatePolicy {
        trusted,
        now: SystemTime::now(),
    };
    let v = match SignatureVerifier::new_with_options(&props, &cert, &policy, options) {
        Ok(v) => v,
        Err(e) => return (err_outcome(e), Vec::new()),
    };
    let digest = image_digest(fx, case["image"].as_str().unwrap(), &v, 1 << 20);
    let warnings = v.warnings().to_vec();
    match v.verify_digest(&digest) {
        Ok(()) => (Outcome::Ok, warnings),
        Err(e) => (err_outcome(e), warnings),
    }
}

#[test]
fn imgpipe_agrees_with_cursive() {
    let Some(fx) = fixture() else { return };
    let diffs = differences();
    let cases = fx.cases["cases"].as_array().unwrap();
    assert!(
        cases.len() > 100,
        "oracle produced only {} cases",
        cases.len()
    );
    let mut failures = Vec::new();
    let mut diffs_seen = BTreeSet::new();
    let mut agreed = 0;
    for case in cases {
        let id = case["id"].as_str().unwrap();
        let cursive = (!case["cursive"].is_null()).then(|| from_cursive(&case["cursive"]));
        let (got, _) = run_imgpipe(fx, case, VerifyOptions::default());
        let want = match diffs.get(id) {
            Some((c, imgpipe, _)) if *c == cursive => {
                diffs_seen.insert(id.to_string());
                imgpipe.clone()
            }
            _ => {
                agreed += 1;
                cursive
                    .clone()
                    .expect("only listed differences may skip cursive")
            }
        };
        if got != want {
            failures.push(format!(
                "{id}: imgpipe {got:?}, expected {want:?} (cursive {cursive:?}; {})",
                case["description"]
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "disagreements:\n{}",
        failures.join("\n")
    );
    // Every non-binary-curve difference must actually have been exercised.
    let binary_signed = fx.cases["environment"]["binary_curves_signed"]
        .as_array()
        .unwrap()
        .len();
    for (id, (_, _, why)) in &diffs {
        let optional = why.contains("binary") && binary_signed == 0;
        assert!(
            optional || diffs_seen.contains(id),
            "difference {id} ({why}) was not observed: cursive behaved differently than \
             documented"
        );
    }
    eprintln!(
        "{} cases: {agreed} agree with cursive, {} documented differences",
        cases.len(),
        diffs_seen.len()
    );
}

#[test]
fn cursive_compatible_curve_mode_matches_cursive() {
    let Some(fx) = fixture() else { return };
    let opts = VerifyOptions {
        curve_check: CurveCheck::CursiveCompatible,
        ..VerifyOptions::default()
    };
    for id in ["curve-p521-declared-p384", "curve-p256-declared-p384"] {
        let case = fx.cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap();
        assert_eq!(from_cursive(&case["cursive"]), Outcome::Ok, "{id}");
        assert_eq!(run_imgpipe(fx, case, opts).0, Outcome::Ok, "{id}");
    }
}

#[test]
fn strict_max_pss_salt_mode() {
    let Some(fx) = fixture() else { return };
    let opts = VerifyOptions {
        pss_salt: PssSalt::Maximum,
        ..VerifyOptions::default()
    };
    let mut max_seen = 0;
    let mut other_seen = 0;
    for case in fx.cases["cases"].as_array().unwrap() {
        let Some(is_max) = case["pss_max"].as_bool() else {
            continue;
        };
        let id = case["id"].as_str().unwrap();
        let (got, _) = run_imgpipe(fx, case, opts);
        if is_max {
            max_seen += 1;
            assert_eq!(got, Outcome::Ok, "{id}: maximum-salt signature rejected");
        } else {
            other_seen += 1;
            assert_eq!(
                got,
                Outcome::After("signature.invalid".into()),
                "{id}: non-maximum salt accepted in strict mode"
            );
        }
    }
    assert!(
        max_seen >= 10 && other_seen >= 4,
        "{max_seen} / {other_seen}"
    );
}

#[test]
fn warnings_report_what_cursive_ignores() {
    let Some(fx) = fixture() else { return };
    let find = |id: &str| {
        fx.cases["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap()
            .clone()
    };
    for (id, word) in [
        ("expired-cert-no-trusted-list", "expired"),
        ("notyet-cert-no-trusted-list", "not valid before"),
    ] {
        let (got, warnings) = run_imgpipe(fx, &find(id), VerifyOptions::default());
        assert_eq!(got, Outcome::Ok, "{id}");
        assert!(
            warnings.iter().any(|w| w.contains(word)),
            "{id}: {warnings:?}"
        );
    }
    let (got, warnings) = run_imgpipe(fx, &find("good-chain"), VerifyOptions::default());
    assert_eq!(got, Outcome::Ok);
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn digest_chunking_invariance_and_length() {
    let Some(fx) = fixture() else { return };
    let case = fx.cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "good-ec384-SHA-384")
        .unwrap()
        .clone();
    let props = SignatureProperties::from_json(&case["properties"]).unwrap();
    let cert = load_cert(fx, "self-ec384");
    let v = SignatureVerifier::new(&props, &cert, &CertificatePolicy::default()).unwrap();
    let whole = image_digest(fx, "image.bin", &v, usize::MAX);
    for chunk in [1, 7, 512, 4096, 65536] {
        assert_eq!(image_digest(fx, "image.bin", &v, chunk), whole, "{chunk}");
    }
    v.verify_digest(&whole).unwrap();
    let e = v.verify_digest(&whole[..whole.len() - 1]).unwrap_err();
    assert_eq!(
        (e.phase, e.check),
        (Phase::AfterStream, "signature.digest_length")
    );
    let mut flipped = whole.clone();
    flipped[0] ^= 1;
    assert_eq!(
        v.verify_digest(&flipped).unwrap_err().check,
        "signature.invalid"
    );
}

#[test]
fn base64_matches_cpython() {
    let Some(fx) = fixture() else { return };
    let vectors: Value =
        serde_json::from_slice(&std::fs::read(fx.dir.join("base64.json")).unwrap()).unwrap();
    let vectors = vectors.as_array().unwrap();
    assert!(vectors.len() > 400);
    for v in vectors {
        let input = v["input"].as_str().unwrap();
        match (decode_signature(input), v["ok"].as_bool().unwrap()) {
            (Ok(bytes), true) => assert_eq!(hex::encode(bytes), v["hex"], "{input:?}"),
            (Err(e), false) => assert_eq!(e.check, "signature.base64", "{input:?}"),
            (got, _) => panic!("{input:?}: imgpipe {got:?}, CPython {v}"),
        }
    }
}

#[test]
fn certificate_loading() {
    let Some(fx) = fixture() else { return };
    let read = |n: &str| std::fs::read(fx.dir.join(format!("certs/{n}.pem"))).unwrap();
    let mut bundle = read("root");
    bundle.extend_from_slice(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    bundle.extend(read("intermediate"));
    let certs = load_certificates(&bundle).unwrap();
    assert_eq!(certs.len(), 2);
    let der = certs[0].to_der().unwrap();
    let from_der = load_certificates(&der).unwrap();
    assert_eq!(from_der[0].to_der().unwrap(), der);
    let mut trailing = der.clone();
    trailing.push(0);
    assert_eq!(
        load_certificates(&trailing).unwrap_err().check,
        "certificate.parse"
    );
    assert_eq!(
        load_certificates(&der[..der.len() - 1]).unwrap_err().check,
        "certificate.parse"
    );
    assert_eq!(
        load_certificates(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap_err()
            .check,
        "certificate.empty"
    );
    assert!(load_certificates(b"").is_err());
}

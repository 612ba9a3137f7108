//! LUKS interoperability with the real tools, both directions:
//! imgpipe-made LUKS1 read by `qemu-img convert` (payload byte for byte) and by cryptsetup
//! (`luksDump`, `--dump-volume-key`, `open --test-passphrase`); imgpipe-made LUKS2 read by
//! cryptsetup; qemu-img- and cryptsetup-made headers unlocked by [`luks::unlock`].
#![allow(clippy::unwrap_used)]

mod xts_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use imgpipe_crypto::luks::{self, LuksError, LuksParams, LuksVersion, Pbkdf};
use xts_support::{run_ok, test_data, tool};

// qemu requires LUKS secrets to be UTF-8; a non-ASCII character checks byte-exact handling.
const PASS: &[u8] = "correct horse \u{2713} battery".as_bytes();
const WRONG: &[u8] = "correct horse \u{2713} batterz".as_bytes();

struct Dir {
    _t: tempfile::TempDir,
    p: PathBuf,
}

fn dir() -> Dir {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().to_path_buf();
    std::fs::write(p.join("pass"), PASS).unwrap();
    std::fs::write(p.join("wrong"), WRONG).unwrap();
    Dir { _t: t, p }
}

/// Writes `header` then `plain` encrypted with the volume's XTS, like the engine will.
fn write_volume(path: &Path, vol: &luks::LuksVolume, plain: &[u8]) {
    let mut payload = plain.to_vec();
    vol.xts().unwrap().encrypt_sectors(0, &mut payload);
    let mut img = vol.header.clone();
    img.extend_from_slice(&payload);
    std::fs::write(path, img).unwrap();
}

/// `cryptsetup luksDump --dump-volume-key`: the volume key cryptsetup recovers.
fn cryptsetup_volume_key(cs: &Path, img: &Path, pass: &Path) -> Vec<u8> {
    let out = run_ok(
        Command::new(cs)
            .args(["luksDump", "-q", "--dump-volume-key", "--key-file"])
            .arg(pass)
            .arg(img),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (_, after) = text
        .split_once("MK dump:")
        .unwrap_or_else(|| panic!("no MK dump in:\n{text}"));
    after
        .split_whitespace()
        .take_while(|t| t.len() == 2 && t.chars().all(|c| c.is_ascii_hexdigit()))
        .map(|t| u8::from_str_radix(t, 16).unwrap())
        .collect()
}

fn test_passphrase(cs: &Path, img: &Path, pass: &Path) -> bool {
    Command::new(cs)
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(pass)
        .arg(img)
        .output()
        .unwrap()
        .status
        .success()
}

fn luks_dump(cs: &Path, img: &Path) -> String {
    String::from_utf8(run_ok(Command::new(cs).arg("luksDump").arg(img)).stdout).unwrap()
}

fn assert_cryptsetup_accepts(cs: &Path, d: &Dir, img: &Path, vol: &luks::LuksVolume) {
    assert_eq!(
        cryptsetup_volume_key(cs, img, &d.p.join("pass")),
        vol.master_key.as_slice(),
        "cryptsetup recovers a different volume key from {img:?}"
    );
    assert!(
        test_passphrase(cs, img, &d.p.join("pass")),
        "right passphrase refused"
    );
    assert!(
        !test_passphrase(cs, img, &d.p.join("wrong")),
        "wrong passphrase accepted"
    );
}

#[test]
fn luks1_made_by_imgpipe_is_read_by_qemu_img_and_cryptsetup() {
    let t = "luks1_made_by_imgpipe_is_read_by_qemu_img_and_cryptsetup";
    let (Some(qemu), Some(cs)) = (tool("qemu-img", t), tool("cryptsetup", t)) else {
        return;
    };
    for key_bits in [512, 256] {
        let d = dir();
        let img = d.p.join("vol.luks");
        let mut p = LuksParams::new(LuksVersion::V1);
        p.key_bits = key_bits;
        p.pbkdf = Pbkdf::Pbkdf2 { iterations: 1000 };
        let vol = luks::create(&p, PASS).unwrap();
        assert_eq!(vol.payload_offset, 2 << 20);
        let plain = test_data(3 << 20, u64::from(key_bits));
        write_volume(&img, &vol, &plain);

        // qemu-img decrypts the payload to exactly the source.
        let out = d.p.join("out.raw");
        run_ok(
            Command::new(&qemu)
                .args(["convert", "--object"])
                .arg(format!("secret,id=s0,file={}", d.p.join("pass").display()))
                .arg("--image-opts")
                .arg(format!(
                    "driver=luks,key-secret=s0,file.filename={}",
                    img.display()
                ))
                .args(["-O", "raw"])
                .arg(&out),
        );
        let got = std::fs::read(&out).unwrap();
        assert_eq!(
            got.len(),
            plain.len(),
            "qemu-img virtual size ({key_bits}-bit key)"
        );
        assert!(
            got == plain,
            "qemu-img decrypted payload differs ({key_bits}-bit key)"
        );

        // cryptsetup parses the header and opens the slot.
        let dump = luks_dump(&cs, &img);
        assert!(dump.contains(&vol.uuid), "{dump}");
        assert!(dump.contains("Payload offset:\t4096"), "{dump}");
        assert!(
            dump.contains(&format!("MK bits:       \t{key_bits}")),
            "{dump}"
        );
        assert_cryptsetup_accepts(&cs, &d, &img, &vol);
    }
}

#[test]
fn luks2_made_by_imgpipe_is_read_by_cryptsetup() {
    let t = "luks2_made_by_imgpipe_is_read_by_cryptsetup";
    let Some(cs) = tool("cryptsetup", t) else {
        return;
    };
    let cases = [
        (
            Pbkdf::Argon2id {
                time: 4,
                memory_kib: 16384,
                parallelism: 1,
            },
            512,
            512,
            None,
        ),
        (Pbkdf::Pbkdf2 { iterations: 1000 }, 256, 4096, Some(1 << 20)),
        (
            Pbkdf::Argon2id {
                time: 4,
                memory_kib: 8192,
                parallelism: 2,
            },
            512,
            4096,
            Some(2 << 20),
        ),
    ];
    for (pbkdf, key_bits, sector, offset) in cases {
        let d = dir();
        let img = d.p.join("vol.luks2");
        let mut p = LuksParams::new(LuksVersion::V2);
        p.pbkdf = pbkdf.clone();
        p.key_bits = key_bits;
        p.sector_size = sector;
        p.payload_offset = offset;
        p.label = Some("imgpipe-test".into());
        let vol = luks::create(&p, PASS).unwrap();
        assert_eq!(vol.payload_offset, offset.unwrap_or(16 << 20));
        write_volume(&img, &vol, &test_data(1 << 20, 5));

        let dump = luks_dump(&cs, &img);
        let ctx = format!("{pbkdf:?} key {key_bits} sector {sector}\n{dump}");
        assert!(dump.contains("Version:       \t2"), "{ctx}");
        assert!(dump.contains(&vol.uuid), "{ctx}");
        assert!(dump.contains("imgpipe-test"), "{ctx}");
        assert!(
            dump.contains(&format!("offset: {} [bytes]", vol.payload_offset)),
            "{ctx}"
        );
        assert!(dump.contains(&format!("sector: {sector} [bytes]")), "{ctx}");
        let kdf = if matches!(pbkdf, Pbkdf::Pbkdf2 { .. }) {
            "pbkdf2"
        } else {
            "argon2id"
        };
        assert!(dump.contains(&format!("PBKDF:      {kdf}")), "{ctx}");
        assert_cryptsetup_accepts(&cs, &d, &img, &vol);

        // Our own reader agrees.
        let u = luks::unlock(&vol.header, PASS).unwrap();
        assert_eq!(u.master_key, vol.master_key);
        assert_eq!(
            (u.payload_offset, u.sector_size),
            (vol.payload_offset, sector)
        );
    }
}

#[test]
fn qemu_img_luks1_is_unlocked_and_decrypted_by_imgpipe() {
    let t = "qemu_img_luks1_is_unlocked_and_decrypted_by_imgpipe";
    let Some(qemu) = tool("qemu-img", t) else {
        return;
    };
    for (alg, key_len) in [("aes-256", 64usize), ("aes-128", 32)] {
        let d = dir();
        let (src, img) = (d.p.join("src.raw"), d.p.join("q.luks"));
        let plain = test_data(2 << 20, 77);
        std::fs::write(&src, &plain).unwrap();
        run_ok(
            Command::new(&qemu)
                .args(["convert", "-f", "raw", "-O", "luks", "--object"])
                .arg(format!("secret,id=s0,file={}", d.p.join("pass").display()))
                .args(["-o"])
                .arg(format!("key-secret=s0,iter-time=10,cipher-alg={alg}"))
                .arg(&src)
                .arg(&img),
        );
        let bytes = std::fs::read(&img).unwrap();
        let u = luks::unlock(&bytes, PASS).unwrap();
        assert_eq!(u.version, LuksVersion::V1);
        assert_eq!(u.master_key.len(), key_len, "{alg}");
        assert_eq!(u.sector_size, 512);
        let off = usize::try_from(u.payload_offset).unwrap();
        let mut payload = bytes[off..].to_vec();
        assert_eq!(payload.len(), plain.len(), "{alg}: payload length");
        u.xts().unwrap().decrypt_sectors(0, &mut payload);
        assert!(
            payload == plain,
            "{alg}: decrypted qemu-img payload differs"
        );

        assert!(matches!(
            luks::unlock(&bytes, WRONG),
            Err(LuksError::WrongPassphrase { tried: 1 })
        ));
    }
}

#[test]
fn cryptsetup_made_headers_are_unlocked_by_imgpipe() {
    let t = "cryptsetup_made_headers_are_unlocked_by_imgpipe";
    let Some(cs) = tool("cryptsetup", t) else {
        return;
    };
    let cases: [&[&str]; 4] = [
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
        &[
            "--type",
            "luks1",
            "--pbkdf-force-iterations",
            "1000",
            "--hash",
            "sha1",
            "--key-size",
            "256",
        ],
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-memory",
            "8192",
            "--pbkdf-parallel",
            "1",
        ],
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-size",
            "256",
            "--sector-size",
            "512",
        ],
    ];
    for args in cases {
        let d = dir();
        let img = d.p.join("cs.img");
        std::fs::write(&img, vec![0u8; 20 << 20]).unwrap();
        run_ok(
            Command::new(&cs)
                .args(["luksFormat", "-q", "--key-file"])
                .arg(d.p.join("pass"))
                .args(args)
                .arg(&img),
        );
        let want = cryptsetup_volume_key(&cs, &img, &d.p.join("pass"));
        let bytes = std::fs::read(&img).unwrap();
        let u = luks::unlock(&bytes, PASS).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(u.master_key.as_slice(), want.as_slice(), "{args:?}");
        let dump = luks_dump(&cs, &img);
        assert!(dump.contains(&u.uuid), "{args:?}");
        if u.version == LuksVersion::V2 {
            assert!(
                dump.contains(&format!("offset: {} [bytes]", u.payload_offset)),
                "{dump}"
            );
            assert!(
                dump.contains(&format!("sector: {} [bytes]", u.sector_size)),
                "{dump}"
            );
        } else {
            assert!(dump.contains(&format!("Payload offset:\t{}", u.payload_offset / 512)));
        }
        assert!(matches!(
            luks::unlock(&bytes, WRONG),
            Err(LuksError::WrongPassphrase { .. })
        ));
    }
}

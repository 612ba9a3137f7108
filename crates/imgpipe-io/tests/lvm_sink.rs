//! LVM sink: command construction, `lvs` JSON parsing, the create → write → remove flow through
//! a recorded runner (device-mapper cannot run on the test machine), and real LVM metadata
//! (`pvcreate`/`vgcreate`/`lvcreate --driverloaded n`/`lvs`/`lvremove`) on a loop device with
//! the LV's extents exposed through a second loop device.
#![allow(clippy::unwrap_used)]

mod block_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use block_support::{Loop, Tmpfs, loop_available, pseudo_random, tool_available};
use bytes::Bytes;
use imgpipe_core::{DiskExtent, DiskInfo, ErrorKind, Sink};
use imgpipe_io::block::{BlockZeroes, HELD_BACK};
use imgpipe_io::lvm::{
    CommandOutput, LvInfo, LvTarget, Lvm, LvmSink, RecordedRunner, RecordedStep, parse_lvs_json,
};

const MIB: u64 = 1 << 20;

fn argv(s: &str) -> Vec<String> {
    s.split(' ').map(str::to_string).collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Captured from `lvs --reportformat json --units b --nosuffix -o
/// lv_name,lv_size,lv_path,vg_name imgtestvg` (lvm2 2.03.16, Debian 12) on this machine.
const LVS_ONE: &str = r#"  {
      "report": [
          {
              "lv": [
                  {"lv_name":"lv1", "lv_size":"8388608", "lv_path":"/dev/imgtestvg/lv1", "vg_name":"imgtestvg"}
              ]
          }
      ]
  }
"#;
const LVS_NONE: &str = r#"  {
      "report": [
          {
              "lv": [
              ]
          }
      ]
  }
"#;
/// The same command without `--units b --nosuffix`: human sizes.
const LVS_HUMAN: &str = r#"{"report":[{"lv":[{"lv_name":"lv1", "lv_size":"8.00m", "lv_path":"/dev/imgtestvg/lv1", "vg_name":"imgtestvg"}]}]}"#;
const LVS_CMD: &str =
    "lvs --reportformat json --units b --nosuffix -o lv_name,lv_size,lv_path,vg_name imgtestvg";

#[test]
fn commands_are_novas() {
    let lvm = Lvm::new(Arc::new(RecordedRunner::default()));
    assert_eq!(
        lvm.lvcreate_argv("nova-vg", "0b5c-uuid_disk", 10 << 30)
            .unwrap(),
        argv("lvcreate -L 10737418240b -n 0b5c-uuid_disk nova-vg")
    );
    // LVM refuses sizes that are not multiples of 512 ("Size is not a multiple of 512").
    assert_eq!(
        lvm.lvcreate_argv("vg", "lv", 1000).unwrap(),
        argv("lvcreate -L 1024b -n lv vg")
    );
    let metadata_only = lvm.with_create_args(argv("--driverloaded n -an -Zn"));
    assert_eq!(
        metadata_only.lvcreate_argv("vg", "lv", 512).unwrap(),
        argv("lvcreate --driverloaded n -an -Zn -L 512b -n lv vg")
    );
    assert_eq!(Lvm::lvs_argv("imgtestvg").unwrap(), argv(LVS_CMD));
    assert_eq!(
        Lvm::lvremove_argv("vg", "lv").unwrap(),
        argv("lvremove -f vg/lv")
    );
}

#[test]
fn names_that_could_be_options_or_paths_are_refused() {
    let lvm = Lvm::new(Arc::new(RecordedRunner::default()));
    for bad in [
        "",
        "-rf",
        "--yes",
        "a/b",
        "..",
        ".",
        "a b",
        "x\n",
        &"a".repeat(128),
    ] {
        let e = lvm.lvcreate_argv("vg", bad, 512).unwrap_err();
        assert_eq!(e.check_name(), Some("lvm.name"), "{bad:?}");
        let e = Lvm::lvremove_argv(bad, "lv").unwrap_err();
        assert_eq!(e.check_name(), Some("lvm.name"), "{bad:?}");
    }
    for good in ["vg0", "nova-vg", "a+b_c.d-e", &"a".repeat(127)] {
        lvm.lvcreate_argv(good, good, 512).unwrap();
    }
    assert_eq!(
        lvm.lvcreate_argv("vg", "lv", 0).unwrap_err().check_name(),
        Some("lvm.size")
    );
}

#[test]
fn lvs_json_is_parsed() {
    assert_eq!(
        parse_lvs_json(LVS_ONE.as_bytes()).unwrap(),
        vec![LvInfo {
            lv_name: "lv1".into(),
            vg_name: "imgtestvg".into(),
            lv_size: 8 << 20,
            lv_path: Some(PathBuf::from("/dev/imgtestvg/lv1")),
        }]
    );
    assert_eq!(parse_lvs_json(LVS_NONE.as_bytes()).unwrap(), vec![]);
    let e = parse_lvs_json(LVS_HUMAN.as_bytes()).unwrap_err();
    assert!(
        e.message().contains("8.00m") && e.message().contains("--units b"),
        "{e}"
    );
    assert!(parse_lvs_json(b"not json").is_err());
    assert!(parse_lvs_json(br#"{"report":[{"lv":[{"lv_name":"x"}]}]}"#).is_err());
}

fn step(cmd: &str, out: CommandOutput) -> RecordedStep {
    RecordedStep {
        argv: argv(cmd),
        output: out,
    }
}

const LVS_DISK: &str = r#"{"report":[{"lv":[{"lv_name":"inst_disk", "lv_size":"8388608", "lv_path":"/dev/imgtestvg/inst_disk", "vg_name":"imgtestvg"}]}]}"#;

/// The resolver maps the recorded `lv_path` to a real loop device standing in for the LV.
fn to_loop(dev: PathBuf) -> imgpipe_io::lvm::DeviceResolver {
    Box::new(move |lv: &LvInfo| {
        assert_eq!(
            lv.lv_path.as_deref(),
            Some(Path::new("/dev/imgtestvg/inst_disk"))
        );
        Ok(dev.clone())
    })
}

#[test]
fn recorded_create_write_abort_removes_the_lv() {
    if !loop_available("recorded_create_write_abort_removes_the_lv") {
        return;
    }
    let lo = Loop::new(8 * MIB);
    lo.fill(0xA5);
    let runner = Arc::new(RecordedRunner::new(vec![
        step(LVS_CMD, CommandOutput::ok(LVS_NONE)),
        step(
            "lvcreate -L 8388608b -n inst_disk imgtestvg",
            CommandOutput::ok("  Logical volume \"inst_disk\" created.\n"),
        ),
        step(LVS_CMD, CommandOutput::ok(LVS_DISK)),
        step(
            "lvremove -f imgtestvg/inst_disk",
            CommandOutput::ok("  Logical volume \"inst_disk\" successfully removed.\n"),
        ),
    ]));
    let target = LvTarget::New {
        vg: "imgtestvg".into(),
        name: "inst_disk".into(),
        size: None,
    };
    let sink = LvmSink::open(Lvm::new(runner.clone()), target, BlockZeroes::WriteZeroes)
        .unwrap()
        .with_device_resolver(to_loop(lo.dev.clone()));
    rt().block_on(async {
        let mut sink = Box::new(sink);
        assert_eq!(sink.describe(), "lvm:imgtestvg/inst_disk");
        sink.begin(&DiskInfo {
            size: Some(8 * MIB),
            encrypted: false,
        })
        .await
        .unwrap();
        assert!(sink.created());
        sink.write(DiskExtent::Data {
            offset: 0,
            data: Bytes::from(vec![0x55; 4096]),
        })
        .await
        .unwrap();
        sink.abort().await.unwrap();
    });
    assert_eq!(runner.remaining(), 0, "calls: {:?}", runner.calls());
    assert!(lo.read(0, HELD_BACK as usize).iter().all(|&b| b == 0));
}

#[test]
fn recorded_create_write_finish_keeps_the_lv() {
    if !loop_available("recorded_create_write_finish_keeps_the_lv") {
        return;
    }
    let lo = Loop::new(8 * MIB);
    let runner = Arc::new(RecordedRunner::new(vec![
        step(LVS_CMD, CommandOutput::ok(LVS_NONE)),
        step(
            "lvcreate -L 8388608b -n inst_disk imgtestvg",
            CommandOutput::ok(""),
        ),
        step(LVS_CMD, CommandOutput::ok(LVS_DISK)),
    ]));
    let target = LvTarget::New {
        vg: "imgtestvg".into(),
        name: "inst_disk".into(),
        size: Some(8 * MIB),
    };
    let sink = LvmSink::open(Lvm::new(runner.clone()), target, BlockZeroes::WriteZeroes)
        .unwrap()
        .with_device_resolver(to_loop(lo.dev.clone()));
    let content = pseudo_random(9, 3 * MIB as usize);
    let report = rt().block_on(async {
        let mut sink = Box::new(sink);
        sink.begin(&DiskInfo {
            size: Some(3 * MIB),
            encrypted: false,
        })
        .await
        .unwrap();
        sink.write(DiskExtent::Data {
            offset: 0,
            data: Bytes::from(content.clone()),
        })
        .await
        .unwrap();
        sink.finish().await.unwrap()
    });
    assert_eq!(runner.remaining(), 0, "calls: {:?}", runner.calls());
    assert!(
        report.target.starts_with("lvm:imgtestvg/inst_disk"),
        "{}",
        report.target
    );
    assert_eq!(lo.read(0, content.len()), content);
}

/// `abort` on an LV that existed before the run: its first MiB is wiped, and it is never
/// removed (no `lvremove` step is recorded, so running one would fail the replay).
#[test]
fn recorded_abort_of_an_existing_lv_only_wipes_it() {
    if !loop_available("recorded_abort_of_an_existing_lv_only_wipes_it") {
        return;
    }
    let lo = Loop::new(8 * MIB);
    lo.fill(0xA5);
    let runner = Arc::new(RecordedRunner::new(vec![
        step(LVS_CMD, CommandOutput::ok(LVS_DISK)),
        step(LVS_CMD, CommandOutput::ok(LVS_DISK)),
    ]));
    let target = LvTarget::Existing {
        vg: "imgtestvg".into(),
        name: "inst_disk".into(),
    };
    let sink = LvmSink::open(Lvm::new(runner.clone()), target, BlockZeroes::WriteZeroes)
        .unwrap()
        .with_device_resolver(to_loop(lo.dev.clone()));
    rt().block_on(async {
        let mut sink = Box::new(sink);
        sink.begin(&DiskInfo::default()).await.unwrap();
        assert!(!sink.created());
        sink.write(DiskExtent::Data {
            offset: 0,
            data: Bytes::from(vec![0x55; 2 * MIB as usize]),
        })
        .await
        .unwrap();
        sink.abort().await.unwrap();
    });
    assert_eq!(runner.remaining(), 0, "calls: {:?}", runner.calls());
    assert_eq!(runner.calls().len(), 2, "calls: {:?}", runner.calls());
    assert!(lo.read(0, HELD_BACK as usize).iter().all(|&b| b == 0));
    // The rest of the LV keeps its old content: the 0x55 past the first MiB was still pending
    // in the sink's buffer, and an abort drops it unwritten.
    assert!(lo.read(MIB, 7 * MIB as usize).iter().all(|&b| b == 0xA5));
}

/// `finish` fails on an LV this run created (a body write fails: the LV stands in as a loop
/// device over a file on a tmpfs that is full by then): the sink wipes the first MiB and then
/// runs `lvremove -f vg/name`, in that order, and reports the write failure.
#[test]
fn recorded_finish_failure_removes_the_created_lv() {
    let test = "recorded_finish_failure_removes_the_created_lv";
    if !loop_available(test) {
        return;
    }
    let Some(fs) = Tmpfs::mount(test, 4 * MIB) else {
        return;
    };
    let backing = fs.path().join("lv.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let lo = Loop::attach(&backing, &[]);
    let runner = Arc::new(RecordedRunner::new(vec![
        step(LVS_CMD, CommandOutput::ok(LVS_NONE)),
        step(
            "lvcreate -L 8388608b -n inst_disk imgtestvg",
            CommandOutput::ok("  Logical volume \"inst_disk\" created.\n"),
        ),
        step(LVS_CMD, CommandOutput::ok(LVS_DISK)),
        step(
            "lvremove -f imgtestvg/inst_disk",
            CommandOutput::ok("  Logical volume \"inst_disk\" successfully removed.\n"),
        ),
    ]));
    let target = LvTarget::New {
        vg: "imgtestvg".into(),
        name: "inst_disk".into(),
        size: None,
    };
    let sink = LvmSink::open(Lvm::new(runner.clone()), target, BlockZeroes::WriteZeroes)
        .unwrap()
        .with_device_resolver(to_loop(lo.dev.clone()));
    let err = rt().block_on(async {
        let mut sink = Box::new(sink);
        sink.begin(&DiskInfo {
            size: Some(8 * MIB),
            encrypted: false,
        })
        .await
        .unwrap();
        assert!(sink.created());
        // begin wrote the first MiB (its blocks exist); nothing else can be stored now.
        fs.fill_leaving(0);
        sink.write(DiskExtent::Data {
            offset: 0,
            data: Bytes::from(pseudo_random(5, 3 * MIB as usize)),
        })
        .await
        .unwrap();
        // The remove must come after the wipe: no lvremove yet.
        assert_eq!(runner.calls().len(), 3, "calls: {:?}", runner.calls());
        sink.finish().await.unwrap_err()
    });
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(err.offset().is_some_and(|o| o >= MIB), "{err}");
    assert_eq!(runner.remaining(), 0, "calls: {:?}", runner.calls());
    assert_eq!(
        runner.calls().last().map(|c| c.join(" ")).as_deref(),
        Some("lvremove -f imgtestvg/inst_disk")
    );
    assert!(lo.read(0, HELD_BACK as usize).iter().all(|&b| b == 0));
    drop(lo);
    drop(fs);

    // The same failure on an existing LV: wiped, never removed (no lvremove step recorded).
    let Some(fs) = Tmpfs::mount(test, 4 * MIB) else {
        return;
    };
    let backing = fs.path().join("lv.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(8 * MIB)
        .unwrap();
    let lo = Loop::attach(&backing, &[]);
    let runner = Arc::new(RecordedRunner::new(vec![
        step(LVS_CMD, CommandOutput::ok(LVS_DISK)),
        step(LVS_CMD, CommandOutput::ok(LVS_DISK)),
    ]));
    let target = LvTarget::Existing {
        vg: "imgtestvg".into(),
        name: "inst_disk".into(),
    };
    let sink = LvmSink::open(Lvm::new(runner.clone()), target, BlockZeroes::WriteZeroes)
        .unwrap()
        .with_device_resolver(to_loop(lo.dev.clone()));
    rt().block_on(async {
        let mut sink = Box::new(sink);
        sink.begin(&DiskInfo::default()).await.unwrap();
        assert!(!sink.created());
        fs.fill_leaving(0);
        sink.write(DiskExtent::Data {
            offset: 0,
            data: Bytes::from(pseudo_random(6, 3 * MIB as usize)),
        })
        .await
        .unwrap();
        sink.finish().await.unwrap_err();
    });
    assert_eq!(runner.remaining(), 0, "calls: {:?}", runner.calls());
    assert_eq!(runner.calls().len(), 2, "calls: {:?}", runner.calls());
    assert!(lo.read(0, HELD_BACK as usize).iter().all(|&b| b == 0));
}

#[test]
fn recorded_failures_are_reported_and_nothing_is_removed_that_was_not_created() {
    // An LV that exists already is not created over.
    let runner = Arc::new(RecordedRunner::new(vec![step(
        LVS_CMD,
        CommandOutput::ok(LVS_ONE),
    )]));
    let e = LvmSink::open(
        Lvm::new(runner),
        LvTarget::New {
            vg: "imgtestvg".into(),
            name: "lv1".into(),
            size: None,
        },
        BlockZeroes::WriteZeroes,
    )
    .unwrap_err();
    assert_eq!(e.check_name(), Some("lvm.exists"), "{e}");

    // A missing VG: lvs exits 5 with this stderr (captured).
    let runner = Arc::new(RecordedRunner::new(vec![step(
        LVS_CMD,
        CommandOutput::failed(
            5,
            "  Volume group \"imgtestvg\" not found\n  Cannot process volume group imgtestvg\n",
        ),
    )]));
    let e = LvmSink::open(
        Lvm::new(runner),
        LvTarget::Existing {
            vg: "imgtestvg".into(),
            name: "lv1".into(),
        },
        BlockZeroes::WriteZeroes,
    )
    .unwrap_err();
    assert_eq!(
        (e.kind(), e.check_name()),
        (ErrorKind::Spec, Some("lvm.lvs"))
    );
    assert!(e.message().contains("not found"), "{e}");

    // lvcreate fails for lack of space (captured stderr): LimitExceeded; abort removes nothing.
    let runner = Arc::new(RecordedRunner::new(vec![
        step(LVS_CMD, CommandOutput::ok(LVS_NONE)),
        step(
            "lvcreate -L 1000000000b -n big imgtestvg",
            CommandOutput::failed(
                5,
                "  Volume group \"imgtestvg\" has insufficient free space (13 extents): 239 required.\n",
            ),
        ),
    ]));
    let sink = LvmSink::open(
        Lvm::new(runner.clone()),
        LvTarget::New {
            vg: "imgtestvg".into(),
            name: "big".into(),
            size: Some(1_000_000_000),
        },
        BlockZeroes::WriteZeroes,
    )
    .unwrap();
    let e = rt().block_on(async {
        let mut sink = Box::new(sink);
        let e = sink.begin(&DiskInfo::default()).await.unwrap_err();
        assert!(!sink.created());
        sink.abort().await.unwrap(); // no lvremove step recorded: it must not run
        e
    });
    assert_eq!(e.kind(), ErrorKind::LimitExceeded, "{e}");
    assert_eq!(runner.remaining(), 0);
    assert_eq!(runner.calls().len(), 2);

    // No size anywhere: refused before lvcreate.
    let runner = Arc::new(RecordedRunner::new(vec![step(
        LVS_CMD,
        CommandOutput::ok(LVS_NONE),
    )]));
    let sink = LvmSink::open(
        Lvm::new(runner.clone()),
        LvTarget::New {
            vg: "imgtestvg".into(),
            name: "x".into(),
            size: None,
        },
        BlockZeroes::WriteZeroes,
    )
    .unwrap();
    let mut sink = sink;
    let e = rt().block_on(async { sink.begin(&DiskInfo::default()).await.unwrap_err() });
    assert_eq!(e.check_name(), Some("lvm.size"));
}

// ---- real LVM metadata on a loop device ----

fn lvm_available(test: &str) -> bool {
    let ok = Command::new("lvm")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("IMGPIPE_REQUIRE_ORACLES").as_deref() == Ok("1") {
            panic!("{test}: lvm2 tools missing and IMGPIPE_REQUIRE_ORACLES=1");
        }
        eprintln!("SKIP {test}: lvm2 tools (lvm, pvcreate, vgcreate, lvs) not installed");
    }
    ok
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn report_field(json: &str, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let r = &v["report"][0];
    let obj = r.as_object().unwrap().values().next().unwrap()[0].clone();
    obj[key].as_str().unwrap().to_string()
}

/// A PV + VG on a loop device; removed (and `/dev/mapper/control`, if LVM created it) on drop.
struct Vg {
    name: String,
    pv: Loop,
    mapper_existed: bool,
    pe_start: u64,
    extent: u64,
    /// The tmpfs under the PV's backing file, if any (unmounted after the PV is detached).
    _fs: Option<Tmpfs>,
}

impl Vg {
    /// `pvcreate` + `vgcreate` on `pv`; reads the PV's first extent offset and the extent size.
    fn create(name: String, pv: Loop, mapper_existed: bool, fs: Option<Tmpfs>) -> Vg {
        let mut vg = Vg {
            name,
            pv,
            mapper_existed,
            pe_start: 0,
            extent: 0,
            _fs: fs,
        };
        let pv = vg.pv.dev.display().to_string();
        sh(&["pvcreate", "-q", &pv]);
        sh(&["vgcreate", "-q", &vg.name, &pv]);
        vg.pe_start = report_field(
            &sh(&[
                "pvs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "pe_start",
                &pv,
            ]),
            "pe_start",
        )
        .parse()
        .unwrap();
        vg.extent = report_field(
            &sh(&[
                "vgs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                "vg_extent_size",
                &vg.name,
            ]),
            "vg_extent_size",
        )
        .parse()
        .unwrap();
        vg
    }

    /// The first physical extent of `vg/lv` (a single linear segment).
    fn first_pe(&self, lv: &str) -> u64 {
        let ranges = report_field(
            &sh(&[
                "lvs",
                "--reportformat",
                "json",
                "-o",
                "seg_pe_ranges",
                &format!("{}/{lv}", self.name),
            ]),
            "seg_pe_ranges",
        );
        // "/dev/loopN:first-last"
        let (_, r) = ranges.rsplit_once(':').unwrap();
        r.split_once('-').unwrap().0.parse().unwrap()
    }

    /// Device-mapper is missing: LVs cannot be activated, so expose an LV's (single, linear)
    /// segment as a loop device over the same backing file at the PV offset. The windows are
    /// kept in `windows` (detached when it drops).
    fn window_resolver(
        &self,
        windows: &Arc<Mutex<Vec<Loop>>>,
    ) -> impl Fn(&LvInfo) -> imgpipe_core::Result<PathBuf> + Clone + Send + Sync + 'static {
        let (windows, backing, vgname) = (windows.clone(), self.pv.file.clone(), self.name.clone());
        let (pe_start, extent) = (self.pe_start, self.extent);
        move |lv: &LvInfo| -> imgpipe_core::Result<PathBuf> {
            let ranges = report_field(
                &sh(&[
                    "lvs",
                    "--reportformat",
                    "json",
                    "-o",
                    "seg_pe_ranges",
                    &format!("{vgname}/{}", lv.lv_name),
                ]),
                "seg_pe_ranges",
            );
            let (_, r) = ranges.rsplit_once(':').unwrap();
            let first: u64 = r.split_once('-').unwrap().0.parse().unwrap();
            let w = Loop::attach(
                &backing,
                &[
                    format!("--offset={}", pe_start + first * extent),
                    format!("--sizelimit={}", lv.lv_size),
                ],
            );
            let dev = w.dev.clone();
            windows.lock().unwrap().push(w);
            Ok(dev)
        }
    }
}

/// Metadata-only LVM commands (no device-mapper here).
fn metadata_lvm() -> Lvm {
    Lvm::system().with_create_args(vec![
        "--driverloaded".into(),
        "n".into(),
        "-an".into(),
        "-Zn".into(),
    ])
}

impl Drop for Vg {
    fn drop(&mut self) {
        let q = |a: &[&str]| {
            let _ = Command::new(a[0])
                .args(&a[1..])
                .env("LVM_SUPPRESS_FD_WARNINGS", "1")
                .output();
        };
        q(&["vgremove", "-f", &self.name]);
        q(&["pvremove", "-ff", "-y", &self.pv.dev.display().to_string()]);
        if !self.mapper_existed {
            let _ = std::fs::remove_file("/dev/mapper/control");
            let _ = std::fs::remove_dir("/dev/mapper");
        }
    }
}

#[test]
fn real_lvm_metadata_create_write_through_window_then_remove() {
    // LVM tools (even `lvm version`) create /dev/mapper/control; remove it again if they did.
    let mapper_existed = Path::new("/dev/mapper/control").exists();
    if !loop_available("real_lvm_metadata") || !lvm_available("real_lvm_metadata") {
        return;
    }
    let vg = Vg::create(
        format!("imgpipe_test_{}", std::process::id()),
        Loop::new(64 * MIB),
        mapper_existed,
        None,
    );
    let (pe_start, extent) = (vg.pe_start, vg.extent);
    let windows: Arc<Mutex<Vec<Loop>>> = Arc::default();
    let resolver = vg.window_resolver(&windows);
    let lvm = metadata_lvm;

    // A verified run: create, write, finish; the LV stays and the bytes sit at its PV extents.
    let content = pseudo_random(77, 6 * MIB as usize);
    let target = LvTarget::New {
        vg: vg.name.clone(),
        name: "inst_disk".into(),
        size: None,
    };
    let sink = LvmSink::open(lvm(), target, BlockZeroes::WriteZeroes)
        .unwrap()
        .with_device_resolver(Box::new(resolver.clone()));
    rt().block_on(async {
        let mut sink = Box::new(sink);
        sink.begin(&DiskInfo {
            size: Some(6 * MIB),
            encrypted: false,
        })
        .await
        .unwrap();
        sink.write(DiskExtent::Data {
            offset: 0,
            data: Bytes::from(content.clone()),
        })
        .await
        .unwrap();
        sink.finish().await.unwrap();
    });
    let lv = lvm()
        .find(&vg.name, "inst_disk")
        .unwrap()
        .expect("LV kept after finish");
    assert_eq!(lv.lv_size, 8 * MIB, "6 MiB rounded up to two 4 MiB extents");
    let first = vg.first_pe("inst_disk");
    assert_eq!(
        vg.pv.read(pe_start + first * extent, content.len()),
        content,
        "bytes not at the LV's extents on the PV"
    );

    // A failed run: the LV it created is removed, and its first MiB was wiped before that.
    let target = LvTarget::New {
        vg: vg.name.clone(),
        name: "failed_disk".into(),
        size: Some(4 * MIB),
    };
    let sink = LvmSink::open(lvm(), target, BlockZeroes::WriteZeroes)
        .unwrap()
        .with_device_resolver(Box::new(resolver));
    rt().block_on(async {
        let mut sink = Box::new(sink);
        sink.begin(&DiskInfo {
            size: Some(4 * MIB),
            encrypted: false,
        })
        .await
        .unwrap();
        sink.write(DiskExtent::Data {
            offset: 0,
            data: Bytes::from(vec![0x66; 2 * MIB as usize]),
        })
        .await
        .unwrap();
        sink.abort().await.unwrap();
    });
    assert_eq!(
        lvm().find(&vg.name, "failed_disk").unwrap(),
        None,
        "created LV not removed on abort"
    );
    assert!(
        lvm().find(&vg.name, "inst_disk").unwrap().is_some(),
        "abort removed the wrong LV"
    );
    let w = windows.lock().unwrap();
    assert!(w[1].read(0, HELD_BACK as usize).iter().all(|&b| b == 0));
}

/// Real LVM metadata: `finish` fails on an LV this run created, and the LV is gone afterwards
/// (`lvremove` for real). The PV's backing file sits on a tmpfs that is full by the time the
/// body is flushed; the PV's metadata area (its first MiB) is allocated up front so LVM can
/// still rewrite its metadata.
#[test]
fn real_lvm_finish_failure_removes_the_created_lv() {
    let test = "real_lvm_finish_failure_removes_the_created_lv";
    let mapper_existed = Path::new("/dev/mapper/control").exists();
    if !loop_available(test) || !lvm_available(test) || !tool_available(test, "fallocate") {
        return;
    }
    let Some(fs) = Tmpfs::mount(test, 8 * MIB) else {
        return;
    };
    let backing = fs.path().join("pv.img");
    std::fs::File::create(&backing)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let st = Command::new("fallocate")
        .args(["--keep-size", "--offset", "0", "--length", "1MiB"])
        .arg(&backing)
        .status()
        .unwrap();
    assert!(st.success());
    let vg = Vg::create(
        format!("imgpipe_fail_{}", std::process::id()),
        Loop::attach(&backing, &[]),
        mapper_existed,
        Some(fs),
    );
    let windows: Arc<Mutex<Vec<Loop>>> = Arc::default();
    let target = LvTarget::New {
        vg: vg.name.clone(),
        name: "failed_disk".into(),
        size: Some(8 * MIB),
    };
    let sink = LvmSink::open(metadata_lvm(), target, BlockZeroes::WriteZeroes)
        .unwrap()
        .with_device_resolver(Box::new(vg.window_resolver(&windows)));
    let err = rt().block_on(async {
        let mut sink = Box::new(sink);
        sink.begin(&DiskInfo {
            size: Some(8 * MIB),
            encrypted: false,
        })
        .await
        .unwrap();
        assert!(sink.created());
        assert!(
            metadata_lvm()
                .find(&vg.name, "failed_disk")
                .unwrap()
                .is_some(),
            "lvcreate did not create the LV"
        );
        vg._fs.as_ref().unwrap().fill_leaving(0);
        sink.write(DiskExtent::Data {
            offset: 0,
            data: Bytes::from(pseudo_random(7, 3 * MIB as usize)),
        })
        .await
        .unwrap();
        sink.finish().await.unwrap_err()
    });
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    assert!(
        !err.message().contains("removing the logical volume"),
        "lvremove failed: {err}"
    );
    assert_eq!(
        metadata_lvm().find(&vg.name, "failed_disk").unwrap(),
        None,
        "the LV created by a run whose finish failed is still there"
    );
    let w = windows.lock().unwrap();
    assert!(w[0].read(0, HELD_BACK as usize).iter().all(|&b| b == 0));
}

//! `slipway exec --nv` and fabric devices, for real, on a machine without a GPU or an HCA.
//!
//! What is real: Debian's NVIDIA 535 user space (`libcuda1`, `libnvidia-ml1`, `nvidia-smi`,
//! installed by tests/setup.sh), the host's `/etc/ld.so.cache` written by the real ldconfig,
//! and a probe in an image with no driver that `dlopen`s the bound `libcuda.so.1` and calls
//! `cuDriverGetVersion` (the driver answers without a GPU: 12020 for 535). What stands in:
//! device nodes made with mknod (NVIDIA's major 195, uverbs' 231; hfi1's major is allocated
//! when its driver loads) in a directory only the root-owned test policy names
//! (`gpu.device_dir`), and driver information files in the driver's format in a directory the
//! policy names (`gpu.driver_info`, `/proc/driver/nvidia/gpus` on a GPU node). They stand for
//! a node with four GPUs whose device minors are not in PCI bus order.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;
use slipway_tests::{have, is_root, run, run_ok, skip, slipway_bin};

const USER: &str = "sliptest";

struct Fx {
    root: PathBuf,
    image: PathBuf,
    dev: PathBuf,
    /// A device directory with GPU nodes but no nvidiactl: a node without a driver.
    nodriver_dev: PathBuf,
    info: PathBuf,
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mknod(p: &Path, major: u32, minor: u32) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    let c = CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; mknod has no other preconditions.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// A root-owned directory with no group/other write bit all the way up (policy files must
/// live in one): below the target directory when it is, else under /srv.
fn scratch() -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&target).unwrap();
    let ok = target.ancestors().all(|d| {
        d.metadata()
            .map(|m| m.uid() == 0 && m.mode() & 0o022 == 0)
            .unwrap_or(false)
    });
    if ok {
        target.join("gpu-fixtures")
    } else {
        PathBuf::from("/srv/slipway-gpu-tests")
    }
}

fn fx() -> Option<&'static Fx> {
    static FX: OnceLock<Option<Fx>> = OnceLock::new();
    FX.get_or_init(|| {
        if !is_root() {
            eprintln!("needs root");
            return None;
        }
        if !have("gcc") || !have("setpriv") || !Path::new(slipway_tests::HOST_LIBCUDA).exists() {
            eprintln!("needs gcc, setpriv and Debian's libcuda1 (tests/setup.sh installs it)");
            return None;
        }
        if run(Command::new("id").arg(USER)).status.code() != Some(0) {
            run_ok(Command::new("useradd").args(["-m", USER]));
        }
        let root = scratch();
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        chmod(&root, 0o755);

        // An image with glibc and two probes, and no NVIDIA file at all.
        let image = root.join("image");
        std::fs::create_dir_all(image.join("bin")).unwrap();
        let src = slipway_tests::workspace().join("tests/probe");
        slipway_tests::add_cuda_probe(&image);
        slipway_tests::add_rocm_probe(&image);
        run_ok(
            Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(image.join("bin/probe"))
                .arg(src.join("probe.c")),
        );
        std::fs::create_dir_all(image.join("etc")).unwrap();
        std::fs::write(image.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        std::fs::write(image.join("etc/group"), "root:x:0:\n").unwrap();

        // The stand-in node: four GPUs, control nodes, a MIG capability, fabric devices.
        let dev = root.join("dev");
        for m in 0..4 {
            mknod(&dev.join(format!("nvidia{m}")), 195, m);
        }
        mknod(&dev.join("nvidiactl"), 195, 255);
        mknod(&dev.join("nvidia-uvm"), 510, 0);
        mknod(&dev.join("nvidia-caps/nvidia-cap1"), 511, 1);
        mknod(&dev.join("infiniband/uverbs0"), 231, 192);
        mknod(&dev.join("infiniband/umad0"), 231, 0);
        mknod(&dev.join("infiniband/rdma_cm"), 10, 58);
        mknod(&dev.join("hfi1_0"), 246, 0);
        // AMD: /dev/kfd (its major is allocated when amdgpu loads), render nodes (DRM's 226),
        // and a KFD topology in the driver's format: CPU node 0, GPU nodes 1 and 2 whose render
        // minors are 129 and 128 (ROCr's order is node order, not minor order).
        mknod(&dev.join("kfd"), 240, 0);
        mknod(&dev.join("dri/renderD128"), 226, 128);
        mknod(&dev.join("dri/renderD129"), 226, 129);
        mknod(&dev.join("dri/card0"), 226, 0);
        let topo = root.join("kfd-topology");
        for (n, gpu_id, minor) in [(0, 0, 0), (1, 4242, 129), (2, 4343, 128)] {
            let d = topo.join(n.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("gpu_id"), format!("{gpu_id}\n")).unwrap();
            std::fs::write(
                d.join("properties"),
                format!(
                    "simd_count 256\ndrm_render_minor {minor}\nunique_id {}\n",
                    1000 + n
                ),
            )
            .unwrap();
        }
        let nodriver_dev = root.join("dev-nodriver");
        for m in 0..4 {
            mknod(&nodriver_dev.join(format!("nvidia{m}")), 195, m);
        }
        // PCI order: 0000:1a (minor 2), 0000:3b (minor 0), 0000:86 (minor 3), 0000:af (minor 1).
        let info = root.join("gpus");
        for (bus, minor) in [
            ("0000:3b:00.0", 0),
            ("0000:af:00.0", 1),
            ("0000:1a:00.0", 2),
            ("0000:86:00.0", 3),
        ] {
            let d = info.join(bus);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("information"),
                format!(
                    "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 42\n\
                     GPU UUID: \t GPU-{minor}0000000-1111-2222-3333-444444444444\n\
                     Bus Type: \t PCIe\nBus Location: \t {bus}\nDevice Minor: \t {minor}\n"
                ),
            )
            .unwrap();
        }
        for d in [&root, &image, &dev, &info] {
            chmod(d, 0o755);
        }
        Some(Fx {
            root,
            image,
            dev,
            nodriver_dev,
            info,
        })
    })
    .as_ref()
}

fn need() -> Option<&'static Fx> {
    let f = fx();
    if f.is_none() {
        skip("needs root, gcc, setpriv and Debian's libcuda1 (tests/setup.sh installs them)");
    }
    f
}

/// A root-owned policy file with the stand-in directories and `extra` lines.
fn policy(fx: &Fx, name: &str, gpu: &str, fabric: &str) -> PathBuf {
    let p = fx.root.join(name);
    std::fs::write(
        &p,
        format!(
            "[gpu]\ndevice_dir = \"{}\"\ndriver_info = \"{}\"\n{gpu}\nkfd_topology = \"{}/kfd-topology\"\n\
             [fabric]\ndevice_dir = \"{}\"\n{fabric}\n",
            fx.dev.display(),
            fx.info.display(),
            fx.root.display(),
            fx.dev.display()
        ),
    )
    .unwrap();
    chmod(&p, 0o644);
    p
}

/// `slipway ARGS` as root (`user`: false) or as the unprivileged test user, with `env` set.
fn slipway(_fx: &Fx, user: bool, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = if user {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", USER, "--regid", USER, "--init-groups"])
            .arg(slipway_bin());
        c
    } else {
        Command::new(slipway_bin())
    };
    c.args(args)
        .current_dir("/")
        .env_remove("CUDA_VISIBLE_DEVICES");
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

/// The cuda probe's `key=value` report.
/// `slipway exec FLAGS --policy POLICY IMAGE PROGRAM`, as the test user when `user`.
fn exec_in(
    fx: &Fx,
    user: bool,
    flags: &[&str],
    policy: &str,
    program: &str,
    env: &[(&str, &str)],
) -> Output {
    let mut args = vec!["exec"];
    args.extend_from_slice(flags);
    args.extend(["--policy", policy, image(fx), program]);
    slipway(fx, user, &args, env)
}

fn cuda_report(out: &Output) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "slipway failed ({}):\nstdout: {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

fn err_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn image(fx: &Fx) -> &str {
    fx.image.to_str().unwrap()
}

/// The GPU launch itself, root (for the job's user, as the SPANK plugin runs it) and
/// unprivileged: the bound host libcuda answers, exactly the GPUs' nodes are there, with
/// their minors, and CUDA_VISIBLE_DEVICES counts them from 0.
#[test]
fn nv_gives_the_host_driver_and_every_gpu() {
    let Some(fx) = need() else { return };
    let pol = policy(fx, "nv.toml", "", "");
    let uid = run_ok(Command::new("id").args(["-u", USER]))
        .trim()
        .to_string();
    for (who, user, pre) in [
        ("root --as-user", false, vec!["--as-user", uid.as_str()]),
        ("unprivileged", true, vec![]),
    ] {
        let mut args = vec!["exec", "--nv", "--policy", pol.to_str().unwrap()];
        args.extend(pre.iter().copied());
        args.extend([image(fx), "/bin/cuda_probe"]);
        let r = cuda_report(&slipway(fx, user, &args, &[]));
        assert_eq!(
            r["libcuda"], "/.singularity.d/libs/libcuda.so.1",
            "{who}: {r:?}"
        );
        assert_eq!(
            r["driver_version"], "12020",
            "{who}: the host's 535 driver answers"
        );
        assert_eq!(
            r["dev_nvidia"],
            "nvidia-uvm@510:0,nvidia0@195:0,nvidia1@195:1,nvidia2@195:2,nvidia3@195:3,nvidiactl@195:255",
            "{who}"
        );
        assert_eq!(r["nvidia_caps"], "nvidia-cap1@511:1", "{who}");
        assert_eq!(r["visible"], "0,1,2,3", "{who}");
        assert!(
            r["ld_library_path"]
                .split(':')
                .any(|d| d == "/.singularity.d/libs"),
            "{who}"
        );
    }
    // The driver's files are read-only, nosuid, nodev; nvidia-smi is where Apptainer puts it.
    let out = exec_in(
        fx,
        false,
        &["--nv"],
        pol.to_str().unwrap(),
        "/bin/probe",
        &[],
    );
    let r = json(&out);
    let m = r["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["target"] == "/.singularity.d/libs/libcuda.so.1")
        .expect("libcuda.so.1 is a mount");
    let o = m["options"].as_str().unwrap();
    for f in ["ro", "nosuid", "nodev"] {
        assert!(o.split(',').any(|x| x == f), "{o}");
    }
    assert!(r["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["target"] == "/usr/bin/nvidia-smi"));
}

/// Indices are PCI positions (nvidia-smi's order), never minors: index 1 is the GPU at
/// 0000:3b (minor 0), index 2 the one at 0000:86 (minor 3). Inside only those two are there,
/// as 0 and 1, and the driver's GPU list shows only them.
#[test]
fn visible_devices_select_by_pci_order() {
    let Some(fx) = need() else { return };
    let pol = policy(fx, "select.toml", "", "");
    let p = pol.to_str().unwrap();
    let r = cuda_report(&exec_in(
        fx,
        true,
        &["--nv"],
        p,
        "/bin/cuda_probe",
        &[("CUDA_VISIBLE_DEVICES", "1,2")],
    ));
    assert_eq!(
        r["dev_nvidia"],
        "nvidia-uvm@510:0,nvidia0@195:0,nvidia3@195:3,nvidiactl@195:255"
    );
    assert_eq!(r["visible"], "0,1");
    let uuid = "GPU-30000000-1111-2222-3333-444444444444";
    let r = cuda_report(&exec_in(
        fx,
        true,
        &["--nv"],
        p,
        "/bin/cuda_probe",
        &[
            ("NVIDIA_VISIBLE_DEVICES", uuid),
            ("CUDA_VISIBLE_DEVICES", "0"),
        ],
    ));
    assert_eq!(
        r["dev_nvidia"],
        "nvidia-uvm@510:0,nvidia3@195:3,nvidiactl@195:255"
    );
    // The driver information of the others is hidden (a tmpfs with the two bound back).
    let info = fx.info.display().to_string();
    let out = slipway(
        fx,
        true,
        &[
            "exec",
            "--nv",
            "--policy",
            p,
            image(fx),
            "/bin/probe",
            "--read",
            &format!("{info}/0000:86:00.0/information"),
            "--read",
            &format!("{info}/0000:3b:00.0/information"),
        ],
        &[("CUDA_VISIBLE_DEVICES", "2")],
    );
    let r = json(&out);
    let reads = r["reads"].to_string();
    assert!(reads.contains("Device Minor"), "{reads}");
    assert!(reads.contains("No such file or directory"), "{reads}");
    // An index the node does not have: one line, nothing runs.
    let out = exec_in(
        fx,
        true,
        &["--nv"],
        p,
        "/bin/cuda_probe",
        &[("CUDA_VISIBLE_DEVICES", "4")],
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let e = err_line(&out);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("CUDA_VISIBLE_DEVICES entry 4: the node has 4 GPUs (indices 0-3)"),
        "{e}"
    );
}

/// Without --nv no NVIDIA file appears; "never" refuses --nv; "always" gives GPUs unasked.
#[test]
fn policy_modes() {
    let Some(fx) = need() else { return };
    let pol = policy(fx, "default.toml", "", "");
    let r = cuda_report(&exec_in(
        fx,
        true,
        &[],
        pol.to_str().unwrap(),
        "/bin/cuda_probe",
        &[],
    ));
    assert_eq!(r["libcuda"], "none");
    assert_eq!(r["dev_nvidia"], "");
    let never = policy(fx, "never.toml", "nvidia = \"never\"", "");
    let out = exec_in(
        fx,
        true,
        &["--nv"],
        never.to_str().unwrap(),
        "/bin/cuda_probe",
        &[],
    );
    assert!(!out.status.success());
    let e = err_line(&out);
    assert!(
        e.contains("--nv: NVIDIA GPUs are turned off on this system"),
        "{e}"
    );
    assert!(e.contains("never.toml:4 (gpu.nvidia)"), "{e}");
    let always = policy(fx, "always.toml", "nvidia = \"always\"", "");
    let r = cuda_report(&exec_in(
        fx,
        true,
        &[],
        always.to_str().unwrap(),
        "/bin/cuda_probe",
        &[],
    ));
    assert_eq!(r["driver_version"], "12020");
    // SLIPWAY_NV / APPTAINER_NV ask as --nv does.
    let r = cuda_report(&exec_in(
        fx,
        true,
        &[],
        pol.to_str().unwrap(),
        "/bin/cuda_probe",
        &[("APPTAINER_NV", "1")],
    ));
    assert_eq!(r["driver_version"], "12020");
}

/// A node without a driver: one line naming what is missing and the fix, nothing runs;
/// gpu.missing = "warn" goes on with a warning. A list naming a missing file fails the same
/// way; a list a user could write is refused for a root launch.
#[test]
fn missing_parts_fail_with_one_line() {
    let Some(fx) = need() else { return };
    let text = |dir: &Path, extra: &str| {
        format!(
            "[gpu]\ndevice_dir = \"{}\"\ndriver_info = \"{}\"\n{extra}\n",
            dir.display(),
            fx.info.display()
        )
    };
    let nodrv = fx.root.join("nodriver.toml");
    std::fs::write(&nodrv, text(&fx.nodriver_dev, "")).unwrap();
    let out = exec_in(
        fx,
        true,
        &["--nv"],
        nodrv.to_str().unwrap(),
        "/bin/cuda_probe",
        &[],
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let e = err_line(&out);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("no NVIDIA driver on this node (no nvidiactl in"),
        "{e}"
    );
    let warn = fx.root.join("warn.toml");
    std::fs::write(&warn, text(&fx.nodriver_dev, "missing = \"warn\"")).unwrap();
    let out = exec_in(
        fx,
        true,
        &["--nv"],
        warn.to_str().unwrap(),
        "/bin/cuda_probe",
        &[],
    );
    let r = cuda_report(&out);
    assert!(
        err_line(&out).contains("warning: --nv: no NVIDIA driver"),
        "{}",
        err_line(&out)
    );
    assert_eq!(
        r["dev_nvidia"],
        "nvidia0@195:0,nvidia1@195:1,nvidia2@195:2,nvidia3@195:3"
    );

    // A list with an absolute path the node lacks.
    let list = fx.root.join("nvliblist.conf");
    std::fs::write(
        &list,
        "libcuda.so\nnvidia-smi\n/etc/no-such-nvidia-file.json\n",
    )
    .unwrap();
    chmod(&list, 0o644);
    let p = fx.root.join("list.toml");
    std::fs::write(
        &p,
        text(&fx.dev, &format!("liblist = \"{}\"", list.display())),
    )
    .unwrap();
    let out = exec_in(
        fx,
        false,
        &["--nv"],
        p.to_str().unwrap(),
        "/bin/cuda_probe",
        &[],
    );
    let e = err_line(&out);
    assert!(!out.status.success());
    assert!(
        e.contains("/etc/no-such-nvidia-file.json: listed but missing on this node"),
        "{e}"
    );
    assert!(e.contains("nvliblist.conf:3"), "{e}");
    // The same list writable by others: a root launch does not trust it.
    chmod(&list, 0o666);
    let out = exec_in(
        fx,
        false,
        &["--nv"],
        p.to_str().unwrap(),
        "/bin/cuda_probe",
        &[],
    );
    chmod(&list, 0o644);
    let e = err_line(&out);
    assert!(!out.status.success());
    assert!(
        e.contains("writable by group and others") || e.contains("writable by others"),
        "{e}"
    );
}

/// Fabric devices are bound where they exist; their variables pass even with --cleanenv;
/// "never" leaves them out.
#[test]
fn fabric_devices_and_variables() {
    let Some(fx) = need() else { return };
    let pol = policy(fx, "fabric.toml", "", "");
    let out = exec_in(
        fx,
        true,
        &["--cleanenv"],
        pol.to_str().unwrap(),
        "/bin/probe",
        &[
            ("FI_PROVIDER", "psm2"),
            ("NCCL_DEBUG", "INFO"),
            ("OTHER_VAR", "x"),
        ],
    );
    let r = json(&out);
    let dev = r["dev"].to_string();
    assert!(dev.contains("hfi1_0"), "{dev}");
    let mounts: Vec<&str> = r["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["target"].as_str().unwrap())
        .collect();
    for t in [
        "/dev/infiniband/uverbs0",
        "/dev/infiniband/umad0",
        "/dev/infiniband/rdma_cm",
        "/dev/hfi1_0",
    ] {
        assert!(mounts.contains(&t), "{t} in {mounts:?}");
    }
    let env = &r["env"];
    assert_eq!(env["FI_PROVIDER"], "psm2", "{env}");
    assert_eq!(env["NCCL_DEBUG"], "INFO", "{env}");
    assert!(env.get("OTHER_VAR").is_none(), "{env}");
    let never = policy(
        fx,
        "fabric-never.toml",
        "",
        "infiniband = \"never\"\nomnipath = \"never\"",
    );
    let r = json(&exec_in(
        fx,
        true,
        &["--cleanenv"],
        never.to_str().unwrap(),
        "/bin/probe",
        &[("FI_PROVIDER", "psm2")],
    ));
    let mounts = r["mounts"].to_string();
    assert!(
        !mounts.contains("infiniband") && !mounts.contains("hfi1"),
        "{mounts}"
    );
    assert!(!r["env"].to_string().contains("FI_PROVIDER"));
}

/// `explain --nv` shows every device, library and variable with the rule behind it.
#[test]
fn explain_shows_devices_and_rules() {
    let Some(fx) = need() else { return };
    let pol = policy(fx, "explain.toml", "", "");
    let out = slipway(
        fx,
        true,
        &[
            "explain",
            "--nv",
            "--policy",
            pol.to_str().unwrap(),
            image(fx),
            "/bin/cuda_probe",
        ],
        &[("CUDA_VISIBLE_DEVICES", "0")],
    );
    assert!(out.status.success(), "{}", err_line(&out));
    let t = String::from_utf8_lossy(&out.stdout);
    for want in [
        "/dev/nvidia2 <- bind",
        "[--nv: CUDA_VISIBLE_DEVICES entry 0 = GPU 2 (0000:1a:00.0)]",
        "/.singularity.d/libs/libcuda.so.1 <- bind",
        "[built-in nvliblist.conf:",
        "set CUDA_VISIBLE_DEVICES=0 (gpu)",
        "append LD_LIBRARY_PATH+=:/.singularity.d/libs",
        "GPUs: CUDA_VISIBLE_DEVICES=0 (indices in the driver's order:",
        "/dev/infiniband/uverbs0 <- bind",
        "RLIMIT_MEMLOCK: kept",
    ] {
        assert!(t.contains(want), "{want:?} not in:\n{t}");
    }
    assert!(!t.contains("/dev/nvidia0 <-"), "{t}");
}

/// `--rocm`: /dev/kfd and the render nodes of the selected GPUs (ROCR_VISIBLE_DEVICES counts
/// KFD topology nodes, not minors), and the host's ROCm runtime (Debian's real
/// libhsa-runtime64 5.2, bound from the host's ld.so.cache into an image without ROCm) loads
/// and answers `hsa_init` (an error code here: the stand-in kfd has no driver behind it).
#[test]
fn rocm_gives_kfd_render_nodes_and_the_host_runtime() {
    let Some(fx) = need() else { return };
    if !Path::new(slipway_tests::HOST_LIBHSA).exists() {
        return skip("needs Debian's libhsa-runtime64-1 (tests/setup.sh installs it)");
    }
    let pol = policy(fx, "rocm.toml", "", "");
    let p = pol.to_str().unwrap();
    for user in [false, true] {
        let r = cuda_report(&slipway(
            fx,
            user,
            &[
                "exec",
                "--rocm",
                "--policy",
                p,
                image(fx),
                "/bin/rocm_probe",
            ],
            &[],
        ));
        assert_eq!(
            r["libhsa"], "/.singularity.d/libs/libhsa-runtime64.so.1",
            "{r:?}"
        );
        assert_ne!(r["hsa_init"], "0", "{r:?}");
        assert_eq!(r["kfd"], "240:0");
        assert_eq!(r["dev_dri"], "renderD128@226:128,renderD129@226:129");
        assert_eq!(r["rocr_visible"], "0,1");
    }
    let r = cuda_report(&exec_in(
        fx,
        true,
        &["--rocm"],
        p,
        "/bin/rocm_probe",
        &[("ROCR_VISIBLE_DEVICES", "0")],
    ));
    assert_eq!(r["dev_dri"], "renderD129@226:129", "{r:?}");
    assert_eq!(r["rocr_visible"], "0");
    // Nothing of it without --rocm; --rocm and --nv together give both.
    let r = cuda_report(&exec_in(fx, true, &[], p, "/bin/rocm_probe", &[]));
    assert_eq!((r["libhsa"].as_str(), r["kfd"].as_str()), ("none", "none"));
    let r = cuda_report(&exec_in(
        fx,
        true,
        &["--rocm", "--nv"],
        p,
        "/bin/cuda_probe",
        &[],
    ));
    assert_eq!(r["driver_version"], "12020");
    // gpu.amd = "never" refuses --rocm with one line.
    let never = policy(fx, "rocm-never.toml", "amd = \"never\"", "");
    let out = exec_in(
        fx,
        true,
        &["--rocm"],
        never.to_str().unwrap(),
        "/bin/rocm_probe",
        &[],
    );
    assert!(!out.status.success());
    assert!(
        err_line(&out).contains("--rocm: AMD GPUs are turned off on this system"),
        "{}",
        err_line(&out)
    );
}

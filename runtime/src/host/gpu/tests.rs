//! Discovery and selection against device nodes made with mknod (major 195, as the NVIDIA
//! driver's) and driver information files in the driver's format: they stand for a node with
//! four GPUs whose minors are not in PCI order.

use super::*;
use crate::host::gpu::{select, task_visible, wanted, Selection, Wanted};
use crate::host::gres::GresConf;
use std::ffi::CString;

/// A stand-in node: `/dev` with nvidia0-3 and nvidiactl, driver information with bus ids that
/// put minor 2 first. `None` (and SKIP) without root.
fn standin() -> Option<(tempfile::TempDir, NvidiaHost)> {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: mknod needs root");
        return None;
    }
    let t = tempfile::tempdir().unwrap();
    let dev = t.path().join("dev");
    std::fs::create_dir(&dev).unwrap();
    let mk = |name: &str, minor: u32| {
        let p = CString::new(dev.join(name).to_str().unwrap()).unwrap();
        let rc = unsafe {
            libc::mknod(
                p.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(NVIDIA_MAJOR, minor),
            )
        };
        assert_eq!(rc, 0, "mknod {name}");
    };
    for m in 0..4 {
        mk(&format!("nvidia{m}"), m);
    }
    mk("nvidiactl", 255);
    std::fs::write(dev.join("nvidia-notanode"), "").unwrap();
    let info = t.path().join("gpus");
    // PCI order: 0000:1a (minor 2), 0000:3b (minor 0), 0000:86 (minor 3), 0000:af (minor 1).
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
                "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 42\nGPU UUID: \t GPU-0000000{minor}-aaaa\n\
                 Video BIOS: \t 96.00.5e.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\n\
                 Bus Location: \t {bus}\nDevice Minor: \t {minor}\nGPU Excluded:\t No\n"
            ),
        )
        .unwrap();
    }
    let host = NvidiaHost::discover(&dev, &info);
    Some((t, host))
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn minors(s: &Selection) -> Vec<u32> {
    s.gpus.iter().map(|g| g.minor).collect()
}

#[test]
fn discovery_reads_nodes_control_and_pci_order() {
    let Some((_t, host)) = standin() else { return };
    assert_eq!(
        host.nodes.iter().map(|n| n.0).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    assert!(host.has_driver());
    let gpus = host.gpus.as_ref().unwrap();
    assert_eq!(
        gpus.iter().map(|g| g.minor).collect::<Vec<_>>(),
        [2, 0, 3, 1]
    );
    assert_eq!(gpus[0].uuid.as_deref(), Some("GPU-00000002-aaaa"));
    assert_eq!(gpus[0].model.as_deref(), Some("NVIDIA H100 80GB HBM3"));
}

#[test]
fn indices_are_pci_positions_not_minors() {
    let Some((_t, host)) = standin() else { return };
    let sel = |pairs: &[(&str, &str)]| {
        select(
            &host.inventory(),
            &wanted(&env(pairs), &VISIBLE_VARS),
            None,
            "n1",
        )
    };
    assert_eq!(minors(&sel(&[]).unwrap()), [2, 0, 3, 1]);
    assert_eq!(
        minors(&sel(&[("CUDA_VISIBLE_DEVICES", "0,3")]).unwrap()),
        [2, 1]
    );
    // NVIDIA_VISIBLE_DEVICES wins over CUDA_VISIBLE_DEVICES, as the toolkit reads it.
    let s = sel(&[
        ("CUDA_VISIBLE_DEVICES", "0"),
        ("NVIDIA_VISIBLE_DEVICES", "GPU-00000003-aaaa,1"),
    ])
    .unwrap();
    assert_eq!(minors(&s), [3, 0]);
    assert_eq!(s.visible(), "0,1");
    assert!(sel(&[("NVIDIA_VISIBLE_DEVICES", "none")])
        .unwrap()
        .gpus
        .is_empty());
    assert_eq!(
        minors(&sel(&[("NVIDIA_VISIBLE_DEVICES", "all")]).unwrap()).len(),
        4
    );
    let e = sel(&[("CUDA_VISIBLE_DEVICES", "4")]).unwrap_err();
    assert!(e.contains("the node has 4 GPUs (indices 0-3)"), "{e}");
    let e = sel(&[("CUDA_VISIBLE_DEVICES", "MIG-1")]).unwrap_err();
    assert!(e.contains("MIG devices are not supported yet"), "{e}");
}

#[test]
fn without_driver_information_indices_are_refused_not_guessed() {
    let Some((t, host)) = standin() else { return };
    let host = NvidiaHost::discover(&host.device_dir, &t.path().join("absent"));
    assert!(host.gpus.is_none());
    let all = select(&host.inventory(), &Wanted::All, None, "n1").unwrap();
    assert_eq!(minors(&all), [0, 1, 2, 3]);
    let e = select(
        &host.inventory(),
        &wanted(&env(&[("CUDA_VISIBLE_DEVICES", "1")]), &VISIBLE_VARS),
        None,
        "n1",
    )
    .unwrap_err();
    assert!(e.contains("cannot tell which device that is"), "{e}");
}

#[test]
fn slurm_indices_map_through_gres_conf_files() {
    let Some((t, host)) = standin() else { return };
    let d = host.device_dir.display().to_string();
    // gres.conf lists the files in an order of its own: index 0 is nvidia3.
    let conf = GresConf::parse(
        &format!("NodeName=n[1-2] Name=gpu File={d}/nvidia3\nNodeName=n[1-2] Name=gpu File={d}/nvidia[0-2]\n"),
        &t.path().join("gres.conf"),
    )
    .map_err(|e| e.to_string());
    let w = wanted(
        &env(&[
            ("SLURM_JOB_ID", "7"),
            ("SLURM_STEP_GPUS", "0,2"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
        ]),
        &VISIBLE_VARS,
    );
    let s = select(&host.inventory(), &w, Some(&conf), "n1").unwrap();
    assert_eq!(minors(&s), [3, 1]);
    assert!(
        s.gpus[0].why.contains("SLURM_STEP_GPUS index 0"),
        "{:?}",
        s.gpus[0]
    );
    assert_eq!(s.visible(), "0,1");
    let e = select(&host.inventory(), &w, Some(&conf), "n7").unwrap_err();
    assert!(e.contains("names no Name=gpu File= for node n7"), "{e}");
    let w = wanted(&env(&[("SLURM_STEP_GPUS", "5")]), &VISIBLE_VARS);
    let e = select(&host.inventory(), &w, Some(&conf), "n1").unwrap_err();
    assert!(e.contains("index 5, but"), "{e}");
    let e = select(
        &host.inventory(),
        &wanted(&env(&[("SLURM_JOB_ID", "7")]), &VISIBLE_VARS),
        Some(&conf),
        "n1",
    )
    .unwrap_err();
    assert!(e.contains("has no GPUs"), "{e}");
}

#[test]
fn information_files_parse() {
    let g = parse_information("0000:3B:00.0", "Device Minor: 7\nGPU UUID: GPU-x\n").unwrap();
    assert_eq!((g.minor, g.bus_id.as_str()), (7, "0000:3b:00.0"));
    assert!(parse_information("x", "Model: A100\n").is_none());
}

#[test]
fn task_subsets_map_to_container_positions() {
    assert_eq!(task_visible("1,3,4", "3").as_deref(), Some("1"));
    assert_eq!(task_visible("1,3,4", "4,1").as_deref(), Some("2,0"));
    assert_eq!(task_visible("1,3", "2"), None);
}

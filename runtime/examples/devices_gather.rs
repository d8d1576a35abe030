//! Times the `--nv` resolution in-process: `host::devices::gather` (ld.so.cache parse, driver
//! list, device and driver-information scan, GPU selection), as a launch does it once.
//!
//!     cargo run --release -p slipway-runtime --example devices_gather -- POLICY [RUNS] [nv|nonv]
//!
//! Prints the median and quartiles in microseconds (used by bench/gpu.sh).

use std::path::Path;
use std::time::Instant;

use slipway_runtime::host::devices;
use slipway_runtime::policy::LoadedPolicy;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let policy = LoadedPolicy::load(args.get(1).map(Path::new), false).expect("policy");
    let runs: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let nv = args.get(3).is_none_or(|s| s != "nonv");
    let env: Vec<(String, String)> = std::env::vars().collect();
    let node = devices::short_hostname();
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let asked = devices::Asked { nv, rocm: false };
        let d = devices::gather(&policy.policy, asked, &env, &node, true);
        times.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(d.nvidia.is_some(), nv);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let q = |f: f64| times[((times.len() - 1) as f64 * f) as usize];
    println!(
        "gather nv={nv}: median {:.1} us (q1 {:.1}, q3 {:.1}) over {runs} runs",
        q(0.5),
        q(0.25),
        q(0.75)
    );
}

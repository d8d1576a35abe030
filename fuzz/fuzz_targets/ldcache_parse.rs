//! Fuzz the loader-cache parser (the plugin reads `/etc/ld.so.cache` as root): any bytes must
//! parse or be refused with one line that names the file, never panic; what parses holds only
//! usable entries, and the host queries answer without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use slipway_runtime::host::ldcache::{LdCache, MAX_ENTRIES};

const NAME: &str = "fuzz.cache";

fuzz_target!(|data: &[u8]| {
    let cache = match LdCache::parse(data, Path::new(NAME)) {
        Ok(c) => c,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{NAME}:")), "{msg}");
            assert!(!msg.contains('\n'), "{msg:?}");
            return;
        }
    };
    assert!(cache.entries.len() + cache.skipped <= MAX_ENTRIES);
    for e in &cache.entries {
        assert!(!e.name.is_empty() && !e.name.contains('/'), "{e:?}");
        assert!(e.path.is_absolute(), "{e:?}");
    }
    let host = cache.for_host().count();
    assert!(host <= cache.entries.len());
    for prefix in ["", "lib", "libcuda.so", "libnvidia-ml.so.1"] {
        let found = cache.find_prefix(prefix);
        assert!(found.len() <= host);
        assert!(found.iter().all(|e| e.name.starts_with(prefix)));
    }
});

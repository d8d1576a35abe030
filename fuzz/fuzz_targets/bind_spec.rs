//! Fuzz the `--bind` list parser: any text must parse or be refused with one line that names
//! the spec, never panic; every parsed bind has both paths, and writing it back with escapes
//! parses to the same bind.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_runtime::plan::bind::{parse_list, BindSpec};

/// `SRC:DST[:ro]` with `\`, `,` and `:` escaped, as a user would write the bind.
fn write(b: &BindSpec) -> String {
    let esc = |p: &std::path::Path| {
        let mut s = String::new();
        for c in p.to_str().expect("parsed from UTF-8").chars() {
            if matches!(c, '\\' | ',' | ':') {
                s.push('\\');
            }
            s.push(c);
        }
        s
    };
    let opt = if b.readonly { ":ro" } else { "" };
    format!("{}:{}{opt}", esc(&b.src), esc(&b.dst))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_list(text) {
        Ok(binds) => {
            for b in &binds {
                assert!(!b.src.as_os_str().is_empty() && !b.dst.as_os_str().is_empty());
                let again = parse_list(&write(b)).unwrap_or_else(|e| panic!("{b:?}: {e}"));
                assert_eq!(again, vec![b.clone()], "{}", write(b));
            }
        }
        Err(e) => {
            assert!(e.starts_with("bind "), "{e}");
            assert!(!e.contains('\n'), "{e:?}");
        }
    }
});

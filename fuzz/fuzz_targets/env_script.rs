//! Fuzz the image environment-script parser: any text must parse without panicking (or
//! overflowing the stack), applying it must keep every variable within the kernel's limit
//! for one environment string, and what is printed of it must hold no control character.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use slipway_runtime::image::envfile::{parse, printable, MAX_ENV_STRING};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let script = parse("fuzz.sh", text);
    let lines = text.lines().count();
    let mut env: BTreeMap<String, String> = [("PATH", "/usr/bin:/bin"), ("A", "x")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Twice: values built from values (`A="$A$A"`) grow on the second pass.
    let mut late = script.apply(&mut env);
    late.extend(script.apply(&mut env));
    for (k, v) in &env {
        assert!(k.len() + v.len() + 2 <= MAX_ENV_STRING);
    }
    for l in script.leftovers.iter().chain(&late) {
        assert!(l.line <= lines + 1, "{l:?}");
        assert!(!printable(&l.text, 200).chars().any(char::is_control));
    }
});

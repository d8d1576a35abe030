//! Fuzz the policy parser: any text must load or be refused with one line that names the file,
//! never panic (nor overflow the stack on deep nesting); a policy that loads must answer every
//! decision without panicking, and its summary (`slipway policy check`) must load again as the
//! same policy.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use slipway_runtime::image::{Image, Span};
use slipway_runtime::policy::{Format, LoadedPolicy, User};

const NAME: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match LoadedPolicy::parse(text, Path::new(NAME)) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("{NAME}:")), "{msg}");
            assert!(!msg.contains('\n'), "{msg:?}");
            return;
        }
    };
    decide(&policy);
    let again = LoadedPolicy::parse(&policy.summary(), Path::new(NAME))
        .unwrap_or_else(|e| panic!("the summary does not load: {e}\n{}", policy.summary()));
    assert_eq!(again.policy, policy.policy, "{}", policy.summary());
});

/// Every public decision, with a few fixed inputs.
fn decide(policy: &LoadedPolicy) {
    let user = User {
        uid: 1000,
        name: "alice".into(),
    };
    for (path, format, uid, mode) in [
        ("/apps/containers/a.sif", Format::Sif, 0, 0o644),
        (
            "/home/alice/containers/b.sqsh",
            Format::Squashfs,
            1000,
            0o600,
        ),
        ("/scratch/x/containers/dir", Format::Dir, 1000, 0o777),
        ("/apps2/evil.sif", Format::Sif, 1, 0o666),
    ] {
        let image = Image {
            path: PathBuf::from(path),
            format,
            squashfs: (format != Format::Dir).then_some(Span {
                offset: 0,
                size: 4096,
            }),
            uid,
            gid: 0,
            mode,
        };
        if let Err(r) = policy.check_image(&image, &user) {
            assert!(!r.to_string().contains('\n'), "{r}");
        }
        let _ = policy.kernel_mount(&image);
    }
    for src in ["/", "/tmp", "/no/such/path", "/etc/../tmp"] {
        if let Err(r) = policy.check_user_bind(Path::new(src)) {
            assert!(!r.to_string().contains('\n'), "{r}");
        }
    }
    for name in ["PATH", "LD_PRELOAD", "SLURM_JOB_ID", "", "A*B"] {
        for cleanenv in [false, true] {
            let _ = policy.env_passes(name, cleanenv);
        }
    }
    let _ = policy.system_binds();
    for key in ["images.allowed", "mounts.system", "env.set", "nope"] {
        let _ = (policy.rule(key), policy.line(key));
    }
    for w in policy.warnings() {
        assert!(!w.contains('\n'), "{w:?}");
    }
}

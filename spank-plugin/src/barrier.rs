//! The panic barrier every SPANK callback runs behind: a plugin must never take srun or
//! slurmstepd down. An error becomes one logged line (`slipway: ...`) and -1; a panic is
//! caught, logged the same way and is -1; nothing unwinds into Slurm's C code.
//!
//! This only works with unwinding panics: the workspace must not build with `panic = "abort"`.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use crate::Error;

/// Runs `body` for the callback `hook`, logging failures through `log_error`; returns what
/// Slurm expects from a callback: 0 or -1.
pub fn run(
    hook: &str,
    log_error: impl Fn(&str),
    body: impl FnOnce() -> Result<(), Error>,
) -> c_int {
    // AssertUnwindSafe: what a panicking body leaves behind is the process state, whose
    // mutex is taken back (not poisoned) by `state::state`, and which `slurm_spank_exit` clears.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => 0,
        Ok(Err(Error::Reported)) => -1,
        Ok(Err(e)) => {
            log_error(&format!("slipway: {e}"));
            -1
        }
        Err(panic) => {
            let at = PANIC_AT
                .with(|p| p.borrow_mut().take())
                .map(|at| format!(" (at {at})"))
                .unwrap_or_default();
            log_error(&format!(
                "slipway: internal error in {hook}: {}{at}",
                panic_message(&*panic)
            ));
            -1
        }
    }
}

thread_local! {
    /// Where the last panic of this thread happened, for the barrier's message.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Replaces Rust's default panic hook, which would print a message (and, with
/// `RUST_BACKTRACE` in the job's environment, a backtrace) on the user's terminal, by one
/// that only notes where the panic happened; the barrier then logs one line. Called by every
/// callback of the plugin; the process is Slurm's, and this plugin is its only Rust code.
pub fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            PANIC_AT.with(|p| *p.borrow_mut() = at);
        }));
    });
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}

/// Debug builds only: panics when `SLIPWAY_SPANK_PANIC` (read by `getenv`) names `hook`, so
/// the cluster tests can check that a panic in a real srun or slurmstepd is contained.
pub fn fault_point(hook: &str, getenv: impl Fn(&str) -> Option<String>) {
    if cfg!(debug_assertions) && getenv("SLIPWAY_SPANK_PANIC").as_deref() == Some(hook) {
        panic!("injected panic (SLIPWAY_SPANK_PANIC={hook})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::OptionError;
    use crate::state::state;
    use std::cell::RefCell;

    fn logged(body: impl FnOnce() -> Result<(), Error>) -> (c_int, Vec<String>) {
        let log = RefCell::new(Vec::new());
        let rc = run("test_hook", |m| log.borrow_mut().push(m.to_string()), body);
        (rc, log.into_inner())
    }

    #[test]
    fn ok_is_zero_and_silent() {
        assert_eq!(logged(|| Ok(())), (0, vec![]));
    }

    #[test]
    fn an_error_is_one_line_and_minus_one() {
        let (rc, log) = logged(|| {
            Err(OptionError::Invalid {
                origin: "--container-writable=maybe".into(),
                reason: "expected a boolean".into(),
            }
            .into())
        });
        assert_eq!(rc, -1);
        assert_eq!(
            log,
            ["slipway: --container-writable=maybe: expected a boolean"]
        );
        assert_eq!(logged(|| Err(Error::Reported)), (-1, vec![]));
    }

    #[test]
    fn a_panic_is_caught_logged_and_leaves_the_state_usable() {
        let (rc, log) = logged(|| {
            let _guard = state();
            panic!("bug {}", 42);
        });
        assert_eq!(rc, -1);
        assert_eq!(log, ["slipway: internal error in test_hook: bug 42"]);
        // The next callback takes the state as usual.
        let (rc, _) = logged(|| {
            let _ = state().pending_error.is_some();
            Ok(())
        });
        assert_eq!(rc, 0);
    }

    #[test]
    fn fault_point_fires_only_for_its_hook() {
        let env = |_: &str| Some("user_init".to_string());
        fault_point("task_init_privileged", env);
        let (rc, log) = logged(|| {
            fault_point("user_init", env);
            Ok(())
        });
        assert_eq!(rc, -1);
        assert!(log[0].contains("injected panic"), "{log:?}");
    }
}

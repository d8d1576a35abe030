//! The symbols Slurm looks up: `plugin_name`, `plugin_type`, `plugin_version` and the
//! `slurm_spank_*` callbacks this plugin uses. Each callback dispatches on the SPANK context
//! to `local` or `remote`, behind [`crate::barrier`]: an error or a panic becomes a logged
//! message and -1, never an unwinding into (and an abort of) srun or slurmstepd.

use std::ffi::{c_char, c_int};

use crate::config::Config;
use crate::ffi::{self, spank_t, Context, Spank};
use crate::options::OPTIONS;
use crate::state::{reset, state};
use crate::{local, remote, Error};

/// The plugin's name, as Slurm prints it.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static plugin_name: [u8; 8] = *b"slipway\0";

/// What kind of plugin this is.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static plugin_type: [u8; 6] = *b"spank\0";

/// The Slurm version the plugin was built for: Slurm loads it only if major.minor match.
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static plugin_version: u32 = ffi::SLURM_VERSION_NUMBER;

/// Runs one callback behind the panic barrier, logging through `slurm_error`.
fn barrier(hook: &str, body: impl FnOnce() -> Result<(), Error>) -> c_int {
    crate::barrier::quiet_panics();
    crate::barrier::run(hook, ffi::log_error, body)
}

/// `slurm_spank_init`: read the plugin arguments; register the options where users give them;
/// in slurmd as it starts, remove image mounts that jobs' epilogs missed.
///
/// # Safety
/// Called by Slurm: `av` holds `ac` NUL-terminated plugin arguments.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init(sp: spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
    barrier("slurm_spank_init", || {
        // SAFETY: Slurm passes ac plugin arguments in av.
        let args = unsafe { ffi::args(ac, av) };
        let config = Config::from_args(args.iter().map(String::as_str))?;
        let mut st = state();
        if ffi::context() == Context::Remote {
            // slurmstepd, still root: the policy is read now, before Slurm takes the user's
            // identity for user_init (a 0600 policy file is readable), and once per step.
            st.policy = Some(crate::entry::load_policy(&config).map_err(|e| e.to_string()));
            st.spool_dir = remote::node_spool_dir(&config);
        }
        if ffi::context() == Context::Slurmd {
            // slurmd starting, before it takes requests.
            remote::slurmd_start(&config);
        }
        st.config = Some(config);
        drop(st);
        match ffi::context() {
            Context::Local | Context::Allocator | Context::Remote => {
                register_options(Spank::new(sp))
            }
            Context::Slurmd | Context::JobScript | Context::Unknown => Ok(()),
        }
    })
}

fn register_options(sp: Spank) -> Result<(), Error> {
    for (val, spec) in OPTIONS.iter().enumerate() {
        sp.register_option(spec, val as c_int, option_callback)
            .map_err(Error::Spank)?;
    }
    Ok(())
}

/// Slurm calls this with each `--container-*` option: on the local side as it parses the
/// command line, on the remote side with the forwarded values.
unsafe extern "C" fn option_callback(val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    barrier("option callback", || {
        // SAFETY: optarg is NULL or a C string for the duration of the call.
        let arg = unsafe { ffi::cstr(optarg) };
        if remote != 0 {
            remote::option(val, arg)
        } else {
            local::option(val, arg)
        }
    })
}

/// `slurm_spank_init_post_opt`: complete the request on the local side; start the container
/// early on the remote side.
#[no_mangle]
pub extern "C" fn slurm_spank_init_post_opt(
    sp: spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    barrier("slurm_spank_init_post_opt", || match ffi::context() {
        Context::Local | Context::Allocator => local::init_post_opt(Spank::new(sp)),
        Context::Remote => remote::init_post_opt(Spank::new(sp)),
        _ => Ok(()),
    })
}

/// `slurm_spank_user_init` (remote): record the request, prepare the container.
#[no_mangle]
pub extern "C" fn slurm_spank_user_init(sp: spank_t, _ac: c_int, _av: *mut *mut c_char) -> c_int {
    barrier("slurm_spank_user_init", || {
        remote::user_init(Spank::new(sp))
    })
}

/// `slurm_spank_task_init_privileged` (remote, each task): report or enter.
#[no_mangle]
pub extern "C" fn slurm_spank_task_init_privileged(
    sp: spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    barrier("slurm_spank_task_init_privileged", || {
        remote::task_init_privileged(Spank::new(sp))
    })
}

/// `slurm_spank_task_init` (remote, each task, as the user): the container working directory.
#[no_mangle]
pub extern "C" fn slurm_spank_task_init(sp: spank_t, _ac: c_int, _av: *mut *mut c_char) -> c_int {
    barrier("slurm_spank_task_init", || {
        remote::task_init(Spank::new(sp))
    })
}

/// `slurm_spank_job_epilog` (slurmd's epilog, root): remove the job's image mounts.
#[no_mangle]
pub extern "C" fn slurm_spank_job_epilog(sp: spank_t, _ac: c_int, _av: *mut *mut c_char) -> c_int {
    barrier("slurm_spank_job_epilog", || {
        remote::job_epilog(Spank::new(sp))
    })
}

/// `slurm_spank_exit`: forget the process's state.
#[no_mangle]
pub extern "C" fn slurm_spank_exit(_sp: spank_t, _ac: c_int, _av: *mut *mut c_char) -> c_int {
    barrier("slurm_spank_exit", || {
        if ffi::context() == Context::Remote {
            ffi::log_debug("slipway: step done");
        }
        reset();
        Ok(())
    })
}

//! The local side: srun (`S_CTX_LOCAL`), sbatch and salloc (`S_CTX_ALLOCATOR`). Option values
//! are checked as they are parsed, so a bad one stops srun before anything is allocated; the
//! request is completed from the environment after option parsing.

use crate::barrier::fault_point;
use crate::ffi::{self, Spank};
use crate::options::{self, build_request};
use crate::state::state;
use crate::Error;

/// An option callback on the local side: check the value, remember it.
pub fn option(val: i32, arg: Option<String>) -> Result<(), Error> {
    let spec = options::spec(val)?;
    let value = options::callback_value(spec, arg.as_deref(), false).unwrap_or_default();
    options::check_cli(spec, &value)?;
    state().cli.insert(spec.name, value);
    Ok(())
}

/// `slurm_spank_init_post_opt`: the request from the options, `SLIPWAY_CONTAINER_*` and Slurm's
/// own `--container` (`SLURM_CONTAINER`, readable here with getenv).
pub fn init_post_opt(_sp: Spank) -> Result<(), Error> {
    let mut st = state();
    fault_point("init_post_opt", |k| std::env::var(k).ok());
    let request = build_request(
        &st.cli,
        |k| std::env::var(k).ok(),
        std::env::var("SLURM_CONTAINER").ok(),
    )?;
    if request.wants_container() {
        ffi::log_verbose(&format!("slipway: requested {request:?}"));
    }
    st.request = Some(request);
    Ok(())
}

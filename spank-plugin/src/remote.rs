//! The remote side: slurmstepd (`S_CTX_REMOTE`), once per node and step.
//!
//! `user_init` builds the request from the forwarded options and the job's environment and
//! prepares the container ([`entry::prepare`]). It never fails: Slurm 22.05 turns a failed
//! `user_init` into "task launch failed: Slurmd could not execve job" with srun exiting 0
//! (cf. SchedMD bug 7573). Its errors are kept and reported from `task_init_privileged`,
//! whose messages reach srun's stderr and whose failure fails every task (srun exits 1)
//! without draining the node.

use crate::barrier::fault_point;
use std::time::Instant;

use slipway_runtime::policy::BatchMode;

use crate::early::{self, Early};
use crate::entry::{self, EntryError, EnvChange, StepInfo};
use crate::ffi::{self, Spank};
use crate::options::{self, build_request};
use crate::state::state;
use crate::Error;

/// An option callback on the remote side: remember the value. Checking waits for `user_init`,
/// where an error can be kept for the tasks to report.
pub fn option(val: i32, arg: Option<String>) -> Result<(), Error> {
    let spec = options::spec(val)?;
    if let Some(value) = options::callback_value(spec, arg.as_deref(), true) {
        state().cli.insert(spec.name, value);
    }
    Ok(())
}

/// `slurm_spank_init_post_opt` (root, once per node and step, before slurmstepd's own set-up
/// of the step): with `early=yes`, start building the step's container now, to be collected
/// by `user_init` ([`crate::early`]). Never fails: whatever goes wrong here is found again, and
/// reported, by `user_init`.
pub fn init_post_opt(sp: Spank) -> Result<(), Error> {
    let mut st = state();
    let mut step = sp.step_info();
    if !st.config.as_ref().is_some_and(|c| c.early) || !early::may_start(step.step_id) {
        return Ok(());
    }
    if early::pmix_expected(&step.env, ffi::mpi_default().as_deref()) {
        return Ok(());
    }
    let Some(cwd) = early::predicted_cwd(&step.env) else {
        return Ok(());
    };
    step.cwd = cwd;
    step.spool_dir = st.spool_dir.clone();
    let Ok(request) = build_request(&st.cli, |k| sp.getenv(k), sp.getenv("SLURM_CONTAINER")) else {
        return Ok(());
    };
    let Some(Ok(policy)) = &st.policy else {
        return Ok(());
    };
    let batch = request.batch.unwrap_or(policy.policy.slurm.batch);
    if !request.wants_container() || !step.runs_in_container(batch) {
        return Ok(());
    }
    step.slurm_conf = ffi::slurm_conf_facts();
    let config = st.config.clone().unwrap_or_default();
    let t = Instant::now();
    let plan = early::as_job_user(step.uid, step.gid, &step.groups, || {
        entry::build_plan(&request, policy, &step)
    });
    let plan_us = t.elapsed().as_micros();
    let started = match plan {
        Ok(Ok(plan)) => entry::start(plan, plan_us, &config, &step),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(entry::EntryError::Keeper(e)),
    };
    match started {
        Ok(pending) => st.early = Some(Early::new(pending, request, step)),
        // Found again, and reported, by user_init.
        Err(e) => ffi::log_debug(&format!("slipway: early start: {e}")),
    }
    Ok(())
}

/// `slurm_spank_user_init` (root, once per node and step): record the request and prepare
/// the container if one was asked for (collect the one started early, if it is the one).
pub fn user_init(sp: Spank) -> Result<(), Error> {
    let mut st = state();
    fault_point("user_init", |k| sp.getenv(k));
    let mut step = sp.step_info();
    step.spool_dir = st.spool_dir.clone();
    let request = match build_request(&st.cli, |k| sp.getenv(k), sp.getenv("SLURM_CONTAINER")) {
        Ok(r) => r,
        Err(e) => {
            keep_for_tasks(&mut st.pending_error, &step, e.to_string());
            return Ok(());
        }
    };
    // Where the batch script runs: the user's --container-batch, else the policy's.
    let batch = request.batch.unwrap_or(match &st.policy {
        Some(Ok(p)) => p.policy.slurm.batch,
        _ => BatchMode::Image,
    });
    if request.wants_container() && step.step_id == entry::BATCH_STEP {
        // Which way the batch step went, and why, for the admin (srun -v shows the request).
        let why = if request.batch.is_some() {
            "--container-batch"
        } else {
            "policy slurm.batch"
        };
        let place = match batch {
            BatchMode::Image => "in the image",
            BatchMode::Host => "on the node (its steps in the image)",
        };
        ffi::log_verbose(&format!(
            "slipway: job {} batch script {place} ({why})",
            step.job_id
        ));
    }
    if request.wants_container() && step.runs_in_container(batch) {
        // A few strings of slurmstepd's configuration: the plan decides whether the host's
        // Slurm client goes in.
        step.slurm_conf = ffi::slurm_conf_facts();
        ffi::log_verbose(&format!(
            "slipway: job {} step {} uid {}: requested {request:?}",
            step.job_id, step.step_id, step.uid
        ));
        let config = st.config.clone().unwrap_or_default();
        // Loaded as root by slurm_spank_init; needed once, for this step.
        let policy = match st.policy.take() {
            Some(Ok(p)) => p,
            other => {
                let e = other.map_or_else(
                    || "policy not loaded (slurm_spank_init did not run)".into(),
                    |r| r.err().unwrap_or_default(),
                );
                keep_for_tasks(&mut st.pending_error, &step, e);
                st.request = Some(request);
                return Ok(());
            }
        };
        let t = Instant::now();
        let early = st.early.take();
        let mut how = if early.is_some() { "early" } else { "here" };
        let result = match early {
            Some(e) => match e.mismatch(&request, &step) {
                None => e.pending.finish(&request, &step),
                Some(why) => {
                    how = "again";
                    ffi::log_verbose(&format!(
                        "slipway: job {} step {}: container started early not used: {why}",
                        step.job_id, step.step_id
                    ));
                    e.pending.cancel();
                    entry::prepare(&request, &config, &policy, &step)
                }
            },
            None => entry::prepare(&request, &config, &policy, &step),
        };
        match result {
            Ok(prepared) => {
                let waited = t.elapsed().as_micros();
                let ph = prepared.phases;
                let keeper = u128::from(ph.fork_us + ph.setup_us + ph.container_us);
                ffi::log_verbose(&format!(
                    "slipway-timing: job {} step {} prepare {} us (plan {} us, keeper {} us: \
                     fork {} us, setup {} us, container {} us; started {how}, user_init \
                     waited {waited} us)",
                    step.job_id,
                    step.step_id,
                    prepared.plan_us + keeper,
                    prepared.plan_us,
                    keeper,
                    ph.fork_us,
                    ph.setup_us,
                    ph.container_us,
                ));
                for w in prepared.warnings.iter().chain(&prepared.notes) {
                    ffi::log_verbose(&format!("slipway: {w}"));
                }
                // The container environment goes into the job's environment, which every
                // task of this node inherits when slurmstepd forks it: nothing left to do per
                // task (a forked task pays copy-on-write faults for every allocation).
                if let Err(e) = apply_env(sp, &prepared) {
                    keep_for_tasks(&mut st.pending_error, &step, e);
                }
                st.prepared = Some(prepared);
            }
            Err(e) => keep_for_tasks(&mut st.pending_error, &step, e.to_string()),
        }
    }
    st.request = Some(request);
    // Started early for a step that turned out not to want it here.
    if let Some(e) = st.early.take() {
        e.pending.cancel();
    }
    Ok(())
}

/// `slurm_spank_job_epilog` (root, in slurmd's namespace, on each node at the job's end): the
/// job's image mounts go ([`crate::jobmount`]). Never fails the epilog (a failed one drains
/// the node): what cannot be removed is logged.
pub fn job_epilog(sp: Spank) -> Result<(), Error> {
    let config = state().config.clone().unwrap_or_default();
    let job = sp.job_id();
    if let (Some(spool), true) = (node_spool_dir(&config), job != 0) {
        for problem in crate::jobmount::remove(&crate::jobmount::job_dir(&spool, job)) {
            ffi::log_error(&format!("slipway: job {job} epilog: {problem}"));
        }
    }
    Ok(())
}

/// This node's slurmd spool directory ([`entry::spool_dir`] with the daemon's configuration and
/// this host's name).
pub fn node_spool_dir(config: &crate::config::Config) -> Option<std::path::PathBuf> {
    entry::spool_dir(config, ffi::slurmd_spool_dir(), &ffi::short_hostname())
}

/// `slurm_spank_init` in slurmd, as it starts (root, before it takes requests): image mounts
/// of jobs whose epilog missed them go ([`crate::jobmount::sweep`]), noted in slurmd's log.
pub fn slurmd_start(config: &crate::config::Config) {
    if let Some(spool) = node_spool_dir(config) {
        for line in crate::jobmount::sweep(&spool) {
            ffi::log_error(&format!("slipway: slurmd start: {line}"));
        }
    }
}

/// Keeps an error for the tasks to report, noting it in the slurmd log (at verbose: the user
/// sees it once per node, from the tasks).
fn keep_for_tasks(pending: &mut Option<String>, step: &StepInfo, error: String) {
    ffi::log_verbose(&format!(
        "slipway: job {} step {}: {error}",
        step.job_id, step.step_id
    ));
    *pending = Some(error);
}

/// Sets the container environment in the job's environment (Slurm's and PMIx's variables
/// keep their host values).
fn apply_env(sp: Spank, prepared: &entry::Prepared) -> Result<(), String> {
    for change in prepared.task_env() {
        match change {
            EnvChange::Set(k, v) => sp.setenv(k, v)?,
            EnvChange::Unset(k) => sp.unsetenv(k),
        }
    }
    Ok(())
}

/// `slurm_spank_task_init_privileged` (root, in each task before it becomes the user): report
/// what `user_init` kept (once per node, from local task 0; every task fails), or enter the
/// prepared container.
pub fn task_init_privileged(sp: Spank) -> Result<(), Error> {
    let st = state();
    fault_point("task_init_privileged", |k| sp.getenv(k));
    if let Some(e) = &st.pending_error {
        return Err(match sp.task_id() {
            Some(0) | None => Error::Step(e.clone()),
            Some(_) => Error::Reported,
        });
    }
    if let Some(prepared) = &st.prepared {
        let task = sp.task_id().unwrap_or(0);
        let t = Instant::now();
        prepared
            .enter_task(task)
            .map_err(|e: EntryError| Error::Step(e.to_string()))?;
        // Nothing the task executes gains privileges: an empty bounding set and
        // no_new_privs, as `slipway exec` gives its command (Slurm then makes the task the
        // user, which clears the capabilities it still has as root).
        slipway_runtime::exec::drop_bounding_set()
            .and_then(|()| slipway_runtime::exec::set_no_new_privs())
            .map_err(|e| Error::Step(format!("task {task}: {e}")))?;
        ffi::log_verbose(&format!(
            "slipway-timing: task {task} join {} us",
            t.elapsed().as_micros()
        ));
        // What the image's environment scripts had that was not applied: shown once per
        // step, by its first task (every node has the same image).
        if !prepared.warnings.is_empty() && sp.global_task_id() == Some(0) {
            for w in &prepared.warnings {
                ffi::write_stderr(&format!("slipway: warning: {w}"));
            }
        }
    }
    Ok(())
}

/// `slurm_spank_task_init` (each task, as the user, after Slurm changed to the step's
/// working directory): `--container-workdir`, and the task's GPUs.
pub fn task_init(sp: Spank) -> Result<(), Error> {
    let st = state();
    // With --gpu-bind Slurm gives each task a subset of the step's GPUs and rewrites its
    // CUDA_VISIBLE_DEVICES (ROCR_VISIBLE_DEVICES) with host numbers; the container numbers
    // the step's GPUs from 0.
    if let Some((step_gpus, vars)) = st.prepared.as_ref().and_then(|p| p.gpus.as_ref()) {
        let task = sp.getenv("SLURM_STEP_GPUS").filter(|t| t != step_gpus);
        for (var, visible) in vars {
            let want = task
                .as_ref()
                .and_then(|t| slipway_runtime::host::gpu::task_visible(step_gpus, t))
                .unwrap_or_else(|| visible.clone());
            if sp.getenv(var).as_ref() != Some(&want) {
                sp.setenv(var, &want).map_err(Error::Spank)?;
            }
        }
    }
    if let Some(dir) = st.prepared.as_ref().and_then(|p| p.workdir()) {
        std::env::set_current_dir(dir).map_err(|e| {
            Error::Step(format!(
                "--container-workdir={}: cannot enter it in the container: {e}",
                dir.display()
            ))
        })?;
        let _ = sp.setenv("PWD", &dir.display().to_string());
    }
    Ok(())
}

//! Starting a child without forking the server. A confined child used to be started by
//! `fork`, then its limits and Landlock rules set in the copy, then `execve`: forking a
//! large multi-threaded server copies its page tables under its memory-map lock, and
//! with 300 commands arriving at once the server's own threads stalled behind that lock
//! (a burst of 300 CPU-bound commands took 2-3 s to start; issue 13).
//!
//! With [`super::Launch::Trampoline`] the server instead `posix_spawn`s a binary whose
//! `main` calls [`enter_if_invoked`] first (chopstick's does), under the name [`ARG0`]:
//! no copy of the server is made (the kernel's `vfork`-style clone). That small new
//! process confines *itself* exactly as the forked copy did (parent-death signal,
//! resource limits, Landlock) and then `execve`s the command, keeping its pid, so the
//! server's process group, priority and reaping work unchanged.
//!
//! The first thing it does is lower its own priority to `nice` (the child's starting
//! level, see [`super::priority`]): by then the server thread that started it is free
//! again (it only waits for this binary's own `execve`), and loading and confining
//! costs ~1.2 ms of CPU per child. At the server's priority, a burst of 300 such
//! start-ups competed with the server's runtime threads as equals and they read the
//! requests up to 3 s late (each deadline counts from then); at +10, 0.2 s at most.
//! The server still sets the same level once the child runs ([`super::priority`]).
//!
//! ```text
//!   argv:  ARG0  server-pid  nice  cpu-s  as-bytes  nofile  nproc  landlock(0|1)
//!          cell-dir  program  argv0  args...
//! ```
//!
//! If the trampoline cannot confine itself it writes why on its stderr (the reply's
//! stderr) and exits [`CONFINE_FAILED`]; if the program cannot be executed, 127, as a
//! shell would. It never runs the program unconfined.

use std::convert::Infallible;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use super::sandbox::{self, Limits};

/// The name the trampoline is started under: no command line of the binary's own
/// starts like that.
pub const ARG0: &str = "chopstick-exec-trampoline";

/// Exit status of a trampoline that could not confine itself.
pub const CONFINE_FAILED: i32 = 126;

/// Call first in `main` of a binary used as a [`super::Launch::Trampoline`]: if this
/// process was started as the trampoline, it confines itself and becomes the command
/// (never returns); otherwise it returns at once.
pub fn enter_if_invoked() {
    let mut args = std::env::args_os();
    if args.next().as_deref() != Some(ARG0.as_ref()) {
        return;
    }
    let args: Vec<OsString> = args.collect();
    let code = match run(&args) {
        Ok(never) => match never {},
        Err((code, why)) => {
            let _ = writeln!(std::io::stderr(), "chopstick exec: {why}");
            code
        }
    };
    std::process::exit(code);
}

/// The trampoline's argv after [`ARG0`], for `program` run with `argv` in `cell`.
pub(crate) fn args(
    nice: i32,
    limits: Limits,
    cpu_seconds: u64,
    landlock: bool,
    cell: &Path,
    program: &Path,
    argv: &[String],
) -> Vec<OsString> {
    let mut out: Vec<OsString> = [
        std::process::id().to_string(),
        nice.to_string(),
        cpu_seconds.to_string(),
        limits.address_space_bytes.to_string(),
        limits.open_files.to_string(),
        limits.processes.to_string(),
        u8::from(landlock).to_string(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    out.push(cell.into());
    out.push(program.into());
    out.extend(argv.iter().map(OsString::from));
    out
}

fn run(args: &[OsString]) -> Result<Infallible, (i32, String)> {
    let bad = |what: &str| (CONFINE_FAILED, format!("bad trampoline arguments: {what}"));
    let arg = |i: usize| args.get(i).and_then(|a| a.to_str());
    let number = |i: usize, what: &str| -> Result<u64, (i32, String)> {
        arg(i).and_then(|a| a.parse().ok()).ok_or_else(|| bad(what))
    };
    let server = number(0, "server pid")?;
    let nice: i32 = arg(1)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| bad("nice"))?;
    // Failure (a level above the inherited one, without privilege) leaves the level as
    // it is; the server sets it again anyway.
    // SAFETY: setpriority only reads its arguments; 0 is this process.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, nice);
    }
    let cpu = number(2, "cpu seconds")?;
    let limits = Limits {
        address_space_bytes: number(3, "address space")?,
        open_files: number(4, "open files")?,
        processes: number(5, "processes")?,
        ..Limits::default()
    };
    let landlock = number(6, "landlock")? == 1;
    let cell = PathBuf::from(args.get(7).ok_or_else(|| bad("cell"))?);
    let program = PathBuf::from(args.get(8).ok_or_else(|| bad("program"))?);
    let argv0 = args.get(9).ok_or_else(|| bad("argv0"))?;
    let failed = |e: std::io::Error| (CONFINE_FAILED, format!("cannot confine the command: {e}"));
    sandbox::confine_self(server, cpu, limits, landlock.then_some(cell.as_path()))
        .map_err(failed)?;
    let e = std::process::Command::new(&program)
        .arg0(argv0)
        .args(&args[10..])
        .exec();
    Err((127, format!("cannot run {}: {e}", program.display())))
}

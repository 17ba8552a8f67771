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
//! ```text
//!   argv:  ARG0  server-pid  cpu-s  as-bytes  nofile  nproc  landlock(0|1)  cell-dir
//!          program  argv0  args...
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
    limits: Limits,
    cpu_seconds: u64,
    landlock: bool,
    cell: &Path,
    program: &Path,
    argv: &[String],
) -> Vec<OsString> {
    let mut out: Vec<OsString> = [
        std::process::id().to_string(),
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
    let number = |i: usize, what: &str| -> Result<u64, (i32, String)> {
        args.get(i)
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| bad(what))
    };
    let server = number(0, "server pid")?;
    let cpu = number(1, "cpu seconds")?;
    let limits = Limits {
        address_space_bytes: number(2, "address space")?,
        open_files: number(3, "open files")?,
        processes: number(4, "processes")?,
        ..Limits::default()
    };
    let landlock = number(5, "landlock")? == 1;
    let cell = PathBuf::from(args.get(6).ok_or_else(|| bad("cell"))?);
    let program = PathBuf::from(args.get(7).ok_or_else(|| bad("program"))?);
    let argv0 = args.get(8).ok_or_else(|| bad("argv0"))?;
    let failed = |e: std::io::Error| (CONFINE_FAILED, format!("cannot confine the command: {e}"));
    sandbox::confine_self(server, cpu, limits, landlock.then_some(cell.as_path()))
        .map_err(failed)?;
    let e = std::process::Command::new(&program)
        .arg0(argv0)
        .args(&args[9..])
        .exec();
    Err((127, format!("cannot run {}: {e}", program.display())))
}

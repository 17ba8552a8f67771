//! The `chopstick` binary: everything is in [`cli`], which parses flags and calls the
//! library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

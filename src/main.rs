//! The `keygate` binary: parse arguments, run the command, turn the result
//! into an exit code (0 ok, 1 failure, 2 usage or configuration error).

use std::process::ExitCode;

use clap::Parser;

// mimalloc instead of the system allocator: the proxy allocates and frees a
// few dozen small objects per request (header maps, futures, buffers), and
// its thread-local free lists keep them off the shared arenas' locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = keygate::cli::Cli::parse();
    keygate::cli::run(args)
}

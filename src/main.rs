//! The `keygate` binary: parse arguments, run the command, turn the result
//! into an exit code (0 ok, 1 failure, 2 usage or configuration error).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = keygate::cli::Cli::parse();
    keygate::cli::run(args)
}

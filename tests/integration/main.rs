//! keygate's integration tests: one binary, one file per surface.
//! The binary is driven as a binary (`CARGO_BIN_EXE_keygate`) against real
//! SQLite files in temp dirs.

mod cli_check_config;
mod cli_keys;
mod support;

//! `genesis-sidecar`: see [`genesis_sidecar::cli`].

fn main() -> std::process::ExitCode {
    genesis_sidecar::cli::main_from(std::env::args_os())
}

//! `genesis-operator`: see [`genesis_operator::cli`].

fn main() -> std::process::ExitCode {
    genesis_operator::cli::main_from(std::env::args_os())
}

fn main() -> std::process::ExitCode {
    spindle_cli::main()
}

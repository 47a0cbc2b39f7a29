fn main() {
    std::process::exit(licensegate::cli::main());
}

#![forbid(unsafe_code)]

// mimalloc (built without transparent huge pages, which doubled idle RSS):
// hyper allocates a fresh read buffer per HTTP/1.1 message, and
// with glibc's allocator that showed up as a measurable share of each
// request (benches/load.sh, callgrind); mimalloc cuts it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(licensegate::cli::main());
}

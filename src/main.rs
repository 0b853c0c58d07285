//! The `rlay` binary: process-wide set-up, then the command line (`rlay::cli`).

use std::process::ExitCode;

/// mimalloc: per-thread free lists suit thousands of mostly idle host threads, and it returns
/// memory to the OS promptly (zlay found the allocator choice decisive for its footprint).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // No transparent huge pages for this process: the allocator asks for them, and with one
    // thread per host every thread's first allocation would pin a whole 2 MiB page (4 GB of RSS
    // at 2,750 hosts instead of a few hundred MB).
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!(
            "warning: could not opt out of transparent huge pages ({e}); memory use will be higher"
        );
    }
    rlay::cli::run()
}

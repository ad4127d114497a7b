//! The partnerplane operator binary; all wiring lives in [`partnerplane::cli`].

/// mimalloc returns freed memory to the system and fragments less than the
/// C library's per-thread arenas, which held about three times the live heap
/// of an operator watching thousands of tenants.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Reads FAILPOINTS; compiled out unless the `failpoints` feature is on.
    let _failpoints = fail::FailScenario::setup();
    partnerplane::cli::main()
}

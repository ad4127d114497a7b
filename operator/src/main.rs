//! The partnerplane operator binary; all wiring lives in [`partnerplane::cli`].

fn main() -> anyhow::Result<()> {
    // Reads FAILPOINTS; compiled out unless the `failpoints` feature is on.
    let _failpoints = fail::FailScenario::setup();
    partnerplane::cli::main()
}

//! The partnerplane operator binary; all wiring lives in [`partnerplane::cli`].

fn main() -> anyhow::Result<()> {
    // Reads FAILPOINTS; compiled out unless the `failpoints` feature is on.
    // A build without them refuses the variable rather than ignore it, so a
    // crash test can never pass against a binary that never pauses.
    #[cfg(not(feature = "failpoints"))]
    if std::env::var_os("FAILPOINTS").is_some() {
        anyhow::bail!(
            "FAILPOINTS is set, but this build has no fail points (feature `failpoints`)"
        );
    }
    let _failpoints = fail::FailScenario::setup();
    partnerplane::cli::main()
}

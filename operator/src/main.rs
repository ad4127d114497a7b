//! The partnerplane operator binary; all wiring lives in [`partnerplane::cli`].

fn main() -> anyhow::Result<()> {
    partnerplane::cli::main()
}

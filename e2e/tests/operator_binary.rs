//! The operator binary, run against the test bed, serves its endpoints and
//! stops cleanly on SIGTERM.

use partnerplane_e2e::{Operator, Testbed, unique_name};

#[tokio::test]
async fn serves_health_and_metrics_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    // `start` returns once /readyz answers 200.
    let operator = Operator::start(&testbed, &unique_name("binary"), &[]).await?;
    let body = operator.metrics().await?;
    assert!(body.contains("partnerplane_build_info"), "{body}");
    assert!(body.contains("partnerplane_tenants"), "{body}");
    assert!(
        operator.stop().await?,
        "the operator did not exit cleanly on SIGTERM"
    );
    Ok(())
}

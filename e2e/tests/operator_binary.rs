//! The operator binary, run against the test bed, serves its endpoints and
//! stops cleanly on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use partnerplane_e2e::{Testbed, free_port, operator_binary, wait_until};

#[tokio::test]
async fn serves_health_and_metrics_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let port = free_port()?;
    let mut child = tokio::process::Command::new(operator_binary()?)
        .args(["run", "--http-addr", &format!("127.0.0.1:{port}")])
        .envs(testbed.env())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    wait_until("/readyz to answer 200", Duration::from_secs(30), || {
        let request = http.get(format!("{base}/readyz")).send();
        async move { Ok(request.await?.status().is_success().then_some(())) }
    })
    .await?;
    let health = http.get(format!("{base}/healthz")).send().await?;
    assert!(health.status().is_success());
    let metrics = http.get(format!("{base}/metrics")).send().await?;
    assert!(metrics.status().is_success());
    let body = metrics.text().await?;
    assert!(body.contains("partnerplane_build_info"), "{body}");

    let pid = child.id().expect("running child has a pid");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await??;
    assert!(status.success(), "operator exited with {status}");
    Ok(())
}

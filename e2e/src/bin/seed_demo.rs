//! Seeds the demo's example pipelines with a realistic data set — written
//! with each tenant's own credentials, as its systems would — then asks for
//! a refresh, so a newcomer sees values, objectives and the worst partners
//! in `kubectl get mpl` and `kubectl describe mpl`. Sources that already
//! hold rows are left alone, so running it twice changes nothing.

use std::time::Duration;

use kube::api::{Api, ListParams};
use partnerplane::api::MetricPipeline;
use partnerplane_e2e::Testbed;
use partnerplane_e2e::pipelines::{self, is, refresh_now, tenant_session, wait_pipeline};

const ROWS_PER_SOURCE: usize = 2_000;
const DAYS: i64 = 180;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let demo = ListParams::default().labels("!partnerplane.io/shard");
    let list = Api::<MetricPipeline>::all(client.clone())
        .list(&demo)
        .await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    for (index, pipeline) in list.items.iter().enumerate() {
        let namespace = pipeline.metadata.namespace.clone().unwrap_or_default();
        let name = pipeline.metadata.name.clone().unwrap_or_default();
        wait_pipeline(
            &client,
            &namespace,
            &name,
            "Ready",
            Duration::from_secs(120),
            |p| is(p, "Ready", "True"),
        )
        .await?;
        let (session, _) = tenant_session(&testbed, &client, &namespace).await?;
        for (i, source) in pipeline.spec.sources.iter().enumerate() {
            let existing: i64 = session
                .query_one(
                    &format!("SELECT count(*) FROM \"{}\"", source.name.as_str()),
                    &[],
                )
                .await?
                .get(0);
            if existing > 0 {
                continue;
            }
            let rows =
                pipelines::generate(source, ROWS_PER_SOURCE, DAYS, now, (index * 16 + i) as u64);
            pipelines::insert(&session, source, &rows).await?;
            println!(
                "{namespace}/{name}: {} rows into {}",
                rows.len(),
                source.name.as_str()
            );
        }
        refresh_now(&client, &namespace, &name).await?;
    }
    Ok(())
}

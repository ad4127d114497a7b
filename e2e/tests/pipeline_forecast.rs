//! Forecasts over daily values: a partner trending towards its objective is
//! flagged with the day it crosses; flat and noisy partners are not; a new
//! partner is "not enough data".

use std::time::Duration;

use partnerplane_e2e::pipelines::apply;
use partnerplane_e2e::pipelines::{condition, is, refresh_now, tenant_session, wait_pipeline};
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{Operator, Testbed, unique_name, wait_condition};
use serde_json::json;

#[tokio::test]
async fn the_trend_towards_a_breach_is_flagged_and_noise_is_not() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-forecast"), &[]).await?;
    let tenant = unique_name("forecast");
    apply(
        &client,
        &[operator.tenant(
            &tenant,
            json!({"displayName": "Forecast", "tier": "Standard", "secrets": {"store": "Both"}}),
        )],
    )
    .await?;
    wait_condition(&client, &tenant, "Ready", "True", Duration::from_secs(90)).await?;
    let ns = format!("ptn-{tenant}");
    apply(&client, &[json!({
        "apiVersion": "partnerplane.io/v1alpha1", "kind": "MetricPipeline",
        "metadata": {"name": "response", "namespace": ns, "labels": {"partnerplane.io/shard": operator.shard}},
        "spec": {
            "refreshInterval": "1h",
            "sources": [{"name": "visits", "partnerColumn": "partner_id", "timeColumn": "at",
                "columns": [{"name": "partner_id", "type": "Text"}, {"name": "at", "type": "Timestamp"},
                            {"name": "response_hours", "type": "Numeric"}]}],
            "metrics": [{"name": "response_hours", "domain": "ServiceDelivery", "source": "visits",
                "aggregate": {"kind": "Average", "column": "response_hours"}, "window": "30d",
                "objective": {"comparison": "AtMost", "target": 24},
                "forecast": {"horizon": "14d", "historyDays": 28, "minPoints": 14, "minFit": 0.6}}]
        }
    })]).await?;
    wait_pipeline(
        &client,
        &ns,
        "response",
        "Ready",
        Duration::from_secs(90),
        |p| is(p, "Ready", "True"),
    )
    .await?;
    let (session, _) = tenant_session(&testbed, &client, &ns).await?;
    // Two visits a day just after midnight UTC; "drifting" rises 0.5 h a day,
    // stands at 20.25 h today, and so first exceeds 24 h in 8 days.
    let noise = [3.0, -4.0, 5.5, -2.0, 4.5, -5.0, 1.0, -3.5, 6.0, -1.0];
    let mut values = vec![];
    for days_ago in 0..28i64 {
        let drifting = 20.25 - 0.5 * days_ago as f64;
        let flat = 12.0 + if days_ago % 2 == 0 { 0.01 } else { -0.01 };
        let noisy = 15.0 + noise[days_ago as usize % noise.len()];
        for (partner, value) in [("drifting", drifting), ("flat", flat), ("noisy", noisy)] {
            values.push(format!("('{partner}', date_trunc('day', now()) - interval '{days_ago} days' + interval '1 minute', {value})"));
            values.push(format!("('{partner}', date_trunc('day', now()) - interval '{days_ago} days' + interval '2 minutes', {value})"));
        }
        if days_ago < 5 {
            values.push(format!("('newcomer', date_trunc('day', now()) - interval '{days_ago} days' + interval '1 minute', 30)"));
        }
    }
    session
        .batch_execute(&format!(
            "INSERT INTO visits (partner_id, at, response_hours) VALUES {}",
            values.join(", ")
        ))
        .await?;
    let p = refresh_now(&client, &ns, "response").await?;
    let metric = &p.status.as_ref().unwrap().metrics[0];
    let flagged: Vec<&str> = metric.at_risk.iter().map(|f| f.partner.as_str()).collect();
    assert_eq!(flagged, ["drifting"], "{:?}", metric.at_risk);
    let today: String = session
        .query_one(
            "SELECT to_char((now() AT TIME ZONE 'UTC')::date + 8, 'YYYY-MM-DD')",
            &[],
        )
        .await?
        .get(0);
    let forecast = &metric.at_risk[0];
    assert_eq!(forecast.breach_date, today, "{forecast:?}");
    assert!(forecast.fit > 0.99, "{forecast:?}");
    let note = metric.forecast_note.as_deref().unwrap_or_default();
    assert!(note.contains("not enough data"), "{note}");
    let objectives = condition(&p, "ObjectivesMet").unwrap();
    assert_eq!(
        (objectives.status.as_str(), objectives.reason.as_str()),
        ("True", "AtRisk"),
        "{}",
        objectives.message
    );
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}

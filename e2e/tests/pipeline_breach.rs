//! Breaches end to end: a transition into breach delivers exactly one
//! signed webhook per breach to a real HTTPS receiver (which verifies the
//! signature itself) and one Event; a receiver that fails twice gets the
//! same delivery id each time; a persisting breach sends nothing more;
//! recovery clears the condition and is delivered once; a receiver that
//! never answers holds up no refresh.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use partnerplane_e2e::events::{events_about, wait_event};
use partnerplane_e2e::pipelines::{
    apply, condition, is, refresh_now, tenant_session, visits_fix_rate, wait_pipeline,
};
use partnerplane_e2e::tenants::{delete_tenants, pg_admin};
use partnerplane_e2e::webhook_receiver::{Received, Receiver};
use partnerplane_e2e::{Operator, Testbed, unique_name, wait_condition, wait_until};
use serde_json::json;

/// Deliveries by `webhook-id`, in arrival order.
fn by_id(received: &[Received]) -> BTreeMap<String, Vec<Received>> {
    let mut out: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for r in received {
        out.entry(r.id.clone()).or_default().push(r.clone());
    }
    out
}

/// Waits until `n` distinct deliveries have each been answered 200.
async fn wait_delivered(
    receiver: &Receiver,
    n: usize,
) -> anyhow::Result<BTreeMap<String, Vec<Received>>> {
    wait_until(
        &format!("{n} deliveries answered 200"),
        Duration::from_secs(120),
        || async {
            let ids = by_id(&receiver.received());
            let done = ids
                .values()
                .filter(|attempts| attempts.iter().any(|a| a.status == 200))
                .count();
            Ok((done >= n).then_some(ids))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_delivers_one_signed_webhook_retried_under_one_id_and_recovery_once()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-breach"), &[]).await?;
    let tenant = unique_name("breach");
    let ns = format!("ptn-{tenant}");
    apply(
        &client,
        &[operator.tenant(
            &tenant,
            json!({"displayName": "Breach", "tier": "Standard", "secrets": {"store": "Both"}}),
        )],
    )
    .await?;
    wait_condition(&client, &tenant, "Ready", "True", Duration::from_secs(90)).await?;

    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(unique_name("k").repeat(2))
    );
    // Each of the first two deliveries fails twice, then succeeds.
    let receiver = Receiver::start(&secret, vec![503, 503, 503, 503]);
    let name = unique_name("fix-rate");
    apply(&client, &[
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook", "namespace": ns},
               "stringData": {"secret": secret}}),
        visits_fix_rate(&name, &ns, &operator.shard, json!([{"kind": "Event"}, {"kind": "Condition"},
                             {"kind": "Webhook", "url": receiver.url(), "signingSecret": {"secret": {"name": "hook", "key": "secret"}}}])),
    ]).await?;
    wait_pipeline(&client, &ns, &name, "Ready", Duration::from_secs(90), |p| {
        is(p, "Ready", "True")
    })
    .await?;
    let (session, schema) = tenant_session(&testbed, &client, &ns).await?;
    let outbox = |admin: tokio_postgres::Client| {
        let schema = schema.clone();
        async move {
            let n: i64 = admin
                .query_one(
                    "SELECT count(*)::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname LIKE '\\_pp\\_%\\_outbox'",
                    &[&schema],
                )
                .await?
                .get(0);
            anyhow::ensure!(n == 1, "one outbox table");
            let table: String = admin
                .query_one(
                    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relname LIKE '\\_pp\\_%\\_outbox'",
                    &[&schema],
                )
                .await?
                .get(0);
            let rows: i64 = admin
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await?
                .get(0);
            anyhow::Ok(rows)
        }
    };

    // Met: nothing is sent.
    session.batch_execute("INSERT INTO visits SELECT 'P1', now() - i * interval '1 hour', true FROM generate_series(1, 10) i").await?;
    let p = refresh_now(&client, &ns, &name).await?;
    assert_eq!(condition(&p, "ObjectivesMet").unwrap().status, "True");
    assert_eq!(outbox(pg_admin(&testbed).await?).await?, 0);

    // Into breach, over all partners and for P2: one delivery per breach,
    // retried under the same id while the receiver fails.
    session.batch_execute("INSERT INTO visits SELECT 'P2', now() - i * interval '1 hour', false FROM generate_series(1, 10) i").await?;
    let p = refresh_now(&client, &ns, &name).await?;
    let objectives = condition(&p, "ObjectivesMet").unwrap();
    assert_eq!(
        (objectives.status.as_str(), objectives.reason.as_str()),
        ("False", "Breached"),
        "{}",
        objectives.message
    );
    assert_eq!(
        outbox(pg_admin(&testbed).await?).await?,
        2,
        "a delivery for the metric and one for P2"
    );
    let delivered = wait_delivered(&receiver, 2).await?;
    assert_eq!(delivered.len(), 2, "{delivered:#?}");
    for (id, attempts) in &delivered {
        assert!(id.starts_with("msg_"), "{id}");
        assert!(
            attempts.iter().all(|a| a.verified),
            "every attempt is signed: {attempts:#?}"
        );
        assert!(
            attempts.iter().all(|a| a.body == attempts[0].body),
            "retries send the same bytes"
        );
        assert_eq!(
            attempts.iter().filter(|a| a.status == 200).count(),
            1,
            "{id} accepted once"
        );
        let body: serde_json::Value = serde_json::from_str(&attempts[0].body)?;
        assert_eq!(body["type"], "objective.breached", "{body}");
        assert_eq!(body["metric"], "first_time_fix");
    }
    for (id, attempts) in &delivered {
        let statuses: Vec<u16> = attempts.iter().map(|a| a.status).collect();
        assert_eq!(
            statuses,
            [503, 503, 200],
            "{id}: failed twice, then delivered under the same id"
        );
    }
    let partners: Vec<serde_json::Value> = delivered
        .values()
        .map(|a| serde_json::from_str::<serde_json::Value>(&a[0].body).unwrap()["partner"].clone())
        .collect();
    assert!(
        partners.contains(&json!("P2")) && partners.contains(&serde_json::Value::Null),
        "{partners:?}"
    );
    let event = wait_event(&client, &name, "ObjectiveBreached", Duration::from_secs(30)).await?;
    assert!(event.contains("first_time_fix"), "{event}");

    // A persisting breach sends nothing more.
    session
        .batch_execute("INSERT INTO visits VALUES ('P2', now() - interval '30 minutes', false)")
        .await?;
    refresh_now(&client, &ns, &name).await?;
    assert_eq!(
        outbox(pg_admin(&testbed).await?).await?,
        2,
        "no new delivery while the breach persists"
    );
    let breached_events = events_about(&client, &name)
        .await?
        .into_iter()
        .filter(|(r, _)| r == "ObjectiveBreached")
        .count();
    assert!(
        breached_events <= 2,
        "one Event per breach (metric and P2): {breached_events}"
    );

    // Recovery: the condition clears and each breach's recovery is sent once.
    session
        .batch_execute("UPDATE visits SET fixed = true WHERE partner_id = 'P2'")
        .await?;
    let p = refresh_now(&client, &ns, &name).await?;
    let objectives = condition(&p, "ObjectivesMet").unwrap();
    assert_eq!(
        (objectives.status.as_str(), objectives.reason.as_str()),
        ("True", "Met"),
        "{}",
        objectives.message
    );
    assert_eq!(outbox(pg_admin(&testbed).await?).await?, 4);
    let delivered = wait_delivered(&receiver, 4).await?;
    let recoveries: Vec<&Vec<Received>> = delivered
        .values()
        .filter(|a| a[0].body.contains("objective.recovered"))
        .collect();
    assert_eq!(recoveries.len(), 2, "{delivered:#?}");
    wait_event(
        &client,
        &name,
        "ObjectiveRecovered",
        Duration::from_secs(30),
    )
    .await?;
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}

/// A listener on 127.0.0.1 that accepts connections and never answers
/// (not even the TLS handshake); counts those accepted and those the
/// client has given up on (closed).
struct Unanswering {
    url: String,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Unanswering {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("https://127.0.0.1:{}/hook", listener.local_addr()?.port());
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, c) = (accepted.clone(), closed.clone());
        let server = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    // Reads what the client sends until it hangs up.
                    let mut sink = tokio::io::sink();
                    let _ = tokio::io::copy(&mut tcp, &mut sink).await;
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            url,
            accepted,
            closed,
            server,
        })
    }
}

impl Drop for Unanswering {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_holds_up_no_refresh() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-hung"), &[]).await?;
    let tenant = unique_name("hung");
    let ns = format!("ptn-{tenant}");
    apply(
        &client,
        &[operator.tenant(&tenant, json!({"displayName": "Hung", "tier": "Standard"}))],
    )
    .await?;
    wait_condition(&client, &tenant, "Ready", "True", Duration::from_secs(90)).await?;
    let receiver = Unanswering::start().await?;
    let name = unique_name("fix-rate");
    apply(&client, &[
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook", "namespace": ns},
               "stringData": {"secret": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="}}),
        visits_fix_rate(&name, &ns, &operator.shard, json!([{"kind": "Webhook", "url": receiver.url, "signingSecret": {"secret": {"name": "hook", "key": "secret"}}}])),
    ]).await?;
    wait_pipeline(&client, &ns, &name, "Ready", Duration::from_secs(90), |p| {
        is(p, "Ready", "True")
    })
    .await?;
    let (session, _) = tenant_session(&testbed, &client, &ns).await?;

    // Into breach: its deliveries go to a receiver that never answers, and
    // each attempt waits for the operator's webhook timeout (15 s).
    session.batch_execute("INSERT INTO visits SELECT 'P' || (i % 3), now() - i * interval '1 hour', false FROM generate_series(1, 12) i").await?;
    let p = refresh_now(&client, &ns, &name).await?;
    assert_eq!(condition(&p, "ObjectivesMet").unwrap().status, "False");
    wait_until(
        "a delivery to reach the receiver",
        Duration::from_secs(60),
        || async { Ok((receiver.accepted.load(Ordering::SeqCst) > 0).then_some(())) },
    )
    .await?;

    // The pipeline refreshes again while that delivery still hangs: it was
    // not waiting behind its own deliveries.
    session
        .batch_execute("INSERT INTO visits VALUES ('P1', now() - interval '5 minutes', true)")
        .await?;
    let p = refresh_now(&client, &ns, &name).await?;
    let given_up = receiver.closed.load(Ordering::SeqCst);
    assert_eq!(
        given_up, 0,
        "the refresh was answered only after {given_up} delivery attempt(s) timed out"
    );
    assert!(
        condition(&p, "Refreshed")
            .unwrap()
            .message
            .contains("from 1 changed row"),
        "{:?}",
        condition(&p, "Refreshed")
    );
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}

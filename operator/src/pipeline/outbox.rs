//! The pipeline's breach state and webhook outbox, in the tenant schema.
//! Breach transitions and their deliveries are written in the refresh's own
//! transaction, so a delivery exists exactly when its transition does.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::breach::{self, Evaluation, OpenBreach, Transition};
use super::sql::names::DerivedNames;
use super::sql::{PipelineKey, SqlError};
use crate::naming::quote_ident;

/// How long delivered and abandoned deliveries are kept.
const RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest error text kept per delivery.
const LAST_ERROR_MAX_CHARS: usize = 1024;

/// Waits before each retry (Standard Webhooks style): a delivery is
/// attempted once, then retried 12 times over about three days.
const RETRY_SCHEDULE: [Duration; 12] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(2 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(14 * 3600),
    Duration::from_secs(20 * 3600),
    Duration::from_secs(24 * 3600),
];

/// How long to wait after a delivery failed its `failed`-th attempt
/// (1-based); `None` once the schedule is exhausted.
pub fn retry_delay(failed: i32) -> Option<Duration> {
    let index = usize::try_from(failed.max(1) - 1).ok()?;
    RETRY_SCHEDULE.get(index).copied()
}

/// One pending webhook delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Deterministic `webhook-id`, the same on every attempt.
    pub id: String,
    pub url: String,
    /// The JSON body, fixed when the transition was recorded.
    pub body: String,
    pub attempts: i32,
}

/// Schema-qualified, quoted names of the two tables.
struct Tables {
    breaches: String,
    outbox: String,
}

impl Tables {
    fn new(schema: &str, key: &PipelineKey) -> Self {
        let names = DerivedNames::new(key);
        let qualify = |table: &str| format!("{}.{}", quote_ident(schema), quote_ident(table));
        Self {
            breaches: qualify(&names.breaches),
            outbox: qualify(&names.outbox),
        }
    }
}

async fn exists(tx: &Transaction<'_>, table: &str) -> Result<bool, SqlError> {
    let row = tx
        .query_typed_one(
            "SELECT to_regclass($1::text) IS NOT NULL",
            &[(&table, Type::TEXT)],
        )
        .await?;
    Ok(row.get(0))
}

/// Creates the breach and outbox tables where missing. Existing tables are
/// only looked up, so a refresh that changes nothing issues no DDL.
pub async fn ensure_tables(
    tx: &Transaction<'_>,
    schema: &str,
    key: &PipelineKey,
) -> Result<(), SqlError> {
    let t = Tables::new(schema, key);
    // Plain CREATE (no IF NOT EXISTS): a concurrent creator fails this
    // transaction, which is retried and then finds the tables.
    if !exists(tx, &t.breaches).await? {
        tx.batch_execute(&format!(
            "CREATE TABLE {} (
                metric text NOT NULL,
                partner text NOT NULL DEFAULT '',
                since timestamptz NOT NULL,
                value float8 NOT NULL,
                PRIMARY KEY (metric, partner)
            )",
            t.breaches
        ))
        .await?;
    }
    if !exists(tx, &t.outbox).await? {
        tx.batch_execute(&format!(
            "CREATE TABLE {table} (
                id text PRIMARY KEY,
                url text NOT NULL,
                body text NOT NULL,
                created_at timestamptz NOT NULL,
                next_attempt_at timestamptz NOT NULL,
                attempts integer NOT NULL DEFAULT 0,
                delivered_at timestamptz,
                given_up_at timestamptz,
                last_error text
            );
            CREATE INDEX ON {table} (next_attempt_at) WHERE delivered_at IS NULL AND given_up_at IS NULL",
            table = t.outbox
        ))
        .await?;
    }
    Ok(())
}

/// Records this refresh's breach transitions and, for each and each of
/// `urls`, a webhook delivery; returns the transitions. Also deletes
/// deliveries settled more than 30 days ago.
pub async fn record(
    tx: &Transaction<'_>,
    schema: &str,
    key: &PipelineKey,
    evaluations: &[Evaluation],
    urls: &[String],
    now: Timestamp,
) -> Result<Vec<Transition>, SqlError> {
    let t = Tables::new(schema, key);
    let now = breach::to_micros(now);
    let open: Vec<OpenBreach> = tx
        .query_typed(
            &format!("SELECT metric, partner, since, value FROM {}", t.breaches),
            &[],
        )
        .await?
        .iter()
        .map(|row| OpenBreach {
            metric: row.get(0),
            partner: partner_of(row.get(1)),
            since: from_sql(row.get(2)),
            value: row.get(3),
        })
        .collect();
    let changes = breach::transitions(
        &open,
        evaluations,
        now,
        &format!("{}/{}", key.namespace, key.name),
    );
    if !changes.transitions.is_empty() || !changes.dropped.is_empty() {
        let close = tx
            .prepare(&format!(
                "DELETE FROM {} WHERE metric = $1 AND partner = $2",
                t.breaches
            ))
            .await?;
        // A plain INSERT: should another refresh have opened the same breach
        // meanwhile, this transaction fails instead of announcing it twice.
        let open = tx
            .prepare(&format!(
                "INSERT INTO {} (metric, partner, since, value) VALUES ($1, $2, $3, $4)",
                t.breaches
            ))
            .await?;
        let enqueue = tx
            .prepare(&format!(
                "INSERT INTO {} (id, url, body, created_at, next_attempt_at, attempts)
                 VALUES ($1, $2, $3, $4, $4, 0) ON CONFLICT (id) DO NOTHING",
                t.outbox
            ))
            .await?;
        for dropped in &changes.dropped {
            tx.execute(
                &close,
                &[&dropped.metric, &partner_column(dropped.partner.as_deref())],
            )
            .await?;
        }
        let mut seen = BTreeSet::new();
        let urls: Vec<&String> = urls
            .iter()
            .filter(|url| seen.insert(url.as_str()))
            .collect();
        let created = SystemTime::from(now);
        for transition in &changes.transitions {
            let (metric, partner) = (transition.metric(), partner_column(transition.partner()));
            match transition {
                Transition::Breached { value, since, .. } => {
                    tx.execute(
                        &open,
                        &[&metric, &partner, &SystemTime::from(*since), value],
                    )
                    .await?;
                }
                Transition::Recovered { .. } => {
                    tx.execute(&close, &[&metric, &partner]).await?;
                }
            }
            let payload = body(key, transition, now);
            for url in &urls {
                let id = outbox_id(transition.delivery_id(), url);
                tx.execute(&enqueue, &[&id, url, &payload, &created])
                    .await?;
            }
        }
    }
    if let Some(cutoff) = SystemTime::from(now).checked_sub(RETENTION) {
        tx.query_typed(
            &format!(
                "DELETE FROM {} WHERE coalesce(delivered_at, given_up_at) < $1",
                t.outbox
            ),
            &[(&cutoff, Type::TIMESTAMPTZ)],
        )
        .await?;
    }
    Ok(changes.transitions)
}

/// Deliveries due at `now`, oldest first. None before the first refresh
/// has created the outbox.
pub async fn due(
    tx: &Transaction<'_>,
    schema: &str,
    key: &PipelineKey,
    now: Timestamp,
    limit: i64,
) -> Result<Vec<Delivery>, SqlError> {
    let t = Tables::new(schema, key);
    if !exists(tx, &t.outbox).await? {
        return Ok(vec![]);
    }
    let rows = tx
        .query(
            &format!(
                "SELECT id, url, body, attempts FROM {}
                 WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= $1
                 ORDER BY created_at, id LIMIT $2",
                t.outbox
            ),
            &[&SystemTime::from(now), &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Delivery {
            id: row.get(0),
            url: row.get(1),
            body: row.get(2),
            attempts: row.get(3),
        })
        .collect())
}

pub async fn mark_delivered(
    tx: &Transaction<'_>,
    schema: &str,
    key: &PipelineKey,
    id: &str,
    now: Timestamp,
) -> Result<(), SqlError> {
    let t = Tables::new(schema, key);
    tx.execute(
        &format!(
            "UPDATE {} SET delivered_at = $2, given_up_at = NULL, attempts = attempts + 1
             WHERE id = $1 AND delivered_at IS NULL",
            t.outbox
        ),
        &[&id, &SystemTime::from(now)],
    )
    .await?;
    Ok(())
}

/// Records a failed attempt; returns whether the delivery was given up.
pub async fn mark_failed(
    tx: &Transaction<'_>,
    schema: &str,
    key: &PipelineKey,
    delivery: &Delivery,
    message: &str,
    retryable: bool,
    now: Timestamp,
) -> Result<bool, SqlError> {
    let t = Tables::new(schema, key);
    // The stored count, not the one read before sending, decides the wait.
    let Some(row) = tx
        .query_opt(
            &format!(
                "SELECT attempts FROM {} WHERE id = $1 AND delivered_at IS NULL AND given_up_at IS NULL FOR UPDATE",
                t.outbox
            ),
            &[&delivery.id],
        )
        .await?
    else {
        return Ok(false);
    };
    let failed = row.get::<_, i32>(0).saturating_add(1);
    let error: String = message.chars().take(LAST_ERROR_MAX_CHARS).collect();
    let now = SystemTime::from(now);
    let retry_at = retryable
        .then(|| retry_delay(failed))
        .flatten()
        .and_then(|wait| now.checked_add(wait));
    match retry_at {
        Some(at) => {
            tx.execute(
                &format!(
                    "UPDATE {} SET attempts = $2, next_attempt_at = $3, last_error = $4 WHERE id = $1",
                    t.outbox
                ),
                &[&delivery.id, &failed, &at, &error],
            )
            .await?;
            Ok(false)
        }
        None => {
            tx.execute(
                &format!(
                    "UPDATE {} SET attempts = $2, given_up_at = $3, last_error = $4 WHERE id = $1",
                    t.outbox
                ),
                &[&delivery.id, &failed, &now, &error],
            )
            .await?;
            Ok(true)
        }
    }
}

/// When the earliest pending delivery is next attempted.
pub async fn next_attempt(
    tx: &Transaction<'_>,
    schema: &str,
    key: &PipelineKey,
) -> Result<Option<Timestamp>, SqlError> {
    let t = Tables::new(schema, key);
    if !exists(tx, &t.outbox).await? {
        return Ok(None);
    }
    let row = tx
        .query_typed_one(&format!(
                "SELECT min(next_attempt_at) FROM {} WHERE delivered_at IS NULL AND given_up_at IS NULL",
                t.outbox
            ), &[])
        .await?;
    Ok(row.get::<_, Option<SystemTime>>(0).map(from_sql))
}

pub async fn drop_tables(
    tx: &Transaction<'_>,
    schema: &str,
    key: &PipelineKey,
) -> Result<(), SqlError> {
    let t = Tables::new(schema, key);
    tx.batch_execute(&format!(
        "DROP TABLE IF EXISTS {}, {}",
        t.breaches, t.outbox
    ))
    .await?;
    Ok(())
}

/// The id of one transition's delivery to one URL: each webhook gets its
/// own, as deterministic as the transition's.
pub fn outbox_id(delivery_id: &str, url: &str) -> String {
    let material = json!([delivery_id, url]).to_string();
    let digest = Sha256::digest(material.as_bytes());
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// The webhook body of a transition, fixed once so every attempt sends the
/// same bytes (and the same signature input).
pub fn body(key: &PipelineKey, transition: &Transition, now: Timestamp) -> String {
    json!({
        "type": transition.event_type(),
        "timestamp": now.to_string(),
        "pipeline": {"namespace": key.namespace, "name": key.name},
        "metric": transition.metric(),
        "partner": transition.partner(),
        "value": transition.value(),
        "since": transition.since().to_string(),
    })
    .to_string()
}

/// The stored partner: `''` stands for all partners.
fn partner_column(partner: Option<&str>) -> &str {
    partner.unwrap_or("")
}

fn partner_of(column: String) -> Option<String> {
    (!column.is_empty()).then_some(column)
}

/// A stored time; `timestamptz` reaches beyond jiff's range only at
/// `±infinity`, which saturate.
fn from_sql(at: SystemTime) -> Timestamp {
    Timestamp::try_from(at).unwrap_or(if at > SystemTime::UNIX_EPOCH {
        Timestamp::MAX
    } else {
        Timestamp::MIN
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PipelineKey {
        PipelineKey {
            namespace: "ptn-acme".into(),
            name: "response".into(),
            uid: "u".into(),
        }
    }

    #[test]
    fn retries_follow_the_schedule_then_stop() {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(retry_delay(1), Some(Duration::from_secs(5)));
        assert_eq!(retry_delay(2), Some(Duration::from_secs(30)));
        assert_eq!(retry_delay(3), Some(minutes(2)));
        assert_eq!(retry_delay(6), Some(minutes(60)));
        assert_eq!(retry_delay(12), Some(minutes(24 * 60)));
        assert_eq!(retry_delay(13), None);
        assert_eq!(retry_delay(0), Some(Duration::from_secs(5)));
        let total: Duration = (1..=12).filter_map(retry_delay).sum();
        assert!(
            total > minutes(3 * 24 * 60) && total < minutes(4 * 24 * 60),
            "{total:?}"
        );
    }

    #[test]
    fn every_webhook_gets_its_own_stable_id() {
        let a = outbox_id("msg_0123", "https://a.example/hook");
        assert_eq!(a, outbox_id("msg_0123", "https://a.example/hook"));
        assert_ne!(a, outbox_id("msg_0123", "https://b.example/hook"));
        assert_ne!(a, outbox_id("msg_4567", "https://a.example/hook"));
        assert!(a.starts_with("msg_") && a.len() == 36, "{a}");
    }

    #[test]
    fn bodies_carry_the_transition() {
        let since = Timestamp::from_second(1_700_000_000).unwrap();
        let now = Timestamp::from_second(1_700_003_600).unwrap();
        let breached = Transition::Breached {
            metric: "response_hours".into(),
            partner: None,
            value: 30.5,
            since,
            delivery_id: "msg_x".into(),
        };
        let sent: serde_json::Value = serde_json::from_str(&body(&key(), &breached, now)).unwrap();
        assert_eq!(
            sent,
            json!({
                "type": "objective.breached",
                "timestamp": "2023-11-14T23:13:20Z",
                "pipeline": {"namespace": "ptn-acme", "name": "response"},
                "metric": "response_hours",
                "partner": null,
                "value": 30.5,
                "since": "2023-11-14T22:13:20Z",
            })
        );
        let recovered = Transition::Recovered {
            metric: "response_hours".into(),
            partner: Some("p1".into()),
            value: 20.0,
            since,
            delivery_id: "msg_y".into(),
        };
        let sent: serde_json::Value = serde_json::from_str(&body(&key(), &recovered, now)).unwrap();
        assert_eq!(
            (sent["type"].as_str(), sent["partner"].as_str()),
            (Some("objective.recovered"), Some("p1"))
        );
    }

    #[test]
    fn all_partners_are_stored_as_the_empty_partner() {
        assert_eq!(partner_column(None), "");
        assert_eq!(partner_of(String::new()), None);
        assert_eq!(partner_of("p".into()).as_deref(), Some("p"));
    }

    #[test]
    fn stored_times_convert_both_ways() {
        let at = Timestamp::new(1_700_000_000, 123_456_000).unwrap();
        assert_eq!(from_sql(SystemTime::from(at)), at);
    }
}

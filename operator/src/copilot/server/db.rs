//! The tenant database as the copilot uses it: a small pool with the
//! tenant's own credentials, whose every connection has `search_path` set
//! to the tenant schema (when created and whenever taken from the pool),
//! and the statements on the copilot's tables, all schema-qualified.

use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::Serialize;
use tokio_postgres::error::SqlState;

use super::model::vector_text;
use super::secrets::DbCredentials;
use crate::backends::postgres::tls;
use crate::copilot::server_config::ServerConfig;
use crate::naming::quote_ident;

/// `to_char` pattern of an RFC 3339 time in UTC.
const RFC3339: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

/// Result rows read per metric table.
const METRIC_ROWS: i64 = 20;

/// A chunk retrieval returned.
#[derive(Debug, Clone)]
pub struct Retrieved {
    pub id: i64,
    pub source: String,
    pub document: String,
    pub chunk: i32,
    pub content: String,
    pub distance: f64,
}

/// The latest value of a metric.
#[derive(Debug, Clone)]
pub struct MetricRow {
    /// The result table's name, without its schema.
    pub table: String,
    pub metric: String,
    pub value: Option<f64>,
    pub samples: i64,
    pub refreshed_at: String,
}

/// A row of the approvals table.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Approval {
    pub id: i64,
    pub requested_at: String,
    pub action: String,
    pub request: String,
    pub partner: Option<String>,
    pub status: String,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
    pub note: Option<String>,
}

/// One row of the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    pub kind: &'static str,
    pub prompt: String,
    pub response: String,
    pub citations: Vec<i64>,
    pub confidence: Option<f64>,
    pub outcome: &'static str,
    pub tokens: i64,
}

/// What deciding an approval came to.
pub enum Decided {
    Changed(Approval),
    NotFound,
    AlreadyDecided(String),
}

/// The copilot's tables in the tenant schema.
pub struct Db {
    pool: Pool,
    knowledge: String,
    retrieve: String,
    audit: String,
    approvals: String,
    /// Result tables of the tenant's MetricPipelines: (qualified, name).
    metric_tables: Vec<(String, String)>,
    model: String,
    audit_enabled: bool,
}

fn ssl_mode(mode: Option<&str>) -> anyhow::Result<tls::SslMode> {
    Ok(match mode.unwrap_or("prefer") {
        "disable" => tls::SslMode::Disable,
        "prefer" => tls::SslMode::Prefer,
        "require" => tls::SslMode::Require,
        "verify-ca" => tls::SslMode::VerifyCa,
        "verify-full" => tls::SslMode::VerifyFull,
        other => anyhow::bail!(
            "PGSSLMODE={other} is not supported (use disable, prefer, require, verify-ca or verify-full)"
        ),
    })
}

/// `schema.table` (either part possibly double-quoted) as (schema, table).
pub fn split_qualified(name: &str) -> Option<(String, String)> {
    fn part(text: &str) -> Option<(String, &str)> {
        if let Some(rest) = text.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = rest.char_indices().peekable();
            while let Some((i, c)) = chars.next() {
                if c == '"' {
                    if chars.peek().map(|(_, n)| *n) == Some('"') {
                        chars.next();
                        out.push('"');
                    } else {
                        return Some((out, &rest[i + 1..]));
                    }
                } else {
                    out.push(c);
                }
            }
            None
        } else {
            let end = text.find('.').unwrap_or(text.len());
            Some((text[..end].to_string(), &text[end..]))
        }
    }
    let (schema, rest) = part(name.trim())?;
    let (table, rest) = part(rest.strip_prefix('.')?)?;
    (rest.is_empty() && !schema.is_empty() && !table.is_empty()).then_some((schema, table))
}

impl Db {
    /// A pool of at most `max` connections as the tenant; connecting and
    /// waiting for a connection each give up after `timeout`.
    pub fn new(
        config: &ServerConfig,
        credentials: &DbCredentials,
        max: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let db = &config.database;
        let schema = quote_ident(&db.schema);
        let qualified = |name: &str| format!("{schema}.{}", quote_ident(name));

        let mode = ssl_mode(credentials.sslmode.as_deref())?;
        let root_cert = std::env::var("PGSSLROOTCERT")
            .ok()
            .filter(|p| !p.is_empty());
        let plan = tls::plan(mode, root_cert.is_some())?;
        if let Some(warning) = plan.warning {
            tracing::warn!("{warning}");
        }
        let roots = match &root_cert {
            Some(path) => tls::roots(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("reading PGSSLROOTCERT {path}"))?,
            )?,
            None => rustls::RootCertStore::empty(),
        };
        let mut pg = tokio_postgres::Config::new();
        pg.host(&credentials.host)
            .port(credentials.port)
            .dbname(&credentials.dbname)
            .user(&credentials.user)
            .password(&credentials.password)
            .application_name("partnerplane-copilot")
            .connect_timeout(timeout)
            .ssl_mode(plan.mode);
        let set_path = format!("SET search_path = {schema}");
        let manager = Manager::from_config(
            pg,
            tls::connector(plan.verify, roots)?,
            ManagerConfig {
                // Run on every connection taken from the pool.
                recycling_method: RecyclingMethod::Custom(set_path.clone()),
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .post_create(Hook::async_fn(move |client, _| {
                let sql = set_path.clone();
                Box::pin(
                    async move { client.batch_execute(&sql).await.map_err(HookError::Backend) },
                )
            }))
            .build()?;

        let mut metric_tables = vec![];
        for name in &config.metric_result_tables {
            match split_qualified(name) {
                Some((s, table)) if s == db.schema => {
                    metric_tables.push((qualified(&table), table));
                }
                _ => tracing::warn!(
                    table = %name,
                    "ignoring a metric result table outside the tenant schema"
                ),
            }
        }
        Ok(Self {
            pool,
            knowledge: qualified(&db.knowledge_table),
            retrieve: qualified(&db.retrieve_function),
            audit: qualified(&db.audit_table),
            approvals: qualified(&db.approvals_table),
            metric_tables,
            model: config.model.name.clone(),
            audit_enabled: config.guardrails.audit_enabled,
        })
    }

    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .context("connecting to the tenant database")
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// The `k` nearest chunks of approved sources.
    pub async fn retrieve(&self, query: &[f32], k: i32) -> anyhow::Result<Vec<Retrieved>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, source, document, chunk, content, distance \
                     FROM {}($1::text::extensions.vector, $2::int)",
                    self.retrieve
                ),
                &[&vector_text(query), &k],
            )
            .await
            .context("retrieving chunks")?;
        Ok(rows
            .into_iter()
            .map(|r| Retrieved {
                id: r.get(0),
                source: r.get(1),
                document: r.get(2),
                chunk: r.get(3),
                content: r.get(4),
                distance: r.get(5),
            })
            .collect())
    }

    /// The latest value of each metric for `partner` (over all partners
    /// when `None`), not split by dimensions. A table the pipeline has not
    /// made yet, or that the tenant may not read, is skipped.
    pub async fn metric_rows(&self, partner: Option<&str>) -> anyhow::Result<Vec<MetricRow>> {
        let client = self.client().await?;
        let mut out = vec![];
        for (qualified, table) in &self.metric_tables {
            let result = client
                .query(
                    &format!(
                        "SELECT DISTINCT ON (metric) metric, value, samples, \
                         to_char(refreshed_at AT TIME ZONE 'UTC', {RFC3339}) \
                         FROM {qualified} \
                         WHERE partner IS NOT DISTINCT FROM $1::text AND dimensions = '{{}}'::jsonb \
                         ORDER BY metric, refreshed_at DESC LIMIT $2"
                    ),
                    &[&partner, &METRIC_ROWS],
                )
                .await;
            match result {
                Ok(rows) => out.extend(rows.into_iter().map(|r| MetricRow {
                    table: table.clone(),
                    metric: r.get(0),
                    value: r.get(1),
                    samples: r.get(2),
                    refreshed_at: r.get(3),
                })),
                Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => {
                    tracing::debug!(table = %table, "metric result table not there yet");
                }
                Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                    tracing::warn!(table = %table, "the tenant may not read this metric result table; skipped");
                }
                Err(e) => return Err(e).with_context(|| format!("reading metric results {table}")),
            }
        }
        Ok(out)
    }

    async fn audit_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        record: &AuditRecord,
    ) -> anyhow::Result<()> {
        if !self.audit_enabled {
            return Ok(());
        }
        tx.execute(
            &format!(
                "INSERT INTO {} (kind, prompt, response, citations, confidence, outcome, model, tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                self.audit
            ),
            &[
                &record.kind,
                &record.prompt,
                &record.response,
                &record.citations,
                &record.confidence,
                &record.outcome,
                &self.model,
                &(record.tokens.clamp(0, i32::MAX as i64) as i32),
            ],
        )
        .await
        .context("writing the audit record")?;
        Ok(())
    }

    /// Records one exchange in the audit log (when auditing is on).
    pub async fn audit(&self, record: &AuditRecord) -> anyhow::Result<()> {
        if !self.audit_enabled {
            return Ok(());
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        self.audit_in(&tx, record).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the chunks of `document` in `source` and audits it, in one transaction.
    pub async fn replace_document(
        &self,
        source: &str,
        document: &str,
        chunks: &[String],
        embeddings: &[Vec<f32>],
        record: &AuditRecord,
    ) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            &format!(
                "DELETE FROM {} WHERE source = $1 AND document = $2",
                self.knowledge
            ),
            &[&source, &document],
        )
        .await
        .context("removing the document's earlier chunks")?;
        let insert = tx
            .prepare(&format!(
                "INSERT INTO {} (source, document, chunk, content, embedding) \
                 VALUES ($1, $2, $3, $4, $5::text::extensions.vector)",
                self.knowledge
            ))
            .await?;
        for (i, (content, embedding)) in chunks.iter().zip(embeddings).enumerate() {
            tx.execute(
                &insert,
                &[
                    &source,
                    &document,
                    &(i as i32),
                    content,
                    &vector_text(embedding),
                ],
            )
            .await
            .context("inserting a chunk")?;
        }
        self.audit_in(&tx, record).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Files a pending approval and audits the exchange, in one transaction.
    pub async fn request_approval(
        &self,
        action: &str,
        request: &str,
        partner: Option<&str>,
        record: &AuditRecord,
    ) -> anyhow::Result<i64> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id: i64 = tx
            .query_one(
                &format!(
                    "INSERT INTO {} (action, request, partner) VALUES ($1, $2, $3) RETURNING id",
                    self.approvals
                ),
                &[&action, &request, &partner],
            )
            .await
            .context("filing the approval request")?
            .get(0);
        let mut record = record.clone();
        record.response = format!("{} (approval {id})", record.response);
        self.audit_in(&tx, &record).await?;
        tx.commit().await?;
        Ok(id)
    }

    fn approval_columns() -> String {
        format!(
            "id, to_char(requested_at AT TIME ZONE 'UTC', {RFC3339}), action, request, partner, status, \
             to_char(decided_at AT TIME ZONE 'UTC', {RFC3339}), decided_by, note"
        )
    }

    fn approval(row: &tokio_postgres::Row) -> Approval {
        Approval {
            id: row.get(0),
            requested_at: row.get(1),
            action: row.get(2),
            request: row.get(3),
            partner: row.get(4),
            status: row.get(5),
            decided_at: row.get(6),
            decided_by: row.get(7),
            note: row.get(8),
        }
    }

    /// Approves or rejects a pending approval, audited in the same transaction.
    pub async fn decide(
        &self,
        id: i64,
        status: &'static str,
        decided_by: &str,
        note: Option<&str>,
        record: &AuditRecord,
    ) -> anyhow::Result<Decided> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let changed = tx
            .query_opt(
                &format!(
                    "UPDATE {} SET status = $2, decided_at = now(), decided_by = $3, note = $4 \
                     WHERE id = $1 AND status = 'pending' RETURNING {}",
                    self.approvals,
                    Self::approval_columns()
                ),
                &[&id, &status, &decided_by, &note],
            )
            .await
            .context("deciding the approval")?;
        let outcome = match changed {
            Some(row) => Decided::Changed(Self::approval(&row)),
            None => {
                let current = tx
                    .query_opt(
                        &format!("SELECT status FROM {} WHERE id = $1", self.approvals),
                        &[&id],
                    )
                    .await?;
                match current {
                    Some(row) => Decided::AlreadyDecided(row.get(0)),
                    None => Decided::NotFound,
                }
            }
        };
        let mut record = record.clone();
        if !matches!(outcome, Decided::Changed(_)) {
            record.outcome = match outcome {
                Decided::NotFound => "not_found",
                _ => "conflict",
            };
        }
        self.audit_in(&tx, &record).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Approvals, oldest first, optionally only those with `status`.
    pub async fn approvals(&self, status: Option<&str>) -> anyhow::Result<Vec<Approval>> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {} FROM {} WHERE $1::text IS NULL OR status = $1 ORDER BY id LIMIT 1000",
                    Self::approval_columns(),
                    self.approvals
                ),
                &[&status],
            )
            .await
            .context("listing approvals")?;
        Ok(rows.iter().map(Self::approval).collect())
    }

    /// How many approvals wait for a decision.
    pub async fn pending(&self) -> anyhow::Result<i64> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} WHERE status = 'pending'",
                    self.approvals
                ),
                &[],
            )
            .await?
            .get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_split_with_quotes() {
        assert_eq!(
            split_qualified("tenant_acme._pp_1_results"),
            Some(("tenant_acme".into(), "_pp_1_results".into()))
        );
        assert_eq!(
            split_qualified(r#""tenant.acme"."we""ird""#),
            Some(("tenant.acme".into(), "we\"ird".into()))
        );
        assert_eq!(split_qualified("results"), None);
        assert_eq!(split_qualified("a.b.c"), None);
        assert_eq!(split_qualified(r#""open.b"#), None);
    }

    #[test]
    fn ssl_modes() {
        assert_eq!(ssl_mode(None).unwrap(), tls::SslMode::Prefer);
        assert_eq!(
            ssl_mode(Some("verify-full")).unwrap(),
            tls::SslMode::VerifyFull
        );
        assert!(ssl_mode(Some("allow")).is_err());
    }
}

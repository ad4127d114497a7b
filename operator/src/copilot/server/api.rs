//! The copilot's JSON API and the guardrails it enforces.
//!
//! - `POST /v1/sources/{source}/documents` `{document, text}`: chunks,
//!   embeds and stores a document of an approved (non-`MetricPipeline`)
//!   source, replacing its earlier chunks; any other source is refused (403).
//! - `POST /v1/ask` `{question, partner?}`: a question asking for a guarded
//!   action files a pending approval and does nothing else (202); else the
//!   question is embedded, the nearest chunks of approved sources (and, for
//!   `MetricPipeline` sources, the latest metric results) are retrieved, and
//!   an answer whose confidence is below the guardrail is withheld and
//!   routed for review; otherwise the chat model answers from the numbered
//!   context, citing it.
//! - `POST /v1/approvals/{id}/approve|reject` `{decidedBy, note?}`: decides
//!   a pending approval; only the decision is recorded, nothing is executed.
//! - `GET /v1/approvals?status=pending|approved|rejected`.
//!
//! Every exchange on a `POST` endpoint is audited (kind `ask`, `ingest` or
//! `decision`) when the guardrails say so; an exchange that cannot be
//! audited fails rather than go unrecorded. Errors are JSON,
//! `{"error": "...", "outcome": "..."}`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::chunk;
use super::classify::{self, classify};
use super::confidence;
use super::db::{AuditRecord, Db, Decided};
use super::metrics::CopilotMetrics;
use super::model::{Message, ModelClient, ModelError};
use crate::api::copilot::{CopilotRole, GuardedAction, SourceKind};
use crate::copilot::server_config::ServerConfig;

/// Chunks retrieved per question.
pub const TOP_K: i32 = 6;
/// Longest question accepted, in characters.
const MAX_QUESTION: usize = 4000;
/// Longest document name, partner or decider accepted, in characters.
const MAX_NAME: usize = 256;
/// Longest text kept in an audit record, in characters.
const MAX_AUDIT_TEXT: usize = 16_000;
/// The approval kind of a withheld answer.
pub const REVIEW: &str = "review";

/// What the handlers share.
pub struct App {
    pub config: ServerConfig,
    pub db: Db,
    pub model: ModelClient,
    pub metrics: CopilotMetrics,
}

/// A response and the outcome it is counted under.
pub struct Reply {
    status: StatusCode,
    body: Value,
    outcome: &'static str,
}

impl Reply {
    fn new(status: StatusCode, outcome: &'static str, mut body: Value) -> Self {
        body["outcome"] = json!(outcome);
        Self {
            status,
            body,
            outcome,
        }
    }

    fn error(status: StatusCode, outcome: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, outcome, json!({"error": message.into()}))
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::error(StatusCode::BAD_REQUEST, "invalid", message)
    }

    fn database(error: &anyhow::Error) -> Self {
        tracing::error!(error = %format!("{error:#}"), "tenant database");
        Self::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_error",
            "the tenant database is unavailable; nothing was recorded",
        )
    }
}

fn respond(app: &App, endpoint: &'static str, started: Instant, reply: Reply) -> Response {
    let elapsed = started.elapsed();
    app.metrics
        .request(endpoint, reply.outcome, elapsed.as_secs_f64());
    tracing::info!(
        endpoint,
        outcome = reply.outcome,
        status = reply.status.as_u16(),
        elapsed_ms = elapsed.as_millis() as u64,
        "request"
    );
    json_response(reply.status, &reply.body)
}

/// `body` as a JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| Reply::invalid(format!("invalid request body: {e}")))
}

fn chars(text: &str) -> usize {
    text.chars().count()
}

fn clip(text: &str) -> String {
    if chars(text) <= MAX_AUDIT_TEXT {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(MAX_AUDIT_TEXT).collect();
        out.push('…');
        out
    }
}

/// Name of a guarded action, as the approvals table records it.
pub fn action_name(action: GuardedAction) -> &'static str {
    match action {
        GuardedAction::Credits => "Credits",
        GuardedAction::ContractChanges => "ContractChanges",
        GuardedAction::ComplianceExceptions => "ComplianceExceptions",
        GuardedAction::CustomerCommitments => "CustomerCommitments",
    }
}

async fn refresh_pending(app: &App) {
    match app.db.pending().await {
        Ok(n) => app.metrics.set_pending(n),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "counting pending approvals"),
    }
}

/// Audits a failed model call and says what failed.
async fn model_failed(
    app: &App,
    endpoint: &'static str,
    mut record: AuditRecord,
    error: ModelError,
) -> Reply {
    app.metrics.model_error(endpoint, error.cause());
    let message = error.to_string();
    tracing::warn!(
        endpoint,
        cause = error.cause(),
        "model call failed: {message}"
    );
    record.response = message.clone();
    record.outcome = "model_error";
    if let Err(e) = app.db.audit(&record).await {
        tracing::error!(error = %format!("{e:#}"), "auditing a failed model call");
    }
    Reply::error(error.status(), "model_error", message)
}

// ---------------------------------------------------------------- ingest

#[derive(Deserialize)]
struct IngestRequest {
    document: String,
    text: String,
}

pub async fn ingest(
    State(app): State<Arc<App>>,
    Path(source): Path<String>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let reply = match ingest_reply(&app, &source, &body).await {
        Ok(r) | Err(r) => r,
    };
    respond(&app, "ingest", started, reply)
}

async fn ingest_reply(app: &App, source: &str, body: &Bytes) -> Result<Reply, Reply> {
    let request: IngestRequest = parse(body)?;
    let document = request.document.trim();
    if document.is_empty() || chars(document) > MAX_NAME {
        return Err(Reply::invalid(format!(
            "document must be 1 to {MAX_NAME} characters"
        )));
    }
    let mut record = AuditRecord {
        kind: "ingest",
        prompt: format!(
            "ingest {source}/{document}: {} characters",
            chars(&request.text)
        ),
        ..Default::default()
    };
    let refusal = match app
        .config
        .approved_sources
        .iter()
        .find(|s| s.name.as_str() == source)
    {
        None => Some(format!(
            "source {source:?} is not an approved source of this copilot"
        )),
        Some(s) if s.kind == SourceKind::MetricPipeline => Some(format!(
            "source {source:?} holds MetricPipeline results, which are read from the pipelines; documents cannot be added to it"
        )),
        Some(_) => None,
    };
    if let Some(message) = refusal {
        record.response = message.clone();
        record.outcome = "refused";
        app.db
            .audit(&record)
            .await
            .map_err(|e| Reply::database(&e))?;
        return Err(Reply::error(StatusCode::FORBIDDEN, "refused", message));
    }
    let chunks = chunk::chunks(&request.text);
    if chunks.is_empty() {
        return Err(Reply::invalid("text is empty"));
    }
    let embeddings = match app.model.embed(&chunks).await {
        Ok(e) => e,
        Err(e) => return Err(model_failed(app, "ingest", record, e).await),
    };
    app.metrics.tokens("ingest", embeddings.tokens);
    record.response = format!("{} chunks", chunks.len());
    record.outcome = "ingested";
    record.tokens = embeddings.tokens;
    app.db
        .replace_document(source, document, &chunks, &embeddings.vectors, &record)
        .await
        .map_err(|e| Reply::database(&e))?;
    Ok(Reply::new(
        StatusCode::OK,
        "ingested",
        json!({"source": source, "document": document, "chunks": chunks.len()}),
    ))
}

// ---------------------------------------------------------------- ask

#[derive(Deserialize)]
struct AskRequest {
    question: String,
    #[serde(default)]
    partner: Option<String>,
}

/// One numbered piece of context.
struct ContextItem {
    text: String,
    citation: Value,
    similarity: f64,
    chunk_id: Option<i64>,
}

pub async fn ask(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let started = Instant::now();
    let reply = match ask_reply(&app, &body).await {
        Ok(r) | Err(r) => r,
    };
    respond(&app, "ask", started, reply)
}

fn audience(role: CopilotRole) -> &'static str {
    match role {
        CopilotRole::PartnerOperations => {
            "partner operations managers running the day-to-day work with service partners"
        }
        CopilotRole::Finance => "finance teams reviewing partner costs, invoices and credits",
        CopilotRole::ServiceLeader => "service leaders accountable for partners' service delivery",
        CopilotRole::ChannelManager => {
            "channel managers growing and governing partner relationships"
        }
    }
}

fn system_prompt(config: &ServerConfig) -> String {
    let product = config
        .branding
        .product_name
        .as_deref()
        .unwrap_or("Partner Intelligence");
    format!(
        "You are the {product} copilot for {}.\n\
         Answer the question using only the numbered context you are given. \
         Cite the context each statement comes from as [n], for example [1] or [2].\n\
         If the context does not answer the question, say that you do not know; never guess.\n\
         You cannot issue credits, refunds, rebates or discounts, change contracts, grant \
         compliance exceptions or make commitments to customers, and you never promise them: \
         if asked, say that a person must approve it.",
        audience(config.role)
    )
}

/// The context numbers `[n]` an answer cites, in order, once each.
fn cited(answer: &str, items: usize) -> Vec<usize> {
    let mut out = vec![];
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        let inside = &rest[..close];
        if !inside.is_empty()
            && inside
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',' || c == ' ')
        {
            for n in inside
                .split(',')
                .filter_map(|n| n.trim().parse::<usize>().ok())
            {
                if (1..=items).contains(&n) && !out.contains(&n) {
                    out.push(n);
                }
            }
        }
    }
    out
}

async fn ask_reply(app: &App, body: &Bytes) -> Result<Reply, Reply> {
    let request: AskRequest = parse(body)?;
    let question = request.question.trim();
    if question.is_empty() || chars(question) > MAX_QUESTION {
        return Err(Reply::invalid(format!(
            "question must be 1 to {MAX_QUESTION} characters"
        )));
    }
    let partner = match request.partner.as_deref().map(str::trim) {
        Some(p) if chars(p) > MAX_NAME => {
            return Err(Reply::invalid(format!(
                "partner must be at most {MAX_NAME} characters"
            )));
        }
        Some(p) if !p.is_empty() => Some(p.to_string()),
        _ => classify::partner_named(question),
    };
    let guardrails = &app.config.guardrails;
    let mut record = AuditRecord {
        kind: "ask",
        prompt: clip(question),
        ..Default::default()
    };

    // A guarded action: never executed, never promised; a human decides.
    if let Some(action) = classify(question, &guardrails.human_approval_required) {
        let message = format!(
            "This asks for {}, which needs a person's approval: nothing was done or promised. \
             The request waits for a decision.",
            classify::describe(action)
        );
        record.response = message.clone();
        record.outcome = "approval_requested";
        let id = app
            .db
            .request_approval(action_name(action), question, partner.as_deref(), &record)
            .await
            .map_err(|e| Reply::database(&e))?;
        refresh_pending(app).await;
        return Ok(Reply::new(
            StatusCode::ACCEPTED,
            "approval_requested",
            json!({
                "approval": {"id": id, "status": "pending", "action": action_name(action)},
                "message": message,
            }),
        ));
    }

    let embedded = match app.model.embed(&[question.to_string()]).await {
        Ok(e) => e,
        Err(e) => return Err(model_failed(app, "ask", record, e).await),
    };
    record.tokens = embedded.tokens;
    app.metrics.tokens("ask", embedded.tokens);
    let vector = &embedded.vectors[0];

    let document_sources = super::ddl::document_sources(&app.config);
    let distance = app.config.database.distance;
    let retrieved = app
        .db
        .retrieve(vector, TOP_K)
        .await
        .map_err(|e| Reply::database(&e))?;
    let mut items: Vec<ContextItem> = retrieved
        .into_iter()
        // The function filters already; a stale or altered one must not widen retrieval.
        .filter(|r| document_sources.contains(&r.source.as_str()))
        .map(|r| ContextItem {
            text: format!(
                "({} / {}, part {}) {}",
                r.source,
                r.document,
                r.chunk + 1,
                r.content
            ),
            citation: json!({"id": r.id, "source": r.source, "document": r.document, "chunk": r.chunk}),
            similarity: confidence::similarity(distance, r.distance),
            chunk_id: Some(r.id),
        })
        .collect();
    if let Some(metrics_source) = app
        .config
        .approved_sources
        .iter()
        .find(|s| s.kind == SourceKind::MetricPipeline)
    {
        let rows = app
            .db
            .metric_rows(partner.as_deref())
            .await
            .map_err(|e| Reply::database(&e))?;
        let who = partner.as_deref().unwrap_or("all");
        for row in rows {
            let value = row
                .value
                .map_or_else(|| "no value".to_string(), |v| format!("{v}"));
            items.push(ContextItem {
                text: format!(
                    "Metric {} for {}: {value} over {} samples (refreshed {})",
                    row.metric,
                    partner
                        .as_deref()
                        .map_or_else(|| "all partners".to_string(), |p| format!("partner {p}")),
                    row.samples,
                    row.refreshed_at
                ),
                citation: json!({
                    "source": metrics_source.name.as_str(),
                    "metric": format!("metric:{}:{}:{who}", row.table, row.metric),
                }),
                similarity: confidence::metric_relevance(&row.metric, question),
                chunk_id: None,
            });
        }
    }
    items.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
    let retrieval = confidence::confidence(&items.iter().map(|i| i.similarity).collect::<Vec<_>>());
    record.citations = items.iter().filter_map(|i| i.chunk_id).collect();
    record.confidence = Some(retrieval);
    if retrieval < guardrails.min_confidence {
        return withhold(app, record, question, partner.as_deref(), retrieval).await;
    }

    let context = items
        .iter()
        .enumerate()
        .map(|(i, item)| format!("[{}] {}", i + 1, item.text))
        .collect::<Vec<_>>()
        .join("\n");
    let mut user = format!("Context:\n{context}\n\n");
    if let Some(p) = &partner {
        user.push_str(&format!("Partner: {p}\n"));
    }
    user.push_str(&format!("Question: {question}"));
    let messages = [
        Message {
            role: "system",
            content: system_prompt(&app.config),
        },
        Message {
            role: "user",
            content: user,
        },
    ];
    let completion = match app.model.chat(&messages).await {
        Ok(c) => c,
        Err(e) => return Err(model_failed(app, "ask", record, e).await),
    };
    record.tokens += completion.tokens;
    app.metrics.tokens("ask", completion.tokens);
    let confidence = confidence::combine(retrieval, completion.confidence);
    record.confidence = Some(confidence);
    if confidence < guardrails.min_confidence {
        return withhold(app, record, question, partner.as_deref(), confidence).await;
    }

    let numbers = cited(&completion.content, items.len());
    // An answer citing nothing is shown with all the context it was given.
    let shown: Vec<usize> = if numbers.is_empty() {
        (1..=items.len()).collect()
    } else {
        numbers
    };
    let citations: Vec<Value> = shown
        .iter()
        .map(|n| {
            let mut c = items[n - 1].citation.clone();
            c["n"] = json!(n);
            c
        })
        .collect();
    record.citations = shown.iter().filter_map(|n| items[n - 1].chunk_id).collect();
    record.response = clip(&completion.content);
    record.outcome = "answered";
    app.db.audit(&record).await.map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), "auditing an answer");
        Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_error",
            "the answer could not be audited, so it is withheld",
        )
    })?;
    Ok(Reply::new(
        StatusCode::OK,
        "answered",
        json!({
            "answer": completion.content,
            "citations": citations,
            "confidence": confidence,
            "model": app.model.name(),
        }),
    ))
}

/// Withholds an answer below the confidence guardrail: a review request
/// for a person instead.
async fn withhold(
    app: &App,
    mut record: AuditRecord,
    question: &str,
    partner: Option<&str>,
    confidence: f64,
) -> Result<Reply, Reply> {
    let message = format!(
        "The answer was withheld: its confidence {confidence:.2} is below the required {:.2}. \
         The question was routed for human review.",
        app.config.guardrails.min_confidence
    );
    record.response = message.clone();
    record.outcome = "withheld";
    let id = app
        .db
        .request_approval(REVIEW, question, partner, &record)
        .await
        .map_err(|e| Reply::database(&e))?;
    app.metrics.withheld();
    refresh_pending(app).await;
    Ok(Reply::new(
        StatusCode::OK,
        "withheld",
        json!({
            "answer": null,
            "confidence": confidence,
            "review": {"id": id, "status": "pending", "action": REVIEW},
            "message": message,
        }),
    ))
}

// ---------------------------------------------------------------- approvals

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DecisionRequest {
    decided_by: String,
    #[serde(default)]
    note: Option<String>,
}

pub async fn decide(
    State(app): State<Arc<App>>,
    Path((id, decision)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let reply = match decide_reply(&app, &id, &decision, &body).await {
        Ok(r) | Err(r) => r,
    };
    respond(&app, "decide", started, reply)
}

async fn decide_reply(app: &App, id: &str, decision: &str, body: &Bytes) -> Result<Reply, Reply> {
    let (status, outcome) = match decision {
        "approve" => ("approved", "approved"),
        "reject" => ("rejected", "rejected"),
        _ => {
            return Err(Reply::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "decide with /approve or /reject",
            ));
        }
    };
    let id: i64 = id
        .parse()
        .map_err(|_| Reply::invalid("the approval id is not a number"))?;
    let request: DecisionRequest = parse(body)?;
    let decided_by = request.decided_by.trim();
    if decided_by.is_empty() || chars(decided_by) > MAX_NAME {
        return Err(Reply::invalid(format!(
            "decidedBy must be 1 to {MAX_NAME} characters"
        )));
    }
    let note = request
        .note
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let record = AuditRecord {
        kind: "decision",
        prompt: clip(&format!(
            "{decision} approval {id} by {decided_by}{}",
            note.map(|n| format!(": {n}")).unwrap_or_default()
        )),
        response: format!("approval {id} {status}; nothing else was executed"),
        outcome,
        ..Default::default()
    };
    let decided = app
        .db
        .decide(id, status, decided_by, note, &record)
        .await
        .map_err(|e| Reply::database(&e))?;
    match decided {
        Decided::Changed(approval) => {
            refresh_pending(app).await;
            Ok(Reply::new(
                StatusCode::OK,
                outcome,
                json!({
                    "approval": approval,
                    "message": format!("approval {id} {status}: recorded only, nothing was executed"),
                }),
            ))
        }
        Decided::NotFound => Err(Reply::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no approval {id}"),
        )),
        Decided::AlreadyDecided(current) => Err(Reply::error(
            StatusCode::CONFLICT,
            "conflict",
            format!("approval {id} is already {current}; only pending approvals can be decided"),
        )),
    }
}

pub async fn list_approvals(State(app): State<Arc<App>>, RawQuery(query): RawQuery) -> Response {
    let started = Instant::now();
    let reply = match list_reply(&app, query.as_deref()).await {
        Ok(r) | Err(r) => r,
    };
    respond(&app, "approvals", started, reply)
}

async fn list_reply(app: &App, query: Option<&str>) -> Result<Reply, Reply> {
    let mut status = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("status", value)) => status = Some(value),
            _ => return Err(Reply::invalid(format!("unknown query parameter {pair:?}"))),
        }
    }
    if let Some(s) = status
        && !["pending", "approved", "rejected"].contains(&s)
    {
        return Err(Reply::invalid(
            "status must be pending, approved or rejected",
        ));
    }
    let approvals = app
        .db
        .approvals(status)
        .await
        .map_err(|e| Reply::database(&e))?;
    if status == Some("pending") {
        app.metrics.set_pending(approvals.len() as i64);
    }
    Ok(Reply::new(
        StatusCode::OK,
        "listed",
        json!({"approvals": approvals}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_are_read_from_the_answer() {
        assert_eq!(cited("A [2], B [1] and again [2].", 3), [2, 1]);
        assert_eq!(cited("Both [1, 3].", 3), [1, 3]);
        assert_eq!(cited("Out of range [4] [0] [x] [", 3), Vec::<usize>::new());
        assert_eq!(cited("no citation", 3), Vec::<usize>::new());
    }

    #[test]
    fn the_system_prompt_names_the_product_and_forbids_guarded_actions() {
        let mut config: ServerConfig = serde_json::from_value(json!({
            "copilot": "ns/c", "role": "Finance",
            "branding": {"productName": "Acme Insight"},
            "model": {"endpoint": "http://m/v1", "name": "m", "key": "env"},
            "database": {"schema": "s", "knowledgeTable": "k", "retrieveFunction": "r",
                "auditTable": "a", "approvalsTable": "p", "dimensions": 3,
                "distance": "Cosine", "credentials": "env"},
            "approvedSources": [],
            "guardrails": {"humanApprovalRequired": [], "minConfidence": 0.5, "auditEnabled": true}
        }))
        .unwrap();
        let prompt = system_prompt(&config);
        assert!(
            prompt.contains("Acme Insight copilot for finance teams"),
            "{prompt}"
        );
        assert!(prompt.contains("[n]"));
        assert!(prompt.contains("never promise"));
        config.branding.product_name = None;
        assert!(system_prompt(&config).contains("Partner Intelligence copilot"));
    }
}

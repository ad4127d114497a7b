//! `partnerplane copilot` end to end, as a local process against a Ready
//! tenant's real Postgres schema (its tables made as the tenant with
//! `schema_ddl`) and the OpenAI-compatible model stand-in:
//!
//! - documents ingested into an approved source are retrieved and cited;
//!   rows of an unapproved source, though the nearest possible vectors,
//!   never come back, and sources not approved for documents refuse them;
//! - MetricPipeline results are context, cited as `metric:<table>:<metric>:<partner>`;
//! - a low-confidence question is withheld and routed for review;
//! - "issue partner P1 a 10 % credit" files a pending approval without any
//!   model call or action, and approving it is a separate, audited call;
//! - a wrong embedding size, a refused key and a timeout give clear errors
//!   naming the cause (never the key) and audit rows;
//! - every exchange is in the audit table; `/metrics` counts with bounded labels;
//! - the same server reads its database credentials and model key from
//!   OpenBao, logged in with the tenant workload's ServiceAccount token.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use partnerplane::api::tenant::VaultStatus;
use partnerplane::backends::vault::AUDIENCE;
use partnerplane::copilot::names::CopilotNames;
use partnerplane::copilot::server::ddl::schema_ddl;
use partnerplane::copilot::server_config::{MODEL_KEY_ENV, ServerConfig};
use partnerplane::naming::WORKLOAD_SERVICE_ACCOUNT;
use partnerplane_e2e::model_standin::{self, Behaviour, ModelStandin};
use partnerplane_e2e::pipelines::{apply, tenant_session};
use partnerplane_e2e::tenants::{credentials, delete_tenants};
use partnerplane_e2e::{
    Operator, Testbed, free_port, operator_binary, repo_root, unique_name, wait_condition,
    wait_until,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const DIMS: usize = 256;
const KEY: &str = "sk-standin-4f1c9e0b7a";
const MIN_CONFIDENCE: f64 = 0.35;
const COPILOT: &str = "ops-copilot";
const MODEL_TIMEOUT_SECONDS: u64 = 2;

const ESCALATION: &str = "How is a severity one outage escalation handled for a partner?";
const METRIC_QUESTION: &str = "What is the first time fix rate of partner P1?";
const OFF_TOPIC: &str = "What colour are the cafeteria chairs on Tuesdays?";
const CREDIT: &str = "issue partner P1 a 10 % credit";

const PLAYBOOK: &str = "\
Severity one outage escalation. When a partner reports a severity one outage, the duty \
engineer opens an escalation bridge within 15 minutes. The escalation bridge stays open until \
the outage is resolved. The partner escalation manager joins the bridge and updates the \
customer every 30 minutes during the outage.

Severity one outage escalation, step two. If the outage lasts longer than two hours, the \
escalation goes to the regional service leader. The service leader decides whether a second \
partner is dispatched to the outage site. Every severity one escalation is logged with its \
start, its end and the partner involved.

Severity one outage escalation, step three. The partner keeps spare parts for a severity one \
outage at the regional depot. When parts are missing, the escalation manager orders them \
with priority shipping and tells the customer when the outage should end.

Severity one outage escalation, closing. After the outage, the partner writes a root cause \
report within five working days. The escalation manager reviews the report with the partner \
and records the follow-up actions. Repeated severity one outages of the same partner are \
raised in the quarterly business review.

Severity one outage escalation, communication. During a severity one outage the partner \
posts status updates on the shared incident page. The escalation manager approves each \
customer message before it is sent, so the outage is described the same way everywhere.";

const PLAYBOOK_ADDENDUM: &str = "

Severity one outage escalation, review. Each quarter the escalation manager and the partner \
review every severity one outage of the quarter and agree on one improvement.";

const CONTRACT: &str = "\
Master services agreement with partner P1. Field service visits are booked within one \
working day. Invoices are sent monthly and paid within 45 days. The agreement runs for \
three years and renews for one year unless either side gives notice.";

/// A `partnerplane copilot` process; killed when dropped.
struct Copilot {
    child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
    log: PathBuf,
}

impl Copilot {
    /// Starts the server with `config`, only the environment in `env` and
    /// (when given) the ServiceAccount token file, and waits until it is ready.
    async fn start(
        name: &str,
        config: &Value,
        env: &[(String, String)],
        token_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let dir = repo_root().join("e2e/.testbed/logs");
        let config_path = dir.join(format!("copilot-{name}.json"));
        std::fs::write(&config_path, serde_json::to_vec_pretty(config)?)?;
        let log = dir.join(format!("copilot-{name}.log"));
        let listen = format!("127.0.0.1:{}", free_port()?);
        let mut command = tokio::process::Command::new(operator_binary()?);
        command
            .arg("copilot")
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", &listen])
            .args([
                "--model-timeout-seconds",
                &MODEL_TIMEOUT_SECONDS.to_string(),
            ])
            .env_clear()
            .env(
                "PARTNERPLANE_LOG",
                "info,partnerplane=debug,rustify=off,vaultrs=off",
            )
            .envs(env.iter().cloned())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log)?))
            .kill_on_drop(true);
        if let Some(path) = token_file {
            command.arg("--service-account-token").arg(path);
        }
        let copilot = Self {
            child: command.spawn()?,
            base: format!("http://{listen}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            log,
        };
        let (http, url) = (copilot.http.clone(), format!("{}/readyz", copilot.base));
        wait_until("the copilot to be ready", Duration::from_secs(30), || {
            let request = http.get(&url).send();
            async move {
                Ok(request
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await
        .with_context(|| format!("copilot log: {}", copilot.log.display()))?;
        Ok(copilot)
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<(StatusCode, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        let value = serde_json::from_str(&text)
            .with_context(|| format!("{path} answered {status} with non-JSON {text:?}"))?;
        Ok((status, value))
    }

    async fn get(&self, path: &str) -> anyhow::Result<(StatusCode, String)> {
        let response = self.http.get(format!("{}{path}", self.base)).send().await?;
        Ok((response.status(), response.text().await?))
    }

    async fn ask(
        &self,
        question: &str,
        partner: Option<&str>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut body = json!({"question": question});
        if let Some(p) = partner {
            body["partner"] = json!(p);
        }
        self.post("/v1/ask", body).await
    }

    async fn ingest(
        &self,
        source: &str,
        document: &str,
        text: &str,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.post(
            &format!("/v1/sources/{source}/documents"),
            json!({"document": document, "text": text}),
        )
        .await
    }

    async fn decide(&self, id: i64, decision: &str) -> anyhow::Result<(StatusCode, Value)> {
        self.post(
            &format!("/v1/approvals/{id}/{decision}"),
            json!({"decidedBy": "finance.lead@acme.example", "note": "within the quarterly policy"}),
        )
        .await
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// The copilot's configuration, as the controller would write it.
fn server_config(
    namespace: &str,
    schema: &str,
    endpoint: &str,
    credentials: Value,
    key: Value,
) -> Value {
    let names = CopilotNames::new(namespace, COPILOT);
    json!({
        "copilot": format!("{namespace}/{COPILOT}"),
        "role": "PartnerOperations",
        "branding": {"productName": "Acme Partner Hub"},
        "model": {"endpoint": endpoint, "name": model_standin::MODEL, "key": key},
        "database": {
            "schema": schema,
            "knowledgeTable": names.knowledge,
            "retrieveFunction": names.retrieve,
            "auditTable": names.audit,
            "approvalsTable": names.approvals,
            "dimensions": DIMS,
            "distance": "Cosine",
            "credentials": credentials,
        },
        "approvedSources": [
            {"name": "playbooks", "kind": "Playbooks"},
            {"name": "contracts", "kind": "Contracts"},
            {"name": "partner_metrics", "kind": "MetricPipeline"},
        ],
        // Quoted, as a MetricPipeline's status names its result table.
        "metricResultTables": [format!("\"{schema}\".\"copilot_fix_results\"")],
        "guardrails": {
            "humanApprovalRequired": ["Credits", "ContractChanges", "ComplianceExceptions", "CustomerCommitments"],
            "minConfidence": MIN_CONFIDENCE,
            "auditEnabled": true,
        },
    })
}

fn vector(text: &str) -> String {
    let v = model_standin::embed(text, DIMS);
    format!(
        "[{}]",
        v.iter().map(f32::to_string).collect::<Vec<_>>().join(",")
    )
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copilot_answers_from_approved_sources_within_its_guardrails() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("copilot"), &[]).await?;
    let tenant = unique_name("copilot");
    apply(
        &client,
        &[operator.tenant(
            &tenant,
            json!({"displayName": "Copilot", "tier": "Standard", "secrets": {"store": "Both"}}),
        )],
    )
    .await?;
    let ready = wait_condition(&client, &tenant, "Ready", "True", Duration::from_secs(90)).await?;
    let status = ready.status.context("status of a Ready tenant")?;
    let namespace = status.namespace.context("namespace of a Ready tenant")?;
    let vault = status.vault.context("OpenBao names of the tenant")?;
    let result = scenario(&testbed, &client, &namespace, &vault).await;
    delete_tenants(&client, &[tenant]).await?;
    result
}

async fn scenario(
    testbed: &Testbed,
    client: &kube::Client,
    namespace: &str,
    vault: &VaultStatus,
) -> anyhow::Result<()> {
    // The tenant's own credentials, and its tables made as the tenant.
    let creds = credentials(client, namespace).await?;
    let (tenant_db, schema) = tenant_session(testbed, client, namespace).await?;
    let standin = ModelStandin::start(DIMS, KEY).await?;
    let config = server_config(
        namespace,
        &schema,
        &standin.endpoint(),
        json!("env"),
        json!("env"),
    );
    let parsed: ServerConfig = serde_json::from_value(config.clone())?;
    for statement in schema_ddl(&parsed) {
        tenant_db
            .batch_execute(&statement)
            .await
            .with_context(|| statement.clone())?;
    }
    let names = CopilotNames::new(namespace, COPILOT);
    let q = |name: &str| format!("\"{schema}\".\"{name}\"");
    let (knowledge, retrieve, audit, approvals) = (
        q(&names.knowledge),
        q(&names.retrieve),
        q(&names.audit),
        q(&names.approvals),
    );
    // What a MetricPipeline's result table holds: two refreshes.
    tenant_db
        .batch_execute(
            "CREATE TABLE copilot_fix_results (refreshed_at timestamptz NOT NULL, metric text NOT NULL, \
             partner text, dimensions jsonb NOT NULL, value float8, samples bigint NOT NULL);
             INSERT INTO copilot_fix_results VALUES
               (now() - interval '1 day', 'first_time_fix', 'P1', '{}', 0.5, 30),
               (now(), 'first_time_fix', 'P1', '{}', 0.82, 40),
               (now(), 'first_time_fix', 'P2', '{}', 0.9, 35),
               (now(), 'first_time_fix', NULL, '{}', 0.87, 75),
               (now(), 'first_time_fix', 'P1', '{\"region\": \"north\"}', 0.7, 10),
               (now(), 'time_to_fix', 'P1', '{}', 5.5, 40);",
        )
        .await?;

    let mut env: Vec<(String, String)> = creds
        .iter()
        .filter(|(k, _)| k.starts_with("PG"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push((MODEL_KEY_ENV.to_string(), KEY.to_string()));
    let copilot = Copilot::start(&format!("{namespace}-env"), &config, &env, None).await?;
    let (status, health) = copilot.get("/healthz").await?;
    assert_eq!((status, health.as_str()), (StatusCode::OK, "ok"));

    // Ingestion: approved document sources only; a document replaces its chunks.
    let (status, body) = copilot
        .ingest("playbooks", "escalation-playbook", PLAYBOOK)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["chunks"].as_u64().unwrap() >= 2, "{body}");
    let (status, body) = copilot.ingest("contracts", "msa-p1", CONTRACT).await?;
    assert_eq!(
        (status, body["chunks"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    let revised = format!("{PLAYBOOK}{PLAYBOOK_ADDENDUM}");
    let (status, body) = copilot
        .ingest("playbooks", "escalation-playbook", &revised)
        .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let chunks = body["chunks"].as_i64().unwrap();
    let stored: Vec<i32> = tenant_db
        .query(
            &format!("SELECT chunk FROM {knowledge} WHERE source = 'playbooks' AND document = 'escalation-playbook' ORDER BY chunk"),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        stored,
        (0..chunks as i32).collect::<Vec<_>>(),
        "earlier chunks replaced"
    );
    for (source, why) in [
        ("shadow_notes", "not an approved source"),
        ("partner_metrics", "MetricPipeline"),
    ] {
        let (status, body) = copilot.ingest(source, "x", "Some text.").await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(error_of(&body).contains(why), "{body}");
    }

    // Rows of an unapproved source, as near to the question as can be.
    let question_vector = vector(ESCALATION);
    for i in 0..3 {
        tenant_db
            .execute(
                &format!(
                    "INSERT INTO {knowledge} (source, document, chunk, content, embedding) \
                     VALUES ('shadow_notes', 'leak', $1, 'SHADOW-NOTE severity one outage escalation partner margins', $2::text::extensions.vector)"
                ),
                &[&i, &question_vector],
            )
            .await?;
    }
    let nearest: String = tenant_db
        .query_one(
            &format!("SELECT source FROM {knowledge} ORDER BY embedding OPERATOR(extensions.<=>) $1::text::extensions.vector LIMIT 1"),
            &[&question_vector],
        )
        .await?
        .get(0);
    assert_eq!(
        nearest, "shadow_notes",
        "the unapproved rows are the nearest"
    );
    let sources: BTreeSet<String> = tenant_db
        .query(
            &format!("SELECT source FROM {retrieve}($1::text::extensions.vector, 100)"),
            &[&question_vector],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        sources,
        BTreeSet::from(["contracts".to_string(), "playbooks".to_string()])
    );

    // Retrieved and cited; the confidence is the mean of the top three similarities.
    let (status, body) = copilot.ask(ESCALATION, None).await?;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("answered")),
        "{body}"
    );
    let citations = body["citations"].as_array().unwrap();
    assert_eq!(citations.len(), 1, "{body}");
    assert_eq!(citations[0]["source"], "playbooks");
    assert_eq!(citations[0]["document"], "escalation-playbook");
    assert!(citations[0]["id"].as_i64().is_some());
    assert!(
        body["answer"]
            .as_str()
            .unwrap()
            .contains("Severity one outage escalation"),
        "{body}"
    );
    let top: Vec<f64> = tenant_db
        .query(
            &format!(
                "SELECT 1 - (embedding OPERATOR(extensions.<=>) $1::text::extensions.vector) FROM {knowledge} \
                 WHERE source IN ('playbooks', 'contracts') \
                 ORDER BY embedding OPERATOR(extensions.<=>) $1::text::extensions.vector LIMIT 3"
            ),
            &[&question_vector],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let expected = top.iter().sum::<f64>() / top.len() as f64;
    let confidence = body["confidence"].as_f64().unwrap();
    assert!(
        (confidence - expected).abs() < 1e-4,
        "{confidence} vs {expected}"
    );
    assert!(confidence >= MIN_CONFIDENCE);
    let chat = standin.chats().last().cloned().unwrap();
    let sent = chat.to_string();
    assert!(
        !sent.contains("SHADOW"),
        "unapproved rows never reach the model: {sent}"
    );
    assert!(sent.contains("Acme Partner Hub"), "{sent}");
    assert!(
        chat["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("[1] (playbooks / escalation-playbook")
    );
    assert!(!body.to_string().contains("SHADOW"));

    // MetricPipeline results as context, cited by table, metric and partner.
    let (status, body) = copilot.ask(METRIC_QUESTION, Some("P1")).await?;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("answered")),
        "{body}"
    );
    assert_eq!(
        body["citations"][0],
        json!({"n": 1, "source": "partner_metrics", "metric": "metric:copilot_fix_results:first_time_fix:P1"}),
        "{body}"
    );
    assert!(
        body["answer"]
            .as_str()
            .unwrap()
            .contains("Metric first_time_fix for partner P1: 0.82 over 40 samples"),
        "the latest result, not split by dimensions: {body}"
    );

    // Low confidence: withheld and routed for review.
    let (status, body) = copilot.ask(OFF_TOPIC, None).await?;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("withheld")),
        "{body}"
    );
    assert!(body["answer"].is_null());
    assert!(body["confidence"].as_f64().unwrap() < MIN_CONFIDENCE);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("routed for human review")
    );
    let review = body["review"]["id"].as_i64().unwrap();
    let row = tenant_db
        .query_one(
            &format!("SELECT action, request, status FROM {approvals} WHERE id = $1"),
            &[&review],
        )
        .await?;
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        ("review".into(), OFF_TOPIC.into(), "pending".into())
    );

    // A guarded action: a pending approval, no model call, nothing done.
    let calls = (standin.embedding_calls(), standin.chat_calls());
    let (status, body) = copilot.ask(CREDIT, None).await?;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::ACCEPTED, Some("approval_requested")),
        "{body}"
    );
    assert_eq!(body["approval"]["status"], "pending");
    assert_eq!(body["approval"]["action"], "Credits");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was done")
    );
    assert!(body.get("answer").is_none());
    assert_eq!(
        (standin.embedding_calls(), standin.chat_calls()),
        calls,
        "no model call"
    );
    let credit = body["approval"]["id"].as_i64().unwrap();
    let row = tenant_db
        .query_one(&format!("SELECT action, request, partner, status, decided_at IS NULL FROM {approvals} WHERE id = $1"), &[&credit])
        .await?;
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            row.get::<_, bool>(4)
        ),
        (
            "Credits".into(),
            CREDIT.into(),
            "P1".into(),
            "pending".into(),
            true
        )
    );
    let (status, text) = copilot.get("/v1/approvals?status=pending").await?;
    assert_eq!(status, StatusCode::OK);
    let pending: Value = serde_json::from_str(&text)?;
    let ids: Vec<i64> = pending["approvals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [review, credit]);

    // Deciding is a separate, audited call; only pending approvals change.
    let (status, body) = copilot.decide(credit, "approve").await?;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("approved")),
        "{body}"
    );
    assert_eq!(body["approval"]["status"], "approved");
    assert_eq!(body["approval"]["decidedBy"], "finance.lead@acme.example");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("nothing was executed")
    );
    let (status, body) = copilot.decide(credit, "reject").await?;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_of(&body).contains("already approved"));
    let (status, body) = copilot.decide(review, "reject").await?;
    assert_eq!(
        (status, body["approval"]["status"].as_str()),
        (StatusCode::OK, Some("rejected")),
        "{body}"
    );
    let (status, _) = copilot.decide(999_999_999, "approve").await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, text) = copilot.get("/v1/approvals?status=pending").await?;
    assert_eq!(
        serde_json::from_str::<Value>(&text)?["approvals"],
        json!([])
    );
    let row = tenant_db
        .query_one(&format!("SELECT status, decided_by, note, decided_at IS NOT NULL FROM {approvals} WHERE id = $1"), &[&credit])
        .await?;
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2),
            row.get::<_, bool>(3)
        ),
        (
            "approved".into(),
            "finance.lead@acme.example".into(),
            "within the quarterly policy".into(),
            true
        )
    );

    // The model failing: clear errors naming the cause, never the key.
    standin.set(Behaviour::WrongDimensions(3));
    let (status, body) = copilot.ask(ESCALATION, None).await?;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("model_error")),
        "{body}"
    );
    assert!(
        error_of(&body).contains("returned 3 dimensions, the knowledge index holds 256"),
        "{body}"
    );
    let (status, body) = copilot
        .ingest("contracts", "msa-p1", "A replacement text.")
        .await?;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(error_of(&body).contains("3 dimensions"), "{body}");
    let msa: String = tenant_db
        .query_one(
            &format!("SELECT string_agg(content, '') FROM {knowledge} WHERE document = 'msa-p1'"),
            &[],
        )
        .await?
        .get(0);
    assert!(
        msa.starts_with("Master services agreement"),
        "a failed ingestion changes nothing"
    );

    standin.set(Behaviour::RejectKey);
    let (status, body) = copilot.ask(ESCALATION, None).await?;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        error_of(&body).contains("refused the API key (HTTP 401)"),
        "{body}"
    );
    assert!(!body.to_string().contains(KEY));

    standin.set(Behaviour::Slow(Duration::from_secs(
        MODEL_TIMEOUT_SECONDS * 3,
    )));
    let (status, body) = copilot.ask(ESCALATION, None).await?;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(
        error_of(&body).contains(&format!("did not answer within {MODEL_TIMEOUT_SECONDS} s")),
        "{body}"
    );

    standin.set(Behaviour::Normal);
    let (status, body) = copilot.ask(ESCALATION, None).await?;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("answered")),
        "{body}"
    );

    // Every exchange is audited, in order, without the key.
    let rows = tenant_db
        .query(
            &format!("SELECT kind, outcome, prompt, coalesce(response, ''), citations, confidence, model, coalesce(tokens, 0) FROM {audit} ORDER BY id"),
            &[],
        )
        .await?;
    let got: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let expected: Vec<(String, String)> = [
        ("ingest", "ingested"),
        ("ingest", "ingested"),
        ("ingest", "ingested"),
        ("ingest", "refused"),
        ("ingest", "refused"),
        ("ask", "answered"),
        ("ask", "answered"),
        ("ask", "withheld"),
        ("ask", "approval_requested"),
        ("decision", "approved"),
        ("decision", "conflict"),
        ("decision", "rejected"),
        ("decision", "not_found"),
        ("ask", "model_error"),
        ("ingest", "model_error"),
        ("ask", "model_error"),
        ("ask", "model_error"),
        ("ask", "answered"),
    ]
    .iter()
    .map(|(k, o)| (k.to_string(), o.to_string()))
    .collect();
    assert_eq!(got, expected);
    for row in &rows {
        let (prompt, response): (String, String) = (row.get(2), row.get(3));
        for secret in [KEY, creds["PGPASSWORD"].as_str()] {
            assert!(
                !prompt.contains(secret) && !response.contains(secret),
                "a secret in the audit table: {prompt} / {response}"
            );
        }
        assert_eq!(row.get::<_, String>(6), model_standin::MODEL);
    }
    let answered = &rows[5];
    assert_eq!(answered.get::<_, String>(2), ESCALATION);
    assert_eq!(
        answered.get::<_, Vec<i64>>(4),
        [citations[0]["id"].as_i64().unwrap()]
    );
    assert!(answered.get::<_, Option<f64>>(5).unwrap() >= MIN_CONFIDENCE);
    assert!(
        answered.get::<_, i32>(7) > 0,
        "tokens from the usage blocks"
    );
    assert!(rows[7].get::<_, Option<f64>>(5).unwrap() < MIN_CONFIDENCE);
    assert!(
        rows[8]
            .get::<_, String>(3)
            .contains(&format!("approval {credit}"))
    );
    assert!(
        rows[9]
            .get::<_, String>(2)
            .contains("by finance.lead@acme.example")
    );
    for (i, cause) in [
        (13, "3 dimensions"),
        (14, "3 dimensions"),
        (15, "HTTP 401"),
        (16, "did not answer"),
    ] {
        assert!(rows[i].get::<_, String>(3).contains(cause), "{i}: {cause}");
    }

    // Metrics with bounded labels: never a partner, a question or a document.
    let (status, text) = copilot.get("/metrics").await?;
    assert_eq!(status, StatusCode::OK);
    let copilot_label = format!("copilot=\"{namespace}/{COPILOT}\"");
    for (line, value) in [
        (
            format!(
                "partnerplane_copilot_requests_total{{{copilot_label},endpoint=\"ask\",outcome=\"answered\"}}"
            ),
            3.0,
        ),
        (
            format!(
                "partnerplane_copilot_requests_total{{{copilot_label},endpoint=\"ask\",outcome=\"withheld\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "partnerplane_copilot_requests_total{{{copilot_label},endpoint=\"ask\",outcome=\"approval_requested\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "partnerplane_copilot_requests_total{{{copilot_label},endpoint=\"ask\",outcome=\"model_error\"}}"
            ),
            3.0,
        ),
        (
            format!(
                "partnerplane_copilot_requests_total{{{copilot_label},endpoint=\"ingest\",outcome=\"refused\"}}"
            ),
            2.0,
        ),
        (
            format!(
                "partnerplane_copilot_requests_total{{{copilot_label},endpoint=\"decide\",outcome=\"approved\"}}"
            ),
            1.0,
        ),
        (
            format!("partnerplane_copilot_withheld_answers_total{{{copilot_label}}}"),
            1.0,
        ),
        (
            format!("partnerplane_copilot_approvals_pending{{{copilot_label}}}"),
            0.0,
        ),
        (
            format!(
                "partnerplane_copilot_model_errors_total{{{copilot_label},endpoint=\"ask\",outcome=\"dimensions\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "partnerplane_copilot_model_errors_total{{{copilot_label},endpoint=\"ask\",outcome=\"key_refused\"}}"
            ),
            1.0,
        ),
        (
            format!(
                "partnerplane_copilot_model_errors_total{{{copilot_label},endpoint=\"ask\",outcome=\"timeout\"}}"
            ),
            1.0,
        ),
    ] {
        let found = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{line} ")))
            .with_context(|| format!("{line} in\n{text}"))?;
        assert_eq!(found.parse::<f64>()?, value, "{line}");
    }
    let tokens: f64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "partnerplane_copilot_model_tokens_total{{{copilot_label},endpoint=\"ask\"}} "
            ))
        })
        .context("model tokens")?
        .parse()?;
    assert!(tokens > 0.0);
    assert!(text.contains("partnerplane_copilot_request_duration_seconds_bucket{"));
    let mut label_names = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, labels)) = line.split_once('{') {
            let labels = labels.rsplit_once('}').map(|(l, _)| l).unwrap_or("");
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                label_names.insert(
                    pair.split_once('=')
                        .map(|(k, _)| k.to_string())
                        .unwrap_or_default(),
                );
            }
        }
    }
    assert!(
        label_names
            .iter()
            .all(|l| ["copilot", "endpoint", "outcome", "le"].contains(&l.as_str())),
        "{label_names:?}"
    );
    for word in ["P1", "cafeteria", "escalation", "msa-p1", "playbooks", KEY] {
        assert!(!text.contains(word), "{word} in the metrics");
    }
    let env_log = copilot.log.clone();
    copilot.stop().await?;

    // The same server with its credentials and key in OpenBao.
    let bao = testbed.bao_admin()?;
    let key_path = format!("{}/models/standin", vault.path);
    vaultrs::kv2::set(
        &bao,
        &vault.mount,
        &key_path,
        &HashMap::from([("apiKey", KEY)]),
    )
    .await?;
    let jwt = workload_token(client, namespace).await?;
    let token_file = repo_root().join(format!("e2e/.testbed/logs/copilot-{namespace}.token"));
    std::fs::write(&token_file, jwt)?;
    let vault_key = |path: String, field: &str| {
        json!({"vault": {"address": testbed.bao_addr, "authMount": "kubernetes",
            "authRole": vault.auth_role, "kvMount": vault.mount, "path": path, "field": field}})
    };
    let config = server_config(
        namespace,
        &schema,
        &standin.endpoint(),
        vault_key(format!("{}/credentials", vault.path), "PGPASSWORD"),
        vault_key(key_path, "apiKey"),
    );
    let from_vault = Copilot::start(
        &format!("{namespace}-vault"),
        &config,
        &[],
        Some(&token_file),
    )
    .await;
    let _ = std::fs::remove_file(&token_file);
    let from_vault = from_vault?;
    let (status, body) = from_vault.ask(ESCALATION, None).await?;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (StatusCode::OK, Some("answered")),
        "{body}"
    );
    assert_eq!(body["citations"][0]["document"], "escalation-playbook");
    let vault_log = from_vault.log.clone();
    from_vault.stop().await?;
    for log in [&env_log, &vault_log] {
        let text = std::fs::read_to_string(log)?;
        assert!(
            !text.contains(KEY) && !text.contains(&creds["PGPASSWORD"]),
            "a secret in {}",
            log.display()
        );
    }
    Ok(())
}

/// A token of the tenant's workload ServiceAccount for OpenBao's audience,
/// as the copilot pod's projected token volume holds.
async fn workload_token(client: &kube::Client, namespace: &str) -> anyhow::Result<String> {
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": [AUDIENCE]}}))?;
    Ok(Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(WORKLOAD_SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await?
        .status
        .context("token request status")?
        .token)
}

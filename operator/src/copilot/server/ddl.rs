//! The copilot's objects in the tenant schema, as SQL: the knowledge table
//! with its HNSW index, the retrieve function (approved sources only), the
//! audit log and the approvals queue. Pure: the controller runs the same
//! statements; the server itself never creates anything.
//!
//! pgvector lives in the `extensions` schema, so its type, operator classes
//! and operators are named there (`extensions.vector`,
//! `OPERATOR(extensions.<=>)`), and every object is schema-qualified: the
//! statements and the function body mean the same whatever the caller's
//! `search_path`.

use crate::api::copilot::{Distance, HnswParameters, SourceKind};
use crate::copilot::server_config::ServerConfig;
use crate::naming::quote_ident;

/// Schema of the pgvector extension.
pub const EXTENSIONS_SCHEMA: &str = "extensions";

/// The pgvector operator class and distance operator of `distance`.
pub fn distance_sql(distance: Distance) -> (&'static str, &'static str) {
    match distance {
        Distance::Cosine => ("vector_cosine_ops", "<=>"),
        Distance::L2 => ("vector_l2_ops", "<->"),
        Distance::InnerProduct => ("vector_ip_ops", "<#>"),
    }
}

/// Name of the HNSW index of a knowledge table (as in
/// [`crate::copilot::names::CopilotNames::index`]).
pub fn index_name(knowledge_table: &str) -> String {
    format!("{knowledge_table}_hnsw")
}

/// Names of the sources retrieval may return: the approved sources that
/// hold documents (sources of kind `MetricPipeline` are read from the
/// pipelines' result tables, never from the knowledge table).
pub fn document_sources(config: &ServerConfig) -> Vec<&str> {
    config
        .approved_sources
        .iter()
        .filter(|s| s.kind != SourceKind::MetricPipeline)
        .map(|s| s.name.as_str())
        .collect()
}

/// `text` as a standard SQL string constant.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The statements creating (or bringing up to date) a copilot's objects in
/// `config.database.schema`, with pgvector's default HNSW parameters.
pub fn schema_ddl(config: &ServerConfig) -> Vec<String> {
    schema_ddl_with_hnsw(config, &HnswParameters::default())
}

/// [`schema_ddl`] with the HNSW build parameters of the custom resource.
///
/// Idempotent: tables and indexes are created when missing, the retrieve
/// function is replaced, so running it again after a change of the
/// approved sources narrows or widens retrieval at once. The dimensions
/// are immutable; a changed distance needs the index dropped first.
pub fn schema_ddl_with_hnsw(config: &ServerConfig, hnsw: &HnswParameters) -> Vec<String> {
    let db = &config.database;
    let schema = quote_ident(&db.schema);
    let qualified = |name: &str| format!("{schema}.{}", quote_ident(name));
    let knowledge = qualified(&db.knowledge_table);
    let audit = qualified(&db.audit_table);
    let approvals = qualified(&db.approvals_table);
    let retrieve = qualified(&db.retrieve_function);
    let ext = quote_ident(EXTENSIONS_SCHEMA);
    let (opclass, operator) = distance_sql(db.distance);
    let sources = document_sources(config)
        .into_iter()
        .map(literal)
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {knowledge} (\
             id bigserial PRIMARY KEY, \
             source text NOT NULL, \
             document text NOT NULL, \
             chunk int NOT NULL, \
             content text NOT NULL, \
             embedding {ext}.vector({dims}) NOT NULL, \
             created_at timestamptz NOT NULL DEFAULT now())",
            dims = db.dimensions
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {knowledge} \
             USING hnsw (embedding {ext}.{opclass}) WITH (m = {m}, ef_construction = {ef})",
            index = quote_ident(&index_name(&db.knowledge_table)),
            m = hnsw.m,
            ef = hnsw.ef_construction
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {knowledge} (source, document)",
            index = quote_ident(&format!("{}_document", db.knowledge_table))
        ),
        format!(
            "CREATE OR REPLACE FUNCTION {retrieve}(q {ext}.vector, k int) \
             RETURNS TABLE (id bigint, source text, document text, chunk int, content text, distance float8) \
             LANGUAGE sql STABLE AS $retrieve$ \
             SELECT kn.id, kn.source, kn.document, kn.chunk, kn.content, \
             (kn.embedding OPERATOR({ext}.{operator}) q)::float8 \
             FROM {knowledge} kn \
             WHERE kn.source = ANY(ARRAY[{sources}]::text[]) \
             ORDER BY kn.embedding OPERATOR({ext}.{operator}) q \
             LIMIT k $retrieve$"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {audit} (\
             id bigserial PRIMARY KEY, \
             at timestamptz NOT NULL DEFAULT now(), \
             kind text NOT NULL, \
             prompt text, \
             response text, \
             citations bigint[] NOT NULL DEFAULT '{{}}', \
             confidence float8, \
             outcome text NOT NULL, \
             model text, \
             tokens int)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {audit} (at)",
            index = quote_ident(&format!("{}_at", db.audit_table))
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {approvals} (\
             id bigserial PRIMARY KEY, \
             requested_at timestamptz NOT NULL DEFAULT now(), \
             action text NOT NULL, \
             request text NOT NULL, \
             partner text, \
             status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')), \
             decided_at timestamptz, \
             decided_by text, \
             note text)"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {index} ON {approvals} (status)",
            index = quote_ident(&format!("{}_status", db.approvals_table))
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::copilot::{ApprovedSource, CopilotRole};
    use crate::api::metric::Identifier;
    use crate::copilot::names::CopilotNames;
    use crate::copilot::server_config::*;

    fn config(distance: Distance) -> ServerConfig {
        let names = CopilotNames::new("ptn-acme", "ops");
        let source = |name: &str, kind| ApprovedSource {
            name: Identifier(name.into()),
            kind,
            description: None,
        };
        ServerConfig {
            copilot: "ptn-acme/ops".into(),
            role: CopilotRole::PartnerOperations,
            branding: Branding::default(),
            model: Model {
                endpoint: "http://model/v1".into(),
                name: "m".into(),
                key: ModelKey::Env,
            },
            database: Database {
                schema: "tenant_acme".into(),
                knowledge_table: names.knowledge,
                retrieve_function: names.retrieve,
                audit_table: names.audit,
                approvals_table: names.approvals,
                dimensions: 384,
                distance,
                credentials: DatabaseCredentials::Env,
            },
            approved_sources: vec![
                source("playbooks", SourceKind::Playbooks),
                source("o'brien", SourceKind::Contracts),
                source("metrics", SourceKind::MetricPipeline),
            ],
            metric_result_tables: vec![],
            guardrails: Guardrails {
                human_approval_required: vec![],
                min_confidence: 0.5,
                audit_enabled: true,
            },
        }
    }

    #[test]
    fn retrieval_is_limited_to_approved_document_sources() {
        let ddl = schema_ddl(&config(Distance::Cosine));
        let function = ddl
            .iter()
            .find(|s| s.starts_with("CREATE OR REPLACE FUNCTION"))
            .unwrap();
        assert!(
            function.contains("ANY(ARRAY['playbooks', 'o''brien']::text[])"),
            "{function}"
        );
        assert!(!function.contains("'metrics'"), "{function}");
        assert!(function.contains("OPERATOR(\"extensions\".<=>) q"));
        assert!(function.contains("LANGUAGE sql STABLE"));
    }

    #[test]
    fn the_index_and_operator_follow_the_distance() {
        for (distance, class, op) in [
            (Distance::Cosine, "vector_cosine_ops", "<=>"),
            (Distance::L2, "vector_l2_ops", "<->"),
            (Distance::InnerProduct, "vector_ip_ops", "<#>"),
        ] {
            let ddl = schema_ddl(&config(distance)).join(";\n");
            assert!(
                ddl.contains(&format!("USING hnsw (embedding \"extensions\".{class}) WITH (m = 16, ef_construction = 64)")),
                "{ddl}"
            );
            assert!(ddl.contains(&format!("OPERATOR(\"extensions\".{op})")));
            assert!(ddl.contains("embedding \"extensions\".vector(384) NOT NULL"));
        }
    }

    #[test]
    fn no_approved_document_source_retrieves_nothing() {
        let mut c = config(Distance::Cosine);
        c.approved_sources
            .retain(|s| s.kind == SourceKind::MetricPipeline);
        let ddl = schema_ddl(&c).join("\n");
        assert!(ddl.contains("ANY(ARRAY[]::text[])"), "{ddl}");
    }

    #[test]
    fn every_name_is_schema_qualified_and_fits_postgres() {
        let c = config(Distance::Cosine);
        for statement in schema_ddl(&c) {
            assert!(statement.contains("\"tenant_acme\"."), "{statement}");
        }
        for name in [
            index_name(&c.database.knowledge_table),
            format!("{}_document", c.database.knowledge_table),
            format!("{}_status", c.database.approvals_table),
        ] {
            assert!(name.len() <= 63, "{name}");
        }
    }
}

//! A copilot's tables and retrieval function in the tenant schema. The
//! statements are the server's own ([`schema_ddl_with_hnsw`], so both sides
//! agree on every column); what exists is read from the catalog in one
//! query, and a pure plan picks the statements that change something — a
//! copilot whose objects are as declared issues no DDL. Every statement
//! runs in a transaction the caller opened as the tenant's role.
//!
//! The plan also keeps what `CREATE … IF NOT EXISTS` cannot: a changed
//! distance or HNSW parameter rebuilds the index, a changed list of
//! approved sources replaces the retrieval function, and a knowledge table
//! of another dimension is refused.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Transaction;

use crate::api::copilot::{Distance, HnswParameters};
use crate::copilot::names::CopilotNames;
use crate::copilot::server::ddl::{distance_sql, schema_ddl_with_hnsw};
use crate::copilot::server_config::ServerConfig;
use crate::naming::quote_ident;

/// Audit rows deleted per statement; a reconcile that deletes this many
/// comes back soon for the rest.
pub const RETENTION_BATCH: i64 = 10_000;
/// The audit table's time column (see [`schema_ddl_with_hnsw`]).
const AUDIT_TIME: &str = "at";

/// What the tenant schema should hold for one copilot.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub schema: String,
    pub names: CopilotNames,
    pub dimensions: i32,
    pub distance: Distance,
    pub hnsw: HnswParameters,
    /// The server's statements creating every object.
    pub statements: Vec<String>,
}

impl Desired {
    pub fn new(config: &ServerConfig, names: CopilotNames, hnsw: &HnswParameters) -> Self {
        Self {
            schema: config.database.schema.clone(),
            dimensions: config.database.dimensions,
            distance: config.database.distance,
            hnsw: hnsw.clone(),
            statements: schema_ddl_with_hnsw(config, hnsw),
            names,
        }
    }

    fn qualified(&self, name: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(name))
    }

    /// `"schema"."table"` of the knowledge table, as status shows it.
    pub fn knowledge_table(&self) -> String {
        self.qualified(&self.names.knowledge)
    }

    /// `"schema"."table"` of the audit table, as status shows it.
    pub fn audit_table(&self) -> String {
        self.qualified(&self.names.audit)
    }
}

/// pgvector's operator class for `distance`.
pub fn operator_class(distance: Distance) -> &'static str {
    distance_sql(distance).0
}

/// The copilot's objects as the catalog shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Tables and indexes of the schema named like the copilot's.
    pub relations: BTreeSet<String>,
    /// `format_type` of the knowledge table's `embedding` column.
    pub embedding_type: Option<String>,
    /// The HNSW index of the knowledge table.
    pub index: Option<ObservedIndex>,
    /// Body of the retrieval function (`prosrc`), when it exists.
    pub retrieve: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedIndex {
    /// Access method (`hnsw`).
    pub method: String,
    pub operator_class: String,
    /// Storage parameters (`m`, `ef_construction`).
    pub options: BTreeMap<String, String>,
    /// The table it indexes.
    pub table: String,
}

/// Why the plan cannot go on: only a change of the spec or of the schema helps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// The dimensions of a `vector(n)` type as `format_type` prints it
/// (`vector(1536)` or `extensions.vector(1536)`).
pub fn vector_dimensions(type_: &str) -> Option<i32> {
    let inner = type_.strip_suffix(')')?;
    let (name, n) = inner.rsplit_once('(')?;
    if name != "vector" && !name.ends_with(".vector") {
        return None;
    }
    n.trim().parse().ok()
}

/// What a statement makes, as far as the plan needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Makes {
    Table(String),
    Index(String),
    /// A function, with its body as the catalog keeps it (`prosrc`).
    Function(String),
    Other,
}

/// The last identifier of a (possibly qualified, quoted) name; the
/// copilot's names hold no quotes.
fn last_identifier(qualified: &str) -> String {
    let qualified = qualified.trim();
    match qualified.strip_suffix('"') {
        Some(rest) => match rest.rfind('"') {
            Some(start) => rest[start + 1..].to_string(),
            None => rest.to_string(),
        },
        None => qualified
            .rsplit('.')
            .next()
            .unwrap_or(qualified)
            .to_string(),
    }
}

/// The body of a dollar-quoted function definition.
fn function_body(statement: &str) -> Option<String> {
    let start = statement.find(" AS $")? + 4;
    let tag_end = statement[start + 1..].find('$')? + start + 2;
    let tag = &statement[start..tag_end];
    let body_end = statement[tag_end..].find(tag)? + tag_end;
    Some(statement[tag_end..body_end].to_string())
}

fn classify(statement: &str) -> Makes {
    if let Some(rest) = statement.strip_prefix("CREATE TABLE IF NOT EXISTS ") {
        let name = rest.split(" (").next().unwrap_or(rest);
        return Makes::Table(last_identifier(name));
    }
    if let Some(rest) = statement.strip_prefix("CREATE INDEX IF NOT EXISTS ") {
        let name = rest.split(" ON ").next().unwrap_or(rest);
        return Makes::Index(last_identifier(name));
    }
    if statement.starts_with("CREATE OR REPLACE FUNCTION ") {
        return function_body(statement).map_or(Makes::Other, Makes::Function);
    }
    Makes::Other
}

/// Plans the statements that bring the schema to `desired` (pure).
pub fn plan(desired: &Desired, observed: &Observed) -> Result<Vec<String>, Refusal> {
    let knowledge = desired.knowledge_table();
    let creating = !observed.relations.contains(&desired.names.knowledge);
    if !creating {
        let have = observed.embedding_type.as_deref();
        match have.and_then(vector_dimensions) {
            Some(n) if n == desired.dimensions => {}
            Some(n) => {
                return Err(Refusal(format!(
                    "knowledge table {knowledge} holds {n}-dimensional embeddings but spec.knowledge.index.dimensions is {}: \
                     dimensions cannot change in place (every stored embedding would be invalid); \
                     create a new CopilotDeployment for the new embedding model",
                    desired.dimensions
                )));
            }
            None => {
                return Err(Refusal(format!(
                    "knowledge table {knowledge} has embedding column {}, not vector({}): \
                     the operator does not rework a table it did not make that way",
                    have.unwrap_or("(none)"),
                    desired.dimensions
                )));
            }
        }
    }
    let index_matches = observed.index.as_ref().is_some_and(|i| {
        i.method == "hnsw"
            && i.table == desired.names.knowledge
            && i.operator_class == operator_class(desired.distance)
            && i.options.get("m") == Some(&desired.hnsw.m.to_string())
            && i.options.get("ef_construction") == Some(&desired.hnsw.ef_construction.to_string())
    });
    let mut out = vec![];
    for statement in &desired.statements {
        let run = match classify(statement) {
            Makes::Table(name) => !observed.relations.contains(&name),
            Makes::Index(name) if name == desired.names.index => {
                if !index_matches && observed.relations.contains(&name) {
                    out.push(format!("DROP INDEX {}", desired.qualified(&name)));
                }
                !index_matches
            }
            Makes::Index(name) => !observed.relations.contains(&name),
            Makes::Function(body) => observed.retrieve.as_deref() != Some(body.as_str()),
            Makes::Other => creating,
        };
        if run {
            out.push(statement.clone());
        }
    }
    Ok(out)
}

/// Statements dropping everything the copilot made in `schema` (pure).
pub fn drop_all(schema: &str, names: &CopilotNames) -> Vec<String> {
    let q = |name: &str| format!("{}.{}", quote_ident(schema), quote_ident(name));
    vec![
        format!(
            "DROP FUNCTION IF EXISTS {}({}.vector, integer)",
            q(&names.retrieve),
            quote_ident(crate::backends::postgres::EXTENSIONS_SCHEMA)
        ),
        format!(
            "DROP TABLE IF EXISTS {}, {}, {}",
            q(&names.knowledge),
            q(&names.audit),
            q(&names.approvals)
        ),
    ]
}

/// Reads the copilot's objects from the catalog (one query).
pub async fn read(tx: &Transaction<'_>, d: &Desired) -> Result<Observed, tokio_postgres::Error> {
    let row = tx
        .query_one(
            "WITH rel AS (\
               SELECT c.oid, c.relname::text AS name, c.relkind, c.relam, c.reloptions \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname = $1 AND left(c.relname, length($2)) = $2 AND c.relkind IN ('r', 'p', 'i')) \
             SELECT \
               coalesce((SELECT array_agg(name) FROM rel), '{}')::text[], \
               (SELECT format_type(a.atttypid, a.atttypmod) FROM rel JOIN pg_attribute a ON a.attrelid = rel.oid \
                  WHERE rel.name = $3 AND rel.relkind IN ('r', 'p') AND a.attname = 'embedding' AND NOT a.attisdropped), \
               (SELECT am.amname::text FROM rel JOIN pg_am am ON am.oid = rel.relam WHERE rel.name = $4 AND rel.relkind = 'i'), \
               (SELECT opc.opcname::text FROM rel JOIN pg_index x ON x.indexrelid = rel.oid \
                  JOIN pg_opclass opc ON opc.oid = x.indclass[0] WHERE rel.name = $4 AND rel.relkind = 'i'), \
               (SELECT coalesce(rel.reloptions, '{}')::text[] FROM rel WHERE rel.name = $4 AND rel.relkind = 'i'), \
               (SELECT t.relname::text FROM rel JOIN pg_index x ON x.indexrelid = rel.oid \
                  JOIN pg_class t ON t.oid = x.indrelid WHERE rel.name = $4 AND rel.relkind = 'i'), \
               (SELECT p.prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                  WHERE n.nspname = $1 AND p.proname = $5 AND p.pronargs = 2 LIMIT 1)",
            &[
                &d.schema,
                &d.names.stem,
                &d.names.knowledge,
                &d.names.index,
                &d.names.retrieve,
            ],
        )
        .await?;
    let method: Option<String> = row.get(2);
    let index = method.map(|method| ObservedIndex {
        method,
        operator_class: row.get::<_, Option<String>>(3).unwrap_or_default(),
        options: row
            .get::<_, Option<Vec<String>>>(4)
            .unwrap_or_default()
            .iter()
            .filter_map(|o| o.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        table: row.get::<_, Option<String>>(5).unwrap_or_default(),
    });
    Ok(Observed {
        relations: row.get::<_, Vec<String>>(0).into_iter().collect(),
        embedding_type: row.get(1),
        index,
        retrieve: row.get(6),
    })
}

/// Deletes at most [`RETENTION_BATCH`] audit rows older than `days`,
/// oldest first; returns how many went.
pub async fn expire_audit(
    tx: &Transaction<'_>,
    d: &Desired,
    days: i32,
) -> Result<u64, tokio_postgres::Error> {
    let t = d.audit_table();
    let at = quote_ident(AUDIT_TIME);
    tx.execute(
        &format!(
            "DELETE FROM {t} WHERE id IN (\
               SELECT id FROM {t} WHERE {at} < now() - make_interval(days => $1) \
               ORDER BY {at} LIMIT $2)"
        ),
        &[&days, &RETENTION_BATCH],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::copilot::{ApprovedSource, CopilotRole, SourceKind};
    use crate::api::metric::Identifier;
    use crate::copilot::server_config::*;

    fn config(distance: Distance, sources: &[&str]) -> ServerConfig {
        let names = CopilotNames::new("ns", "c");
        ServerConfig {
            copilot: "ns/c".into(),
            role: CopilotRole::Finance,
            branding: Branding::default(),
            model: Model {
                endpoint: "https://llm.example/v1".into(),
                name: "m".into(),
                key: ModelKey::Env,
            },
            database: Database {
                schema: "tenant_acme_1".into(),
                knowledge_table: names.knowledge,
                retrieve_function: names.retrieve,
                audit_table: names.audit,
                approvals_table: names.approvals,
                dimensions: 384,
                distance,
                credentials: DatabaseCredentials::Env,
            },
            approved_sources: sources
                .iter()
                .map(|s| ApprovedSource {
                    name: Identifier((*s).into()),
                    kind: SourceKind::Contracts,
                    description: None,
                })
                .collect(),
            metric_result_tables: vec![],
            guardrails: Guardrails {
                human_approval_required: vec![],
                min_confidence: 0.7,
                audit_enabled: true,
            },
        }
    }

    fn desired_with(distance: Distance, sources: &[&str], m: i32) -> Desired {
        Desired::new(
            &config(distance, sources),
            CopilotNames::new("ns", "c"),
            &HnswParameters {
                m,
                ef_construction: 32,
            },
        )
    }

    fn desired() -> Desired {
        desired_with(Distance::L2, &["contracts", "tickets"], 8)
    }

    /// What the catalog shows once every statement of a first plan ran.
    fn converged(d: &Desired) -> Observed {
        let mut relations = BTreeSet::new();
        let mut retrieve = None;
        for statement in &d.statements {
            match classify(statement) {
                Makes::Table(n) | Makes::Index(n) => {
                    relations.insert(n);
                }
                Makes::Function(body) => retrieve = Some(body),
                Makes::Other => {}
            }
        }
        Observed {
            relations,
            embedding_type: Some(format!("extensions.vector({})", d.dimensions)),
            index: Some(ObservedIndex {
                method: "hnsw".into(),
                operator_class: operator_class(d.distance).into(),
                options: BTreeMap::from([
                    ("m".into(), d.hnsw.m.to_string()),
                    ("ef_construction".into(), d.hnsw.ef_construction.to_string()),
                ]),
                table: d.names.knowledge.clone(),
            }),
            retrieve,
        }
    }

    #[test]
    fn statements_are_recognised_by_what_they_make() {
        let d = desired();
        let kinds: Vec<Makes> = d.statements.iter().map(|s| classify(s)).collect();
        assert!(kinds.contains(&Makes::Table(d.names.knowledge.clone())));
        assert!(kinds.contains(&Makes::Table(d.names.audit.clone())));
        assert!(kinds.contains(&Makes::Table(d.names.approvals.clone())));
        assert!(kinds.contains(&Makes::Index(d.names.index.clone())));
        let body = kinds
            .iter()
            .find_map(|k| match k {
                Makes::Function(b) => Some(b.clone()),
                _ => None,
            })
            .unwrap();
        assert!(body.contains("ORDER BY"), "{body}");
        assert!(!body.contains('$'), "{body}");
        assert_eq!(last_identifier("\"s\".\"_pc_1\""), "_pc_1");
        assert_eq!(last_identifier("s.t"), "t");
    }

    #[test]
    fn an_empty_schema_gets_every_statement() {
        let d = desired();
        let statements = plan(&d, &Observed::default()).unwrap();
        assert_eq!(statements, d.statements);
        let all = statements.join(";\n");
        assert!(all.contains("embedding \"extensions\".vector(384) NOT NULL"));
        assert!(all.contains(
            "USING hnsw (embedding \"extensions\".vector_l2_ops) WITH (m = 8, ef_construction = 32)"
        ));
    }

    #[test]
    fn a_converged_schema_needs_no_statement() {
        let d = desired();
        assert_eq!(plan(&d, &converged(&d)).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_changed_list_of_approved_sources_replaces_the_function_only() {
        let d = desired();
        let fewer = desired_with(Distance::L2, &["contracts"], 8);
        let statements = plan(&fewer, &converged(&d)).unwrap();
        assert_eq!(statements.len(), 1, "{statements:?}");
        assert!(statements[0].starts_with("CREATE OR REPLACE FUNCTION"));
        assert!(!statements[0].contains("tickets"));
    }

    #[test]
    fn a_changed_distance_or_hnsw_parameter_rebuilds_the_index() {
        let d = desired();
        let cosine = desired_with(Distance::Cosine, &["contracts", "tickets"], 8);
        let statements = plan(&cosine, &converged(&d)).unwrap();
        assert!(statements[0].starts_with("DROP INDEX"), "{statements:?}");
        assert!(statements[1].contains("vector_cosine_ops"));
        assert!(
            statements
                .iter()
                .any(|s| s.contains("FUNCTION") && s.contains("<=>")),
            "the function orders by the new operator: {statements:?}"
        );
        let wider = desired_with(Distance::L2, &["contracts", "tickets"], 24);
        let statements = plan(&wider, &converged(&d)).unwrap();
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert!(statements[1].contains("m = 24"));
    }

    #[test]
    fn another_dimension_in_the_table_is_refused_with_both_numbers() {
        let d = desired();
        let mut observed = converged(&d);
        observed.embedding_type = Some("vector(768)".into());
        let Refusal(message) = plan(&d, &observed).unwrap_err();
        assert!(message.contains("768"), "{message}");
        assert!(message.contains("384"), "{message}");
        assert!(message.contains("spec.knowledge.index.dimensions"));
        observed.embedding_type = Some("text".into());
        assert!(plan(&d, &observed).is_err());
    }

    #[test]
    fn vector_types_parse_with_or_without_their_schema() {
        assert_eq!(vector_dimensions("vector(3)"), Some(3));
        assert_eq!(vector_dimensions("extensions.vector(1536)"), Some(1536));
        assert_eq!(vector_dimensions("halfvec(3)"), None);
        assert_eq!(vector_dimensions("vector"), None);
    }

    #[test]
    fn dropping_names_every_object() {
        let d = desired();
        let drops = drop_all(&d.schema, &d.names).join(";");
        for name in [
            &d.names.knowledge,
            &d.names.audit,
            &d.names.approvals,
            &d.names.retrieve,
        ] {
            assert!(drops.contains(name.as_str()), "{name}");
        }
    }
}

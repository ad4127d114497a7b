//! The workflow templates: n8n workflow JSON with `%%NAME%%` placeholders,
//! versioned, embedded in the binary so they ship with the operator. A
//! folder of files of the same form may replace them (`--workflow-templates`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::Value;

use crate::api::tenant::WorkflowTemplate;

/// The templates built into the binary.
const EMBEDDED: [&str; 4] = [
    include_str!("../../workflows/templates/sla-breach-escalation.json"),
    include_str!("../../workflows/templates/evidence-collection.json"),
    include_str!("../../workflows/templates/exception-routing.json"),
    include_str!("../../workflows/templates/weekly-partner-performance-pack.json"),
];

/// Every placeholder a template may use (`%%NAME%%`); README.md says what each is.
pub const PLACEHOLDERS: [&str; 13] = [
    "TENANT",
    "SCHEMA",
    "KEY_PREFIX",
    "VERSION",
    "WEBHOOK_PATH",
    "WEBHOOK_ID",
    "WAIT_WEBHOOK_ID",
    "POSTGRES_CREDENTIAL_ID",
    "POSTGRES_CREDENTIAL_NAME",
    "REDIS_CREDENTIAL_ID",
    "REDIS_CREDENTIAL_NAME",
    "WEBHOOK_CREDENTIAL_ID",
    "WEBHOOK_CREDENTIAL_NAME",
];

/// One template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub kind: WorkflowTemplate,
    /// Raised whenever the workflow changes; every tenant's copy follows.
    pub version: i32,
    /// Human-readable name, part of each copy's name.
    pub title: String,
    /// The workflow: `nodes`, `connections`, `settings`.
    workflow: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    template: WorkflowTemplate,
    version: i32,
    title: String,
    workflow: Value,
}

/// Parses and checks one template file.
pub fn parse(text: &str) -> anyhow::Result<Template> {
    let file: File = serde_json::from_str(text).context("not a workflow template")?;
    anyhow::ensure!(file.version >= 1, "version must be at least 1");
    anyhow::ensure!(
        !file.title.trim().is_empty() && file.title.len() <= 64,
        "title must be 1 to 64 characters"
    );
    anyhow::ensure!(
        file.workflow.get("nodes").is_some_and(Value::is_array),
        "workflow.nodes must be a list"
    );
    anyhow::ensure!(
        file.workflow
            .get("connections")
            .is_some_and(Value::is_object),
        "workflow.connections must be an object"
    );
    let template = Template {
        kind: file.template,
        version: file.version,
        title: file.title,
        workflow: file.workflow,
    };
    // Refused at start-up rather than at a tenant's reconcile.
    let every: BTreeMap<&str, String> = PLACEHOLDERS.iter().map(|p| (*p, String::new())).collect();
    template
        .render(&every)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(template)
}

/// Every template the operator offers, by kind.
#[derive(Debug, Clone)]
pub struct Catalog(BTreeMap<WorkflowTemplate, Template>);

impl Catalog {
    /// The templates built into the binary.
    pub fn embedded() -> Self {
        let mut all = BTreeMap::new();
        for text in EMBEDDED {
            // The unit tests parse every embedded template.
            let template = parse(text).expect("embedded templates are valid");
            all.insert(template.kind, template);
        }
        Self(all)
    }

    /// The embedded templates, each replaced by the `*.json` file in `dir`
    /// of the same kind.
    pub fn with_overrides(dir: &Path) -> anyhow::Result<Self> {
        let mut catalog = Self::embedded();
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let template = parse(&text).with_context(|| format!("{}", path.display()))?;
            catalog.0.insert(template.kind, template);
        }
        Ok(catalog)
    }

    pub fn get(&self, kind: WorkflowTemplate) -> Option<&Template> {
        self.0.get(&kind)
    }
}

impl Template {
    /// The workflow with every `%%NAME%%` replaced by `bindings[NAME]` (in
    /// JSON strings only, so values cannot break the document); an unbound
    /// placeholder is an error.
    pub fn render(&self, bindings: &BTreeMap<&str, String>) -> Result<Value, String> {
        let mut workflow = self.workflow.clone();
        substitute(&mut workflow, bindings)?;
        Ok(workflow)
    }

    /// Whether a webhook starts the workflow (breaches can be delivered to it).
    pub fn has_webhook(&self) -> bool {
        self.workflow["nodes"]
            .as_array()
            .is_some_and(|nodes| nodes.iter().any(|n| n["type"] == "n8n-nodes-base.webhook"))
    }
}

fn substitute(value: &mut Value, bindings: &BTreeMap<&str, String>) -> Result<(), String> {
    match value {
        Value::String(text) => *text = fill(text, bindings)?,
        Value::Array(items) => {
            for item in items {
                substitute(item, bindings)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                substitute(item, bindings)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn fill(text: &str, bindings: &BTreeMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("%%") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("%%")
            .ok_or_else(|| format!("unterminated placeholder in {text:?}"))?;
        let name = &after[..end];
        let value = bindings
            .get(name)
            .ok_or_else(|| format!("unknown placeholder %%{name}%%"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placeholder a template may use.
    pub(crate) fn bindings() -> BTreeMap<&'static str, String> {
        PLACEHOLDERS
            .into_iter()
            .map(|k| (k, format!("<{k}>")))
            .collect()
    }

    #[test]
    fn every_template_is_embedded_once_and_renders_completely() {
        let catalog = Catalog::embedded();
        for kind in [
            WorkflowTemplate::SlaBreachEscalation,
            WorkflowTemplate::EvidenceCollection,
            WorkflowTemplate::ExceptionRouting,
            WorkflowTemplate::WeeklyPartnerPerformancePack,
        ] {
            let template = catalog.get(kind).expect("embedded");
            let rendered = template.render(&bindings()).unwrap().to_string();
            assert!(!rendered.contains("%%"), "{kind:?} left a placeholder");
            assert!(rendered.contains("<TENANT>"), "{kind:?} names its tenant");
        }
    }

    #[test]
    fn breaches_reach_the_templates_a_webhook_starts() {
        let catalog = Catalog::embedded();
        let webhook = |k| catalog.get(k).unwrap().has_webhook();
        assert!(webhook(WorkflowTemplate::SlaBreachEscalation));
        assert!(webhook(WorkflowTemplate::ExceptionRouting));
        assert!(!webhook(WorkflowTemplate::EvidenceCollection));
        assert!(!webhook(WorkflowTemplate::WeeklyPartnerPerformancePack));
    }

    #[test]
    fn values_stay_inside_their_strings() {
        let template = parse(
            r#"{"template":"EvidenceCollection","version":2,"title":"t",
                "workflow":{"nodes":[{"name":"%%TENANT%% says \"hi\""}],"connections":{}}}"#,
        )
        .unwrap();
        let mut b = BTreeMap::new();
        b.insert("TENANT", r#"a"b\c"#.to_string());
        let out = template.render(&b).unwrap();
        assert_eq!(out["nodes"][0]["name"], r#"a"b\c says "hi""#);
    }

    #[test]
    fn unknown_or_broken_placeholders_are_errors() {
        let b = BTreeMap::new();
        assert_eq!(
            fill("x %%NOPE%% y", &b).unwrap_err(),
            "unknown placeholder %%NOPE%%"
        );
        assert!(fill("x %%NOPE", &b).is_err());
        assert_eq!(fill("no placeholder", &b).unwrap(), "no placeholder");
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(parse("{}").is_err());
        assert!(
            parse(r#"{"template":"EvidenceCollection","version":0,"title":"t","workflow":{"nodes":[],"connections":{}}}"#)
                .is_err()
        );
        assert!(
            parse(r#"{"template":"Nope","version":1,"title":"t","workflow":{"nodes":[],"connections":{}}}"#)
                .is_err()
        );
        let unknown = parse(
            r#"{"template":"EvidenceCollection","version":1,"title":"t","workflow":{"nodes":[{"name":"%%NOPE%%"}],"connections":{}}}"#,
        );
        assert!(unknown.unwrap_err().to_string().contains("%%NOPE%%"));
    }
}

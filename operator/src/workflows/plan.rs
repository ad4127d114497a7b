//! What to change in n8n so the tenant's workflows match the desired ones.
//! A workflow is compared by what the template sets (n8n adds node ids and
//! settings of its own), so only a real difference leads to a write.

use serde_json::{Map, Value};

use crate::api::tenant::WorkflowTemplate;
use crate::backends::n8n::{Workflow, WorkflowBody};

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Create(WorkflowTemplate),
    /// The definition differs (edited in n8n, or a new template version or
    /// credential); replace it.
    Update(WorkflowTemplate, String),
    /// Matches but is inactive.
    Activate(WorkflowTemplate, String),
    /// Not desired (template disabled) or a second copy.
    Delete(String),
}

/// The steps from `observed` (the tenant's tagged workflows) to `desired`.
pub fn plan(desired: &[(WorkflowTemplate, WorkflowBody)], observed: &[Workflow]) -> Vec<Step> {
    let mut steps = vec![];
    let mut used = vec![false; observed.len()];
    for (template, body) in desired {
        // The first copy by name is kept; a matching one is preferred.
        let candidates: Vec<usize> = (0..observed.len())
            .filter(|&i| !used[i] && observed[i].name == body.name)
            .collect();
        let pick = candidates
            .iter()
            .copied()
            .find(|&i| same(body, &observed[i]))
            .or_else(|| candidates.first().copied());
        match pick {
            None => steps.push(Step::Create(*template)),
            Some(i) => {
                used[i] = true;
                let w = &observed[i];
                if !same(body, w) {
                    steps.push(Step::Update(*template, w.id.clone()));
                } else if !w.active {
                    steps.push(Step::Activate(*template, w.id.clone()));
                }
            }
        }
    }
    for (i, w) in observed.iter().enumerate() {
        if !used[i] {
            steps.push(Step::Delete(w.id.clone()));
        }
    }
    steps
}

/// Node fields a template sets; n8n adds others (`id`).
const NODE_FIELDS: [&str; 7] = [
    "name",
    "type",
    "typeVersion",
    "position",
    "parameters",
    "credentials",
    "webhookId",
];

fn node_view(node: &Value) -> Value {
    let mut out = Map::new();
    for field in NODE_FIELDS {
        if let Some(v) = node.get(field) {
            out.insert(field.into(), v.clone());
        }
    }
    Value::Object(out)
}

/// Whether `observed` is what `desired` defines: same nodes (in any order),
/// connections, and every setting the template sets.
pub fn same(desired: &WorkflowBody, observed: &Workflow) -> bool {
    let sorted = |nodes: &[Value]| {
        let mut v: Vec<Value> = nodes.iter().map(node_view).collect();
        v.sort_by_key(|n| n["name"].as_str().unwrap_or_default().to_string());
        v
    };
    let settings_kept = desired.settings.as_object().is_none_or(|want| {
        want.iter()
            .all(|(k, v)| observed.settings.get(k) == Some(v))
    });
    desired.name == observed.name
        && sorted(&desired.nodes) == sorted(&observed.nodes)
        && desired.connections == observed.connections
        && settings_kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SLA: WorkflowTemplate = WorkflowTemplate::SlaBreachEscalation;
    const PACK: WorkflowTemplate = WorkflowTemplate::WeeklyPartnerPerformancePack;

    fn body(name: &str, query: &str) -> WorkflowBody {
        WorkflowBody {
            name: name.into(),
            nodes: vec![
                json!({"name": "Breach", "type": "n8n-nodes-base.webhook", "typeVersion": 2, "position": [0, 0], "parameters": {"path": "p"}}),
                json!({"name": "Query", "type": "n8n-nodes-base.postgres", "typeVersion": 2.6, "position": [1, 0], "parameters": {"query": query}}),
            ],
            connections: json!({"Breach": {"main": [[{"node": "Query", "type": "main", "index": 0}]]}}),
            settings: json!({"executionOrder": "v1"}),
        }
    }

    /// What n8n answers: node ids and settings of its own added, nodes reordered.
    fn stored(id: &str, b: &WorkflowBody, active: bool) -> Workflow {
        let mut nodes: Vec<Value> = b
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut n = n.clone();
                n["id"] = json!(format!("node-{i}"));
                n
            })
            .collect();
        nodes.reverse();
        let mut settings = b.settings.clone();
        settings["callerPolicy"] = json!("workflowsFromSameOwner");
        Workflow {
            id: id.into(),
            name: b.name.clone(),
            active,
            nodes,
            connections: b.connections.clone(),
            settings,
            tags: vec![],
        }
    }

    #[test]
    fn nothing_is_written_when_n8n_shows_the_desired_workflows() {
        let b = body("acme: SLA", "select 1");
        assert_eq!(plan(&[(SLA, b.clone())], &[stored("w1", &b, true)]), vec![]);
    }

    #[test]
    fn missing_workflows_are_created_and_inactive_ones_activated() {
        let b = body("acme: SLA", "select 1");
        assert_eq!(plan(&[(SLA, b.clone())], &[]), vec![Step::Create(SLA)]);
        assert_eq!(
            plan(&[(SLA, b.clone())], &[stored("w1", &b, false)]),
            vec![Step::Activate(SLA, "w1".into())]
        );
    }

    #[test]
    fn an_edited_or_outdated_workflow_is_replaced() {
        let want = body("acme: SLA", "select 2");
        let edited = stored("w1", &body("acme: SLA", "select 1"), true);
        assert_eq!(
            plan(&[(SLA, want.clone())], &[edited]),
            vec![Step::Update(SLA, "w1".into())]
        );
        let mut rewired = stored("w1", &want, true);
        rewired.connections = json!({});
        assert_eq!(
            plan(&[(SLA, want)], &[rewired]),
            vec![Step::Update(SLA, "w1".into())]
        );
    }

    #[test]
    fn disabled_templates_and_second_copies_are_deleted() {
        let sla = body("acme: SLA", "q");
        let pack = body("acme: Pack", "q");
        let observed = [
            stored("w1", &sla, true),
            stored("w2", &pack, true),
            stored("w3", &sla, true),
        ];
        assert_eq!(
            plan(&[(SLA, sla)], &observed),
            vec![Step::Delete("w2".into()), Step::Delete("w3".into())]
        );
        let _ = PACK;
    }

    #[test]
    fn a_matching_copy_is_kept_over_an_edited_one() {
        let sla = body("acme: SLA", "q");
        let edited = stored("w1", &body("acme: SLA", "other"), true);
        let good = stored("w2", &sla, true);
        assert_eq!(
            plan(&[(SLA, sla)], &[edited, good]),
            vec![Step::Delete("w1".into())]
        );
    }
}

//! Deterministic names of a tenant's objects in n8n, within n8n's limits
//! (tags 24 characters, workflow and credential names 128): a readable part
//! and, when that would not fit, a hash of the whole.

use sha2::{Digest, Sha256};

use crate::api::tenant::WorkflowTemplate;

const TAG_MAX: usize = 24;
const NAME_MAX: usize = 128;

fn hash8(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..4])
}

/// `prefix` + `name` + `suffix`, with `name` cut and hashed when too long.
fn fit(prefix: &str, name: &str, suffix: &str, max: usize) -> String {
    let full = format!("{prefix}{name}{suffix}");
    if full.len() <= max {
        return full;
    }
    let room = max.saturating_sub(prefix.len() + suffix.len() + 9);
    let cut: String = name.chars().take(room).collect();
    format!("{prefix}{cut}-{}{suffix}", hash8(name))
}

/// The tag every workflow of the tenant carries.
pub fn tag(tenant: &str) -> String {
    fit("pp-", tenant, "", TAG_MAX)
}

/// Short, URL-safe name of a template.
pub fn slug(template: WorkflowTemplate) -> &'static str {
    match template {
        WorkflowTemplate::SlaBreachEscalation => "sla-breach-escalation",
        WorkflowTemplate::EvidenceCollection => "evidence-collection",
        WorkflowTemplate::ExceptionRouting => "exception-routing",
        WorkflowTemplate::WeeklyPartnerPerformancePack => "weekly-partner-performance-pack",
    }
}

/// The name of the tenant's workflow made from a template titled `title`.
pub fn workflow(tenant: &str, title: &str) -> String {
    fit("", tenant, &format!(": {title}"), NAME_MAX)
}

/// The path of the tenant's webhook of `template`, under n8n's `/webhook/`.
pub fn webhook_path(tenant: &str, template: WorkflowTemplate) -> String {
    fit(
        "partnerplane/",
        tenant,
        &format!("/{}", slug(template)),
        NAME_MAX,
    )
}

/// A stable UUID for a webhook node (n8n registers webhooks by it).
pub fn webhook_id(tenant: &str, template: WorkflowTemplate, node: &str) -> String {
    let digest = Sha256::digest(format!("{tenant}\0{}\0{node}", slug(template)).as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    // Version 8 (custom), RFC 4122 variant.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// What every credential name of the tenant starts with (space included,
/// so no other tenant's name is a prefix of it).
pub fn credential_prefix(tenant: &str) -> String {
    // 100 leaves room for the purpose and fingerprint within NAME_MAX.
    fit("partnerplane ", tenant, " ", 100)
}

/// The name of the tenant's credential for `purpose`; `fingerprint` changes
/// whenever its content does, so a changed credential is a new one.
pub fn credential(tenant: &str, purpose: &str, fingerprint: &str) -> String {
    format!("{}{purpose} {fingerprint}", credential_prefix(tenant))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_stay_readable() {
        assert_eq!(tag("acme"), "pp-acme");
        assert_eq!(
            workflow("acme", "SLA-breach escalation"),
            "acme: SLA-breach escalation"
        );
        assert_eq!(
            webhook_path("acme", WorkflowTemplate::SlaBreachEscalation),
            "partnerplane/acme/sla-breach-escalation"
        );
        assert_eq!(
            credential("acme", "postgres", "0a1b2c3d"),
            "partnerplane acme postgres 0a1b2c3d"
        );
    }

    #[test]
    fn long_names_fit_and_stay_apart() {
        let a = "a".repeat(200) + "-one";
        let b = "a".repeat(200) + "-two";
        for f in [tag, |t: &str| {
            workflow(t, "Weekly partner performance pack")
        }] {
            let (x, y) = (f(&a), f(&b));
            assert_ne!(x, y);
            assert!(x.len() <= NAME_MAX);
        }
        assert!(tag(&a).len() <= TAG_MAX && tag(&a).starts_with("pp-aaaa"));
        assert_eq!(tag(&a), tag(&a));
        assert!(credential(&a, "postgres", "01234567").len() <= NAME_MAX);
        assert!(credential(&a, "postgres", "01234567").ends_with(" postgres 01234567"));
    }

    #[test]
    fn webhook_ids_are_stable_uuids_per_tenant_template_and_node() {
        let id = webhook_id("acme", WorkflowTemplate::ExceptionRouting, "Exception");
        assert_eq!(
            id,
            webhook_id("acme", WorkflowTemplate::ExceptionRouting, "Exception")
        );
        assert_ne!(
            id,
            webhook_id("acme", WorkflowTemplate::ExceptionRouting, "Wait")
        );
        assert_ne!(
            id,
            webhook_id("beta", WorkflowTemplate::ExceptionRouting, "Exception")
        );
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "8");
    }
}

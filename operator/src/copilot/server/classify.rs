//! Which guarded action a question asks for, if any: a deterministic word
//! classifier, so the same question always takes the same path and the
//! decision never depends on what a model says.
//!
//! It errs on the side of asking a human: a question that merely mentions
//! changing a contract is routed for approval too. The rules, in the order
//! they are tried (the first match wins):
//!
//! | action | matches |
//! |---|---|
//! | `Credits` | credit, refund, rebate, discount, reimburse (any inflection) |
//! | `ContractChanges` | amend…, renegotiate…; or a contract word (contract, agreement, term(s), renewal, SOW, MSA) with a change word (change, modify, alter, extend, renew, terminate, cancel, update, revise, rewrite, shorten, upgrade, downgrade) |
//! | `ComplianceExceptions` | waive…, exempt…, exception(s); or a compliance word (compliance, certification, insurance, audit, requirement) with an override word (override, bypass, skip, ignore, overlook, excuse) |
//! | `CustomerCommitments` | commit, commitment, guarantee, promise, pledge (any inflection) |
//!
//! Only the actions the copilot's guardrails list are looked for.

use crate::api::copilot::GuardedAction;

/// The order actions are tried in.
const ORDER: [GuardedAction; 4] = [
    GuardedAction::Credits,
    GuardedAction::ContractChanges,
    GuardedAction::ComplianceExceptions,
    GuardedAction::CustomerCommitments,
];

/// The lower-case words of `text`.
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn any_of(words: &[String], set: &[&str]) -> bool {
    words.iter().any(|w| set.contains(&w.as_str()))
}

fn any_prefix(words: &[String], prefixes: &[&str]) -> bool {
    words
        .iter()
        .any(|w| prefixes.iter().any(|p| w.starts_with(p)))
}

fn credits(w: &[String]) -> bool {
    any_of(
        w,
        &[
            "credit",
            "credits",
            "credited",
            "crediting",
            "refund",
            "refunds",
            "refunded",
            "refunding",
            "rebate",
            "rebates",
            "discount",
            "discounts",
            "discounted",
            "discounting",
            "reimburse",
            "reimburses",
            "reimbursed",
            "reimbursement",
        ],
    )
}

fn contract_changes(w: &[String]) -> bool {
    any_prefix(w, &["amend", "renegotiat"])
        || any_of(
            w,
            &[
                "contract",
                "contracts",
                "contractual",
                "agreement",
                "agreements",
                "term",
                "terms",
                "renewal",
                "renewals",
                "sow",
                "msa",
            ],
        ) && any_of(
            w,
            &[
                "change",
                "changes",
                "changed",
                "changing",
                "modify",
                "modifies",
                "modified",
                "modification",
                "alter",
                "altered",
                "extend",
                "extended",
                "extension",
                "renew",
                "renewed",
                "terminate",
                "terminated",
                "termination",
                "cancel",
                "cancelled",
                "canceled",
                "update",
                "updated",
                "revise",
                "revised",
                "rewrite",
                "shorten",
                "upgrade",
                "downgrade",
            ],
        )
}

fn compliance_exceptions(w: &[String]) -> bool {
    any_prefix(w, &["waiv", "exempt"])
        || any_of(w, &["exception", "exceptions"])
        || any_of(
            w,
            &[
                "compliance",
                "compliant",
                "noncompliant",
                "certification",
                "certifications",
                "insurance",
                "audit",
                "audits",
                "requirement",
                "requirements",
            ],
        ) && any_of(
            w,
            &[
                "override", "overrule", "bypass", "skip", "ignore", "overlook", "excuse",
            ],
        )
}

fn customer_commitments(w: &[String]) -> bool {
    any_of(
        w,
        &[
            "commit",
            "commits",
            "committed",
            "committing",
            "commitment",
            "commitments",
            "guarantee",
            "guarantees",
            "guaranteed",
            "guaranteeing",
            "promise",
            "promises",
            "promised",
            "pledge",
            "pledges",
            "pledged",
        ],
    )
}

fn matches(action: GuardedAction, words: &[String]) -> bool {
    match action {
        GuardedAction::Credits => credits(words),
        GuardedAction::ContractChanges => contract_changes(words),
        GuardedAction::ComplianceExceptions => compliance_exceptions(words),
        GuardedAction::CustomerCommitments => customer_commitments(words),
    }
}

/// The guarded action `question` asks for, among `required`.
pub fn classify(question: &str, required: &[GuardedAction]) -> Option<GuardedAction> {
    let words = words(question);
    ORDER
        .into_iter()
        .filter(|a| required.contains(a))
        .find(|a| matches(*a, &words))
}

/// A short description of `action`, for answers and approval requests.
pub fn describe(action: GuardedAction) -> &'static str {
    match action {
        GuardedAction::Credits => "issuing a credit, refund, rebate or discount",
        GuardedAction::ContractChanges => "changing a contract",
        GuardedAction::ComplianceExceptions => "granting a compliance exception",
        GuardedAction::CustomerCommitments => "making a commitment to a customer",
    }
}

/// The partner a question names: the word after "partner" when it looks
/// like an identifier (holds a digit, or is upper case), such as `P1` in
/// "issue partner P1 a credit".
pub fn partner_named(question: &str) -> Option<String> {
    let tokens: Vec<&str> = question
        .split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    tokens.windows(2).find_map(|pair| {
        let looks_like_id = pair[1].chars().any(|c| c.is_ascii_digit())
            || (pair[1].len() > 1 && pair[1].chars().all(|c| !c.is_lowercase()));
        (pair[0].eq_ignore_ascii_case("partner") && looks_like_id).then(|| pair[1].to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use GuardedAction::*;

    const ALL: [GuardedAction; 4] = ORDER;

    #[test]
    fn guarded_requests_are_recognised() {
        for (question, action) in [
            ("issue partner P1 a 10 % credit", Credits),
            ("Please refund the April invoice for P3", Credits),
            ("Can we give Northwind a rebate?", Credits),
            ("Offer P2 a discount on renewal", Credits),
            (
                "Amend the MSA with P4 to add weekend cover",
                ContractChanges,
            ),
            ("Extend the contract term of P2 by a year", ContractChanges),
            ("Change the renewal date in the agreement", ContractChanges),
            ("Renegotiate P5's SOW", ContractChanges),
            (
                "Waive the insurance requirement for P6",
                ComplianceExceptions,
            ),
            (
                "Grant P7 an exception to the audit schedule",
                ComplianceExceptions,
            ),
            (
                "Let P8 skip the certification requirement",
                ComplianceExceptions,
            ),
            (
                "Guarantee Contoso a four-hour response",
                CustomerCommitments,
            ),
            (
                "Promise the customer we fix it by Friday",
                CustomerCommitments,
            ),
            ("Commit to a 99.9% uptime for Fabrikam", CustomerCommitments),
        ] {
            assert_eq!(classify(question, &ALL), Some(action), "{question}");
        }
    }

    #[test]
    fn questions_about_facts_are_not_guarded() {
        for question in [
            "What is the first-time fix rate of partner P1?",
            "Which partners breached their SLA last month?",
            "When does the contract with P2 expire?",
            "Summarise the escalation playbook",
            "What is the compliance status of P3?",
            "Is P4 a promising partner for the north region?",
            "Who sits on the partner committee?",
            "How credible are the survey results?",
        ] {
            assert_eq!(classify(question, &ALL), None, "{question}");
        }
    }

    #[test]
    fn only_required_actions_are_looked_for_in_a_fixed_order() {
        let q = "Guarantee P1 a refund";
        assert_eq!(classify(q, &ALL), Some(Credits));
        assert_eq!(
            classify(q, &[CustomerCommitments]),
            Some(CustomerCommitments)
        );
        assert_eq!(classify(q, &[ContractChanges]), None);
        assert_eq!(classify(q, &[]), None);
    }

    #[test]
    fn the_classification_is_case_and_punctuation_blind() {
        assert_eq!(classify("CREDIT!!! partner-P1", &ALL), Some(Credits));
        assert_eq!(classify("re-fund", &ALL), None);
    }

    #[test]
    fn the_partner_named_in_a_question() {
        assert_eq!(
            partner_named("issue partner P1 a 10 % credit").as_deref(),
            Some("P1")
        );
        assert_eq!(
            partner_named("How is Partner ACME doing?").as_deref(),
            Some("ACME")
        );
        assert_eq!(partner_named("which partner is best?"), None);
        assert_eq!(partner_named("partner"), None);
    }
}

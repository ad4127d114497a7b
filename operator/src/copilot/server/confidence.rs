//! How sure the copilot is that its context answers a question.
//!
//! Each piece of context gets a similarity in [0, 1]:
//!
//! - a retrieved chunk, from the distance pgvector reports: for `Cosine`,
//!   `1 - distance`; for `L2`, `1 - distance² / 2`; for `InnerProduct`
//!   (pgvector returns the negated inner product), `-distance`. The last
//!   two equal the cosine similarity for unit-length embeddings, which is
//!   what OpenAI-compatible embedding models return;
//! - a metric result, from its name: the share of the words of the metric's
//!   name (`first_time_fix` → first, time, fix) that the question uses.
//!
//! The confidence is the mean of the top [`TOP`] similarities (of all there
//! are when fewer; 0 with no context), clamped to [0, 1]. When the model's
//! response states a confidence too, the lower of the two counts.

use crate::api::copilot::Distance;

/// How many of the best similarities are averaged.
pub const TOP: usize = 3;

/// The similarity of a chunk at `distance` (see the module's notes).
pub fn similarity(distance: Distance, d: f64) -> f64 {
    let s = match distance {
        Distance::Cosine => 1.0 - d,
        Distance::L2 => 1.0 - d * d / 2.0,
        Distance::InnerProduct => -d,
    };
    if s.is_finite() {
        s.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The similarity of a metric result named `metric` to `question`.
pub fn metric_relevance(metric: &str, question: &str) -> f64 {
    let asked: Vec<String> = question
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    let parts: Vec<String> = metric
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if parts.is_empty() {
        return 0.0;
    }
    let used = parts.iter().filter(|p| asked.contains(p)).count();
    used as f64 / parts.len() as f64
}

/// The mean of the top [`TOP`] of `similarities`.
pub fn confidence(similarities: &[f64]) -> f64 {
    let mut best: Vec<f64> = similarities
        .iter()
        .copied()
        .filter(|s| s.is_finite())
        .collect();
    best.sort_by(|a, b| b.total_cmp(a));
    best.truncate(TOP);
    if best.is_empty() {
        return 0.0;
    }
    (best.iter().sum::<f64>() / best.len() as f64).clamp(0.0, 1.0)
}

/// The confidence of an answer: retrieval's, or the model's when lower.
pub fn combine(retrieval: f64, model: Option<f64>) -> f64 {
    match model {
        Some(m) if m.is_finite() => retrieval.min(m.clamp(0.0, 1.0)),
        _ => retrieval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn similarities_per_distance() {
        assert!(close(similarity(Distance::Cosine, 0.0), 1.0));
        assert!(close(similarity(Distance::Cosine, 0.25), 0.75));
        assert!(close(similarity(Distance::Cosine, 1.5), 0.0));
        // Unit vectors at cosine 0.5 are sqrt(2 - 2 * 0.5) = 1 apart.
        assert!(close(similarity(Distance::L2, 1.0), 0.5));
        assert!(close(similarity(Distance::L2, 2.0), 0.0));
        assert!(close(similarity(Distance::InnerProduct, -0.8), 0.8));
        assert!(close(similarity(Distance::InnerProduct, 0.3), 0.0));
        assert_eq!(similarity(Distance::Cosine, f64::NAN), 0.0);
    }

    #[test]
    fn the_mean_of_the_best_three() {
        assert_eq!(confidence(&[]), 0.0);
        assert!(close(confidence(&[0.9]), 0.9));
        assert!(close(confidence(&[0.2, 0.9, 0.6]), (0.9 + 0.6 + 0.2) / 3.0));
        assert!(close(
            confidence(&[0.1, 0.9, 0.8, 0.7, 0.0]),
            (0.9 + 0.8 + 0.7) / 3.0
        ));
        assert!(close(confidence(&[f64::NAN, 0.5]), 0.5));
    }

    #[test]
    fn the_model_can_only_lower_it() {
        assert!(close(combine(0.8, None), 0.8));
        assert!(close(combine(0.8, Some(0.4)), 0.4));
        assert!(close(combine(0.4, Some(0.9)), 0.4));
        assert!(close(combine(0.8, Some(-1.0)), 0.0));
        assert!(close(combine(0.8, Some(f64::NAN)), 0.8));
    }

    #[test]
    fn metric_relevance_counts_the_words_of_the_name() {
        let q = "What is the first time fix rate of partner P1?";
        assert!(close(metric_relevance("first_time_fix", q), 1.0));
        assert!(close(metric_relevance("time_to_resolve", q), 1.0 / 3.0));
        assert!(close(metric_relevance("csat", q), 0.0));
        assert!(close(metric_relevance("", q), 0.0));
    }
}

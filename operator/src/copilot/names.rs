//! Names of a copilot's objects in the tenant schema: `_pc_` and a hash of
//! the copilot's namespace and name, so copilots never collide and a
//! recreated copilot finds its tables.

use sha2::{Digest, Sha256};

/// Prefix of every copilot table and function.
pub const PREFIX: &str = "_pc_";

/// Tables and functions of one copilot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopilotNames {
    pub stem: String,
    /// Chunks and their embeddings: `id bigserial`, `source text`,
    /// `document text`, `chunk int`, `content text`, `embedding vector(n)`,
    /// `created_at timestamptz`.
    pub knowledge: String,
    /// HNSW index on `knowledge.embedding`.
    pub index: String,
    /// `retrieve(query vector, k int)` returning `(id, source, document,
    /// chunk, content, distance)` from approved sources only, nearest first.
    pub retrieve: String,
    /// Prompts, responses, citations, confidence and outcome.
    pub audit: String,
    /// Guarded actions waiting for a human.
    pub approvals: String,
}

impl CopilotNames {
    pub fn new(namespace: &str, name: &str) -> Self {
        let digest = Sha256::digest(format!("{namespace}/{name}").as_bytes());
        let stem = format!("{PREFIX}{}", hex::encode(&digest[..4]));
        Self {
            knowledge: format!("{stem}_knowledge"),
            index: format!("{stem}_knowledge_hnsw"),
            retrieve: format!("{stem}_retrieve"),
            audit: format!("{stem}_audit"),
            approvals: format!("{stem}_approvals"),
            stem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_differ_per_copilot_and_fit_postgres() {
        let (a, b) = (CopilotNames::new("ns", "a"), CopilotNames::new("ns", "b"));
        assert_ne!(a.stem, b.stem);
        for n in [&a.knowledge, &a.index, &a.retrieve, &a.audit, &a.approvals] {
            assert!(n.len() <= 63 && n.starts_with(PREFIX), "{n}");
        }
    }
}

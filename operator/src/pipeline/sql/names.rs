//! Names of a pipeline's derived objects in the tenant schema. Every one
//! starts with `_pp_` and a hash of the pipeline's namespace and name, so
//! two pipelines never collide and a recreated pipeline finds its tables.

use sha2::{Digest, Sha256};

use super::PipelineKey;

/// Prefix of every derived object.
pub const DERIVED_PREFIX: &str = "_pp_";
/// Column every source table carries: the transaction that inserted the row.
pub const XID_COLUMN: &str = "_pp_xid";
/// That transaction as a number: what the source's BRIN index holds (there
/// is no BRIN operator class for `xid8`), so "written since" finds new rows
/// through it.
pub const XID_NUMBER: &str = "((_pp_xid::text)::bigint)";

/// Columns of a source's change log besides the source's own: the
/// transaction that logged the change, whether it was a `TRUNCATE`, the
/// sign of the row image (-1 the row before, +1 after) and the row's own
/// insert transaction.
pub const LOG_XID: &str = "_pp_log_xid";
pub const LOG_TRUNCATED: &str = "_pp_truncated";
pub const LOG_SIGN: &str = "_pp_sign";
pub const LOG_ROW: &str = "_pp_row";

fn hash8(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    hex::encode(&digest[..4])
}

/// Derived object names of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedNames {
    /// `_pp_<hash>`, the stem of every name below.
    pub stem: String,
    /// Partial aggregates per (metric, partner, dimensions, bucket).
    pub rollup: String,
    /// The rollup's one index, unique per row and leading with (metric,
    /// bucket, partner): window reads, key deletes and upserts all use it.
    pub rollup_key: String,
    /// Per-partner values per refresh, for BI tools and copilots.
    pub results: String,
    /// The refresh watermark and each metric's definition.
    pub state: String,
    /// Open breaches.
    pub breaches: String,
    /// Webhook deliveries.
    pub outbox: String,
    /// Work table: the (metric, partner, bucket) keys one refresh recomputes.
    pub keys: String,
    /// Each metric's partial aggregates merged over its current window,
    /// what results are computed from.
    pub window: String,
    /// The window table's one index, unique per row.
    pub window_key: String,
}

impl DerivedNames {
    pub fn new(key: &PipelineKey) -> Self {
        let stem = format!(
            "{DERIVED_PREFIX}{}",
            hash8(&format!("{}/{}", key.namespace, key.name))
        );
        Self {
            rollup: format!("{stem}_rollup"),
            rollup_key: format!("{stem}_rollup_bpk"),
            window_key: format!("{stem}_window_key"),
            results: format!("{stem}_results"),
            state: format!("{stem}_state"),
            breaches: format!("{stem}_breaches"),
            outbox: format!("{stem}_outbox"),
            keys: format!("{stem}_keys"),
            window: format!("{stem}_window"),
            stem,
        }
    }

    /// The change log of one source table (rows updated or deleted).
    pub fn changes(&self, source: &str) -> String {
        format!("{}_chg_{}", self.stem, hash8(source))
    }

    /// What every capture function of one source table is called before
    /// the part naming its columns.
    pub fn capture_prefix(&self, source: &str) -> String {
        format!("{}_cap_{}_", self.stem, hash8(source))
    }

    /// The trigger function capturing changes of one source table, named
    /// after its body: a function that logs other columns, or logs them
    /// differently, gets a new name (and the old one is dropped).
    pub fn capture(&self, source: &str, body: &str) -> String {
        format!("{}{}", self.capture_prefix(source), hash8(body))
    }

    /// What every index the pipeline makes on one source table is called
    /// before the part naming its columns.
    pub fn index_prefix(&self, source: &str) -> String {
        format!("{}_ix_{}_", self.stem, hash8(source))
    }

    /// The indexes on a source's transaction column (a BRIN index, `_xb`:
    /// it costs an insert almost nothing), time column and (partner, time).
    pub fn indexes(&self, source: &str, partner: &str, time: &str) -> [String; 3] {
        let stem = format!(
            "{}{}",
            self.index_prefix(source),
            hash8(&format!("{partner}/{time}"))
        );
        [
            format!("{stem}_xb"),
            format!("{stem}_t"),
            format!("{stem}_p"),
        ]
    }
}

/// The comment that marks a table as a source of the pipeline `namespace/name`.
pub fn source_marker(key: &PipelineKey) -> String {
    format!("partnerplane source of {}/{}", key.namespace, key.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> PipelineKey {
        PipelineKey {
            namespace: "ns".into(),
            name: name.into(),
            uid: "u".into(),
        }
    }

    #[test]
    fn names_fit_postgres_and_differ_per_pipeline() {
        let (a, b) = (DerivedNames::new(&key("a")), DerivedNames::new(&key("b")));
        assert_ne!(a.stem, b.stem);
        let long = "s".repeat(63);
        let (changes, capture) = (a.changes(&long), a.capture(&long, &long));
        let [x, t, p] = a.indexes(&long, &long, &long);
        for name in [
            a.rollup, a.results, a.state, a.breaches, a.outbox, a.keys, a.window, changes, capture,
            x, t, p,
        ] {
            // Room for the trigger suffix `_truncate`.
            assert!(
                name.len() + 9 <= 63 && name.starts_with(DERIVED_PREFIX),
                "{name}"
            );
        }
    }
}

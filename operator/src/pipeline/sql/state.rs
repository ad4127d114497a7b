//! The pipeline's state table (watermark, definitions, how far back each
//! metric is kept, results anchor, where result thinning got to): read with the refresh's first
//! statement, changed in memory, and written back in one statement — only
//! the keys whose value changed, so an idle refresh writes nothing.

use std::collections::BTreeMap;

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::SqlError;

/// The state as read, and the changes a refresh made to it.
#[derive(Debug, Default)]
pub struct State {
    known: BTreeMap<String, String>,
    pending: BTreeMap<String, String>,
}

impl State {
    /// The state from `json_object_agg(key, value)` text.
    pub fn parse(json: &str) -> Result<Self, SqlError> {
        let known = serde_json::from_str(json).map_err(|e| SqlError::Refused {
            message: format!("the pipeline's state table holds something unexpected: {e}"),
        })?;
        Ok(Self {
            known,
            pending: BTreeMap::new(),
        })
    }

    /// The value as read (not as changed since).
    pub fn get(&self, key: &str) -> Option<&String> {
        self.known.get(key)
    }

    /// Every key as read.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.known.keys()
    }

    /// Records `key = value` to be written, unless it already holds it.
    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) {
        let (key, value) = (key.into(), value.into());
        if self.known.get(&key) == Some(&value) {
            self.pending.remove(&key);
        } else {
            self.pending.insert(key, value);
        }
    }

    /// What `flush` writes.
    pub fn pending(&self) -> &BTreeMap<String, String> {
        &self.pending
    }

    /// Writes the changed keys to `table` in one statement.
    pub async fn flush(&mut self, tx: &Transaction<'_>, table: &str) -> Result<(), SqlError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (keys, values): (Vec<&String>, Vec<&String>) = self.pending.iter().unzip();
        tx.query_typed(
            &format!(
                "INSERT INTO {table} (key, value) SELECT * FROM unnest($1::text[], $2::text[]) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            &[(&keys, Type::TEXT_ARRAY), (&values, Type::TEXT_ARRAY)],
        )
        .await?;
        let written = std::mem::take(&mut self.pending);
        self.known.extend(written);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_values_are_written() {
        let mut state = State::parse(r#"{"snapshot": "1:2:", "def:m": "abc"}"#).unwrap();
        state.set("def:m", "abc");
        assert!(
            state.pending().is_empty(),
            "an unchanged value is not written"
        );
        state.set("snapshot", "3:3:");
        state.set("from:m", "2026-01-01T00:00:00");
        assert_eq!(
            state.pending().keys().collect::<Vec<_>>(),
            ["from:m", "snapshot"]
        );
        state.set("snapshot", "1:2:");
        assert_eq!(state.pending().len(), 1, "set back to what was read");
        assert_eq!(state.get("snapshot").map(String::as_str), Some("1:2:"));
    }

    #[test]
    fn unexpected_state_is_refused() {
        assert!(State::parse("[1]").is_err());
        assert!(State::parse("{}").unwrap().pending().is_empty());
    }
}

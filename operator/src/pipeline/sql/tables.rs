//! Schema-qualified, quoted names of a pipeline's tables, as a refresh
//! writes them into statements.

use super::Target;
use super::names::DerivedNames;
use crate::naming::quote_ident;

pub(super) struct Tables {
    pub schema: String,
    pub rollup: String,
    pub results: String,
    pub state: String,
    pub window: String,
}

impl Tables {
    pub fn new(target: &Target, names: &DerivedNames) -> Self {
        let q = |t: &str| format!("{}.{}", quote_ident(&target.schema), quote_ident(t));
        Self {
            schema: quote_ident(&target.schema),
            rollup: q(&names.rollup),
            results: q(&names.results),
            state: q(&names.state),
            window: q(&names.window),
        }
    }

    pub fn source(&self, name: &str) -> String {
        format!("{}.{}", self.schema, quote_ident(name))
    }

    pub fn log(&self, names: &DerivedNames, source: &str) -> String {
        format!("{}.{}", self.schema, quote_ident(&names.changes(source)))
    }
}

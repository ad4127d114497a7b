//! The shared backends a tenant's slice lives in. One module per backend;
//! each builds its desired state with pure functions and reads before it writes.

pub mod n8n;
pub mod postgres;
pub mod redis;
pub mod vault;

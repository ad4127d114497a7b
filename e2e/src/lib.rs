//! Shared helpers of the end-to-end suites, which run against the real local
//! test bed (`e2e/testbed.sh up`): its addresses and credentials, waiting with
//! deadlines, installing the CRDs and applying manifests.

pub mod audit;
pub mod chart;
pub mod events;
pub mod kstatus;
pub mod manifests;
pub mod metric_oracle;
pub mod model_standin;
pub mod n8n;
pub mod operator;
pub mod pipelines;
pub mod report;
pub mod tenants;
pub mod testbed;
pub mod wait;
pub mod webhook_receiver;

pub use kstatus::{Verdict, kstatus};
pub use manifests::{apply, install_crds, load_documents};
pub use operator::{Operator, wait_condition, wait_deleted};
pub use testbed::{Testbed, free_port, operator_binary, repo_root};
pub use wait::{unique_name, wait_until};

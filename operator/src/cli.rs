//! Command-line interface: `run` starts the operator, `crdgen` prints the
//! CRDs, `explain` shows the SQL a MetricPipeline compiles to, `copilot`
//! serves a CopilotDeployment.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(name = "partnerplane", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator against the cluster in KUBECONFIG or the in-cluster config.
    Run(RunArgs),
    /// Write the CustomResourceDefinitions as YAML, one file per CRD.
    Crdgen {
        /// Folder to write to; prints to stdout when absent.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Check MetricPipelines in a YAML file and print the SQL each metric
    /// compiles to, without a cluster.
    Explain {
        /// YAML file with one or more documents (`-` for stdin); every
        /// `kind: MetricPipeline` among them is explained.
        #[arg(short = 'f', long = "filename")]
        file: std::path::PathBuf,
    },
    /// Serve one CopilotDeployment: its API with the guardrails, /healthz,
    /// /readyz and /metrics (what the copilot's pods run).
    Copilot(crate::copilot::server::CopilotArgs),
}

/// Settings of a running operator.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address serving /metrics, /healthz and /readyz.
    #[arg(long, env = "PARTNERPLANE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// Log output format.
    #[arg(long, env = "PARTNERPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter in `RUST_LOG` syntax.
    #[arg(
        long,
        env = "PARTNERPLANE_LOG",
        default_value = "info,rustify=off,vaultrs=off"
    )]
    pub log_filter: String,

    /// Configuration file naming the shared backends (see `config/operator.example.yaml`).
    #[arg(long, env = "PARTNERPLANE_CONFIG")]
    pub config: std::path::PathBuf,

    /// Label selector of the PartnerTenants (and MetricPipelines and
    /// CopilotDeployments) this instance manages, to shard them across
    /// operator deployments (for example `shard=eu`); label a tenant's
    /// pipelines and copilots like the tenant.
    #[arg(long, env = "PARTNERPLANE_TENANT_SELECTOR")]
    pub tenant_selector: Option<String>,

    /// Tenants reconciled at the same time.
    #[arg(long, env = "PARTNERPLANE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// MetricPipelines refreshed at the same time (apart from tenants, so a
    /// slow refresh never delays a tenant).
    #[arg(long, env = "PARTNERPLANE_PIPELINE_CONCURRENCY", default_value_t = 4)]
    pub pipeline_concurrency: u16,

    /// CopilotDeployments reconciled at the same time (apart from tenants
    /// and pipelines, so an index build never delays them).
    #[arg(long, env = "PARTNERPLANE_COPILOT_CONCURRENCY", default_value_t = 4)]
    pub copilot_concurrency: u16,

    /// Reconcile only while holding a Lease, so that several replicas can
    /// run: one leads, the others wait (one Lease per `--tenant-selector`).
    #[arg(long, env = "PARTNERPLANE_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Namespace of the leader Lease; the operator's own (`POD_NAMESPACE`).
    #[arg(long, env = "POD_NAMESPACE", default_value = "partnerplane-system")]
    pub leader_election_namespace: String,

    /// Name of the leader Lease (a shard's gets a suffix from its selector).
    #[arg(
        long,
        env = "PARTNERPLANE_LEADER_ELECTION_ID",
        default_value = "partnerplane-operator"
    )]
    pub leader_election_id: String,

    /// Image running `partnerplane copilot` for CopilotDeployments that name
    /// none in `spec.image`: the operator's own release by default.
    #[arg(
        long,
        env = "PARTNERPLANE_COPILOT_IMAGE",
        default_value = concat!("ghcr.io/partnerplane/operator:", env!("CARGO_PKG_VERSION"))
    )]
    pub copilot_image: String,

    /// Seconds between drift checks of a Ready tenant's backends (stretched
    /// so that all tenants' checks run at most five a second).
    #[arg(long, env = "PARTNERPLANE_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,

    /// Folder of workflow template files (`*.json`, the form of
    /// `operator/workflows/templates/`) replacing the built-in templates of
    /// the same kind.
    #[arg(long, env = "PARTNERPLANE_WORKFLOW_TEMPLATES")]
    pub workflow_templates: Option<std::path::PathBuf>,

    /// Address blocks (comma-separated CIDRs) where the shared backends named
    /// by a host name rather than an IP address live. Tenant network policies
    /// allow egress only to each backend's address on its port: a backend
    /// configured by IP address is allowed at that address (/32 or /128), one
    /// configured by host name at these blocks, since a network policy cannot
    /// follow a DNS name. Empty (the default): only backends given by IP
    /// address are reachable from tenant workloads, and the operator logs
    /// which ones are not.
    #[arg(long, env = "PARTNERPLANE_BACKEND_CIDRS", value_delimiter = ',')]
    pub backend_cidrs: Vec<crate::context::Cidr>,
}

/// Parses the command line and runs the chosen command.
pub fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            crate::telemetry::init(args.log_format, &args.log_filter)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(crate::run::run(args))
        }
        Command::Crdgen { out } => crdgen(out.as_deref()),
        Command::Explain { file } => explain(&file),
        Command::Copilot(args) => {
            crate::telemetry::init(args.log_format, &args.log_filter)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(crate::copilot::server::run(args))
        }
    }
}

fn explain(file: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use serde::Deserialize as _;

    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let mut pipelines = 0;
    let mut invalid = 0;
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let document = serde_yaml::Value::deserialize(document)
            .with_context(|| format!("{}: document {} is not YAML", file.display(), index + 1))?;
        if document.get("kind").and_then(|k| k.as_str()) != Some("MetricPipeline") {
            continue;
        }
        pipelines += 1;
        let name = document
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .map_or_else(|| format!("#{}", index + 1), str::to_string);
        let spec = document.get("spec").cloned().unwrap_or_default();
        let spec: crate::api::pipeline::MetricPipelineSpec = serde_yaml::from_value(spec)
            .with_context(|| format!("MetricPipeline {name}: invalid spec"))?;
        match crate::pipeline::sql::check(&spec)
            .and_then(|()| crate::pipeline::explain::explain(&spec))
        {
            Ok(listing) => println!("-- MetricPipeline {name}\n{listing}"),
            Err(e) => {
                eprintln!("MetricPipeline {name}: {e}");
                invalid += 1;
            }
        }
    }
    anyhow::ensure!(pipelines > 0, "{} holds no MetricPipeline", file.display());
    anyhow::ensure!(
        invalid == 0,
        "{invalid} of {pipelines} MetricPipelines are invalid"
    );
    Ok(())
}

fn crdgen(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    let crds = crate::api::crd::all();
    if let Some(dir) = out {
        std::fs::write(
            dir.join(crate::api::crd::KUSTOMIZATION),
            crate::api::crd::kustomization(&crds),
        )?;
    }
    for crd in crds {
        let yaml = crate::api::crd::to_yaml(&crd);
        match out {
            Some(dir) => std::fs::write(dir.join(crate::api::crd::file_name(&crd)), yaml)?,
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

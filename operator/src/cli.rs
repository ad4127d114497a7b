//! Command-line interface: `run` starts the operator, `crdgen` prints the CRDs.

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

    /// Label selector of the PartnerTenants this instance manages, to shard
    /// tenants across operator deployments (for example `shard=eu`).
    #[arg(long, env = "PARTNERPLANE_TENANT_SELECTOR")]
    pub tenant_selector: Option<String>,

    /// Tenants reconciled at the same time.
    #[arg(long, env = "PARTNERPLANE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,

    /// Seconds between drift checks of a Ready tenant's backends.
    #[arg(long, env = "PARTNERPLANE_RESYNC_SECONDS", default_value_t = 300)]
    pub resync_seconds: u64,

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
    }
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

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
    #[arg(long, env = "PARTNERPLANE_LOG", default_value = "info")]
    pub log_filter: String,
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
    for crd in crate::api::crd::all() {
        let yaml = crate::api::crd::to_yaml(&crd);
        match out {
            Some(dir) => std::fs::write(dir.join(crate::api::crd::file_name(&crd)), yaml)?,
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

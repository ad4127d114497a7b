//! The Helm chart as the suites render it, and the command-line tools
//! (helm, built once by `hack/tools.sh`; the test bed's kubectl) they run.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize as _;
use serde_json::Value;

use crate::{Testbed, repo_root};

/// The folder holding helm, built once by `hack/tools.sh`.
pub fn tools() -> anyhow::Result<PathBuf> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir.clone());
    }
    let output = Command::new(repo_root().join("hack/tools.sh"))
        .arg("helm")
        .stderr(Stdio::inherit())
        .output()
        .context("running hack/tools.sh")?;
    ensure!(output.status.success(), "hack/tools.sh helm failed");
    let dir = PathBuf::from(String::from_utf8(output.stdout)?.trim());
    Ok(DIR.get_or_init(|| dir).clone())
}

/// Runs a command, feeding `stdin`; returns stdout and stderr, or fails with stderr.
pub fn run(command: &mut Command, stdin: Option<&[u8]>) -> anyhow::Result<(String, String)> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    let mut input = child.stdin.take().context("stdin")?;
    if let Some(bytes) = stdin {
        input.write_all(bytes)?;
    }
    drop(input);
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = String::from_utf8(output.stderr)?;
    if !output.status.success() {
        bail!("{command:?} failed: {stderr}");
    }
    Ok((stdout, stderr))
}

pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = vec![];
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)?;
        if !value.is_null() {
            docs.push(serde_json::to_value(value)?);
        }
    }
    Ok(docs)
}

/// `helm template` of the chart as `release` into `namespace` with `args` (`--set …`).
pub fn helm_template(release: &str, namespace: &str, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let (out, _) = run(
        Command::new(tools()?.join("helm"))
            .args(["template", release])
            .arg(repo_root().join("charts/partnerplane"))
            .args(["--namespace", namespace])
            .args(args),
        None,
    )?;
    documents(&out)
}

pub fn kubectl(testbed: &Testbed) -> Command {
    let mut command = Command::new("kubectl");
    command.envs(testbed.env());
    command
}

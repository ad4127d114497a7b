//! kstatus, the status reading Flux and cli-utils-based tools wait on, as the
//! real Go library computes it: `e2e/kstatus` is built once per source
//! version into the Cargo target folder and fed objects as JSON.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context as _, bail};

use crate::repo_root;

/// What kstatus computed for an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `InProgress`, `Current`, `Failed`, `Terminating`, `NotFound` or `Unknown`.
    pub status: String,
    /// kstatus's explanation, such as which generation it is waiting for.
    pub message: String,
}

/// The kstatus verdict for `object` (as read from the API server).
pub async fn kstatus(object: &serde_json::Value) -> anyhow::Result<Verdict> {
    let input = serde_json::to_vec(object)?;
    tokio::task::spawn_blocking(move || compute(&input)).await?
}

fn compute(input: &[u8]) -> anyhow::Result<Verdict> {
    let binary = kstatus_binary()?;
    let mut child = Command::new(&binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", binary.display()))?;
    // The program reads all of stdin before writing anything.
    child
        .stdin
        .take()
        .context("kstatus stdin")?
        .write_all(input)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("kstatus: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8(output.stdout)?;
    let (status, message) = text.split_once('\n').unwrap_or((text.as_str(), ""));
    Ok(Verdict {
        status: status.trim().to_string(),
        message: message.trim().to_string(),
    })
}

/// Builds `e2e/kstatus` on first use into `<target>/kstatus/<source hash>/`.
/// A mutex serialises builds within a test binary; across processes the
/// binary is written under a temporary name and renamed into place, so a
/// concurrent build never leaves a half-written file behind.
pub fn kstatus_binary() -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.as_ref() {
        return Ok(path.clone());
    }
    let source = repo_root().join("e2e/kstatus");
    let mut fingerprint = Vec::new();
    for file in ["go.mod", "go.sum", "main.go"] {
        fingerprint.extend(std::fs::read(source.join(file))?);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target
        .join("kstatus")
        .join(format!("{:016x}", fnv1a(&fingerprint)));
    let path = dir.join("kstatus");
    if !path.is_file() {
        std::fs::create_dir_all(&dir)?;
        let partial = dir.join(format!("kstatus.{}.partial", std::process::id()));
        let output = Command::new("go")
            .args(["build", "-trimpath", "-o"])
            .arg(&partial)
            .arg(".")
            .current_dir(&source)
            .output()
            .context("running `go build` for e2e/kstatus — Go is required")?;
        if !output.status.success() {
            bail!(
                "building e2e/kstatus: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::fs::rename(&partial, &path)?;
    }
    *built = Some(path.clone());
    Ok(path)
}

/// FNV-1a: a stable fingerprint of the sources, to name the build folder.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_sensitive() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"go.sum v1"), fnv1a(b"go.sum v2"));
    }
}

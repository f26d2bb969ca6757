//! The README's first command, `scripts/quickstart`, runs its demo and exits 0.

use std::process::Command;

use anyhow::ensure;

#[test]
fn quickstart_runs_and_exits_cleanly() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir()?;
    // Below the kernel's ephemeral range, so the ports other tests get from the kernel
    // cannot collide with these.
    let base = 20000 + (std::process::id() % 900) * 10;
    let out = Command::new(root.join("scripts/quickstart"))
        .env("QS_DIR", dir.path().join("qs"))
        .env("QS_PORT_BASE", base.to_string())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "quickstart failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "sk1",
        "sk2",
        "sk3",
        "primary",
        "walproposer|sync",
        "number of failed transactions: 0",
    ] {
        ensure!(
            stdout.contains(needle),
            "quickstart output lacks {needle:?}:\n{stdout}"
        );
    }
    // The three safekeepers end at one commit LSN, equal to the primary's flush LSN.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.first().is_some_and(|n| n.starts_with("sk")) && f.len() == 4)
        .collect();
    ensure!(rows.len() == 3, "expected three safekeeper rows:\n{stdout}");
    let primary = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("primary"))
        .map(str::trim)
        .unwrap_or_default();
    for r in &rows {
        ensure!(
            r[3] == primary,
            "{} commit_lsn {} != primary flush {primary}:\n{stdout}",
            r[0],
            r[3]
        );
    }
    Ok(())
}

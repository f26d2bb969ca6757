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
        // The debug binaries the other tests use: a release build would add minutes to CI.
        .env("QS_PROFILE", "debug")
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
    // The three safekeepers end at one commit LSN, equal to the primary's flush LSN, and
    // show how far WAL is offloaded (columns: name, term, flush, commit, backup).
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.first().is_some_and(|n| n.starts_with("sk")) && f.len() == 5)
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
        let backup: utils::Lsn = r[4].parse()?;
        let commit: utils::Lsn = r[3].parse()?;
        ensure!(
            backup.0 > 0x0100_0000 && commit.0 - backup.0 < 16 << 20,
            "{} backup_lsn {backup} is not within a segment of {commit}:\n{stdout}",
            r[0]
        );
    }
    // The file:// archive holds the offloaded segments.
    let archived: u64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Offloaded complete segments in "))
        .and_then(|l| l.split(": ").nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    ensure!(archived > 0, "nothing in the archive:\n{stdout}");
    Ok(())
}

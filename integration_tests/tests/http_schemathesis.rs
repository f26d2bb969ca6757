//! schemathesis (PyPI) against the OpenAPI document a running safekeeper serves at
//! `/v1/openapi.json`: every check (`--checks all`: no 5xx, statuses, content types and
//! bodies as documented, schema-valid input accepted, invalid input refused, deleted
//! resources gone, unsupported methods answered 405), a bounded number of examples per
//! operation, the settings in `integration_tests/schemathesis/schemathesis.toml`.
//!
//! schemathesis is installed by `scripts/test`; without it this test fails and says so.

use std::process::Command;

use anyhow::{Context, ensure};
use integration_tests::sk::Safekeeper;

/// Examples per operation and phase: enough to cover every route, bounded so the run
/// takes well under two minutes.
const MAX_EXAMPLES: &str = "60";

#[test]
fn the_api_matches_its_openapi_document() -> anyhow::Result<()> {
    let found = Command::new("schemathesis").arg("--version").output();
    ensure!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "schemathesis is not installed: run scripts/test (it installs it from PyPI) or `python3 -m pip install schemathesis`"
    );
    let dir = tempfile::tempdir()?;
    let sk = Safekeeper::start(1, &dir.path().join("sk1"), false)?;
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemathesis/schemathesis.toml"
    );
    let url = format!("http://127.0.0.1:{}/v1/openapi.json", sk.http_port);
    let out = Command::new("schemathesis")
        .args(["--config-file", config, "run", &url])
        .args([
            "--checks",
            "all",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "14",
        ])
        .args(["--request-timeout", "30"])
        // No colours, no progress bars: the output goes into the failure message.
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .output()
        .context("running schemathesis")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "schemathesis found failures:\n{text}");
    sk.assert_no_panics();
    Ok(())
}

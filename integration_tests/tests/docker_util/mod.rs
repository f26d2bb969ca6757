//! The harness of `docker_faults` and `docker_membership`: one compose project of
//! docker-compose.yml (three safekeeper containers and the compute on a private network,
//! the spare `sk4` with the `spare` profile) driven with `docker`, `scripts/docker/compose`
//! and this machine's psql/pgbench against the loopback ports it publishes.
//!
//! Owns: the project's name, host ports and subnet; every docker command, each bounded in
//! time. Must never: leave a container, network or volume behind ([`Stack`] runs
//! `down -v` on drop, whatever happened), or touch containers of another project.

use std::collections::HashSet;
use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use integration_tests::pg_bin;
use integration_tests::pg_tools::describe;
use integration_tests::real_wal::read_wal_range;
use utils::{Lsn, TenantTimelineId};
use walproposer::bridge::derived_ids;

/// The compose services of the safekeepers, in `--safekeepers` order.
pub const SAFEKEEPERS: [&str; 3] = ["sk1", "sk2", "sk3"];

/// Longest any single docker or psql command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration_tests has a parent")
        .to_path_buf()
}

/// A knob from the environment, or its default.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits for `child` at most `limit`, killing it then; its output either way.
pub fn wait_bounded(child: Child, limit: Duration, what: &str) -> anyhow::Result<Output> {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out.with_context(|| format!("waiting for {what}"))?),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child, which is not reaped before the
            // thread above returns, so the pid cannot have been reused.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = rx.recv();
            bail!("{what} did not finish within {limit:?}")
        }
    }
}

/// Runs `cmd` (stdin closed) for at most `limit`; its stdout, or an error with its stderr.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> anyhow::Result<String> {
    let what = describe(cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {what}"))?;
    let out = wait_bounded(child, limit, &what)?;
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstderr: {}\nstdout: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker <args>`, bounded.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    run_bounded(Command::new("docker").args(args), COMMAND_LIMIT)
}

/// Why docker cannot be used here, if it cannot (`docker info` fails).
pub fn docker_unavailable() -> Option<String> {
    match run_bounded(Command::new("docker").arg("info"), Duration::from_secs(60)) {
        Ok(_) => None,
        Err(e) => Some(format!("{e:#}")),
    }
}

/// Held while a scenario runs: an exclusive `flock` on a file in the temp dir.
pub struct Serial {
    _file: File,
}

/// The docker scenarios run one at a time, in this process and across processes (two
/// `cargo test` runs on one machine): several stacks of PostgreSQL, three safekeepers and
/// pgbench at once would overload two cores and turn every timing into noise. The lock
/// goes with its file descriptor, so a failed scenario (or a killed process) releases it.
pub fn serial() -> anyhow::Result<Serial> {
    let path = std::env::temp_dir().join("safekeeper-docker-faults.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns; it blocks until the lock is ours.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    ensure!(
        rc == 0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    Ok(Serial { _file: file })
}

/// Removes what scenarios of processes that no longer run left behind (a test binary
/// killed before its `down -v`): compose projects named `skdt<scenario><pid>` whose pid is
/// gone, found by the compose labels of containers, networks and volumes.
pub fn sweep_stale_projects() {
    let mut projects = HashSet::new();
    for kind in [["ps", "-a"], ["network", "ls"], ["volume", "ls"]] {
        let mut args = kind.to_vec();
        args.extend([
            "--filter",
            "label=com.docker.compose.project",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ]);
        if let Ok(out) = docker(&args) {
            projects.extend(out.lines().map(str::to_string));
        }
    }
    for project in projects {
        let Some(rest) = project.strip_prefix("skdt") else {
            continue;
        };
        let digits: String = rest.chars().skip_while(|c| !c.is_ascii_digit()).collect();
        let Ok(pid) = digits.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("removing compose project {project}, left behind by process {pid}");
        let mut cmd = Command::new(repo_root().join("scripts/docker/compose"));
        cmd.env("COMPOSE_PROJECT_NAME", &project).args([
            "down",
            "-v",
            "--remove-orphans",
            "--timeout",
            "1",
        ]);
        if let Err(e) = run_bounded(&mut cmd, COMMAND_LIMIT) {
            eprintln!("  {e:#}");
        }
    }
}

/// Builds the images once per test binary (`scripts/docker/build`: a no-op for cargo and
/// Docker's cache when they are current). `SK_DOCKER_PREBUILT=1` (set by scripts/test,
/// which has just built them) skips it.
pub fn ensure_images() -> anyhow::Result<()> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if std::env::var("SK_DOCKER_PREBUILT").as_deref() == Ok("1") {
                return Ok(());
            }
            // A cold static build takes minutes on two cores.
            run_bounded(
                &mut Command::new(repo_root().join("scripts/docker/build")),
                Duration::from_secs(1200),
            )
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("scripts/docker/build: {e}"))
}

/// One row of `TIMELINE_STATUS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub term: u64,
    pub timeline_start_lsn: Lsn,
}

/// Host ports (compute, four safekeepers' pg and http — the fourth is the spare `sk4` —,
/// Prometheus, the Neon compute of the `neon` profile) of one project.
#[derive(Debug, Clone, Copy)]
struct Ports {
    compute: u16,
    pg: [u16; 4],
    http: [u16; 4],
    prometheus: u16,
    neon: u16,
}

/// Eleven free loopback ports below the kernel's ephemeral range (so ports other tests get
/// from the kernel cannot take them), in a block of 12 chosen by the process id and `salt`.
fn pick_ports(salt: u32) -> anyhow::Result<Ports> {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    let start = std::process::id().wrapping_mul(7).wrapping_add(salt * 31);
    for attempt in 0..300 {
        let base = 29000 + ((start + attempt) % 290) as u16 * 12;
        let ports = Ports {
            compute: base,
            pg: [base + 1, base + 2, base + 3, base + 8],
            http: [base + 4, base + 5, base + 6, base + 9],
            prometheus: base + 7,
            neon: base + 10,
        };
        if [ports.compute, ports.prometheus, ports.neon]
            .iter()
            .chain(&ports.pg)
            .chain(&ports.http)
            .all(|&p| free(p))
        {
            return Ok(ports);
        }
    }
    bail!("no block of 11 free ports in 29000..32480")
}

/// A /24 no Docker network uses yet, in 10.214.0.0/16.
fn pick_subnet(salt: u32) -> anyhow::Result<String> {
    let ids = docker(&["network", "ls", "-q"])?;
    let mut used = HashSet::new();
    for id in ids.split_whitespace() {
        let subnets = docker(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
            id,
        ])
        .unwrap_or_default(); // a network removed meanwhile
        used.extend(subnets.split_whitespace().map(str::to_string));
    }
    let start = std::process::id().wrapping_add(salt * 37);
    (0..250)
        .map(|i| format!("10.214.{}.0/24", (start + i) % 250 + 1))
        .find(|s| !used.contains(s))
        .context("no free /24 in 10.214.0.0/16")
}

/// A compose project of docker-compose.yml; `down -v` on drop.
pub struct Stack {
    project: String,
    ports: Ports,
    subnet: String,
    /// The compose profiles on for every command (`monitoring`, `spare`).
    profiles: Vec<&'static str>,
}

impl Stack {
    /// A project named after the scenario and this process, with its own ports and subnet,
    /// not started yet (the guard exists before anything is created).
    pub fn new(scenario: &str, salt: u32) -> anyhow::Result<Stack> {
        Ok(Stack {
            project: format!("skdt{}{}", scenario, std::process::id()),
            ports: pick_ports(salt)?,
            subnet: pick_subnet(salt)?,
            profiles: Vec::new(),
        })
    }

    /// Like [`Stack::new`], with the `monitoring` profile on for every compose command
    /// (`up` starts Prometheus, `down -v` removes it).
    pub fn with_monitoring(scenario: &str, salt: u32) -> anyhow::Result<Stack> {
        Stack::with_profiles(scenario, salt, &["monitoring"])
    }

    /// Like [`Stack::new`], with `profiles` on for every compose command (`down -v` then
    /// removes their services and volumes too).
    pub fn with_profiles(
        scenario: &str,
        salt: u32,
        profiles: &[&'static str],
    ) -> anyhow::Result<Stack> {
        let mut s = Stack::new(scenario, salt)?;
        s.profiles = profiles.to_vec();
        Ok(s)
    }

    /// The variables docker-compose.yml and scripts/docker/check read.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("COMPOSE_PROJECT_NAME".into(), self.project.clone()),
            ("SK_COMPUTE_PORT".into(), self.ports.compute.to_string()),
            ("SK_DOCKER_SUBNET".into(), self.subnet.clone()),
            (
                "SK_PROMETHEUS_PORT".into(),
                self.ports.prometheus.to_string(),
            ),
            ("SK_NEON_COMPUTE_PORT".into(), self.ports.neon.to_string()),
        ];
        if !self.profiles.is_empty() {
            env.push(("COMPOSE_PROFILES".into(), self.profiles.join(",")));
        }
        for i in 0..4 {
            env.push((format!("SK{}_PG_PORT", i + 1), self.ports.pg[i].to_string()));
            env.push((
                format!("SK{}_HTTP_PORT", i + 1),
                self.ports.http[i].to_string(),
            ));
        }
        env
    }

    /// `127.0.0.1:<port>` of Prometheus's API (with the `monitoring` profile).
    pub fn prometheus_addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.prometheus)
    }

    /// The compute's port on 127.0.0.1.
    pub fn compute_port(&self) -> u16 {
        self.ports.compute
    }

    /// `scripts/docker/compose <args>` for this project.
    pub fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(repo_root().join("scripts/docker/compose"));
        cmd.args(args).envs(self.env());
        run_bounded(&mut cmd, COMMAND_LIMIT)
    }

    /// `up -d`, then waits until a commit goes through the compute and the quorum.
    pub fn up(&self) -> anyhow::Result<()> {
        self.up_only(&[])
    }

    /// `up -d <services>` (every service of the active profiles when empty), then waits
    /// until a commit goes through the compute and the quorum.
    pub fn up_only(&self, services: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["up", "-d"];
        args.extend(services);
        self.compose(&args)?;
        self.wait_ready()
    }

    /// Waits for the compute to accept connections and a first commit to return (the
    /// bridge is elected and streaming).
    pub fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = self.sql_within("SELECT 1", Duration::from_secs(10)) {
            ensure!(
                Instant::now() < deadline,
                "the compute does not accept connections: {e:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        self.sql_within(
            "CREATE TABLE IF NOT EXISTS probe(x int)",
            Duration::from_secs(60),
        )
        .context("a first commit through the quorum")?;
        Ok(())
    }

    /// The last log lines of every container, for a failure's message.
    pub fn logs(&self) -> String {
        self.compose(&["logs", "--no-color", "--tail", "40"])
            .unwrap_or_else(|e| format!("(no logs: {e:#})"))
    }

    /// The container id of a service.
    pub fn container(&self, service: &str) -> anyhow::Result<String> {
        let id = self.compose(&["ps", "-q", service])?;
        ensure!(!id.is_empty(), "service {service} has no container");
        Ok(id)
    }

    /// The compose network and the service's address on it.
    fn network_of(&self, service: &str) -> anyhow::Result<(String, String)> {
        let id = self.container(service)?;
        let out = docker(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{$v.IPAddress}}{{end}}",
            &id,
        ])?;
        let (net, ip) = out
            .split_once(' ')
            .with_context(|| format!("{service} is on no network: {out:?}"))?;
        Ok((net.to_string(), ip.to_string()))
    }

    /// `docker network disconnect`: the service is cut off from the others (and from its
    /// published ports). Returns what [`Stack::reconnect`] needs.
    pub fn disconnect(&self, service: &str) -> anyhow::Result<Cut> {
        let (network, ip) = self.network_of(service)?;
        let container = self.container(service)?;
        docker(&["network", "disconnect", &network, &container])?;
        Ok(Cut {
            service: service.to_string(),
            container,
            network,
            ip,
        })
    }

    /// `docker network connect` with the old address and the service's name: a healed
    /// partition, so the TCP connections open across it resume.
    pub fn reconnect(&self, cut: &Cut) -> anyhow::Result<()> {
        docker(&[
            "network",
            "connect",
            "--ip",
            &cut.ip,
            "--alias",
            &cut.service,
            &cut.network,
            &cut.container,
        ])?;
        Ok(())
    }

    /// psql against the compute (from this machine, on the published port).
    fn psql_command(&self, sql: &str) -> Command {
        let mut cmd = Command::new(pg_bin("psql"));
        cmd.args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(self.ports.compute.to_string())
        .args(["-U", "postgres", "-d", "postgres", "-c", sql]);
        cmd
    }

    /// Runs SQL on the compute; fails if it does not return within `limit` (a stuck commit).
    pub fn sql_within(&self, sql: &str, limit: Duration) -> anyhow::Result<String> {
        run_bounded(&mut self.psql_command(sql), limit)
    }

    /// Runs SQL on the compute (at most 30 s).
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        self.sql_within(sql, Duration::from_secs(30))
    }

    /// Starts SQL on the compute and returns at once (a commit that may have to wait).
    pub fn spawn_sql(&self, sql: &str) -> anyhow::Result<Child> {
        Ok(self
            .psql_command(sql)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// `pgbench <args>` against the compute (its stdout/stderr piped).
    pub fn pgbench(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(pg_bin("pgbench"));
        cmd.args(["-h", "127.0.0.1", "-p"])
            .arg(self.ports.compute.to_string())
            .args(["-U", "postgres"])
            .args(args)
            .arg("postgres");
        cmd
    }

    /// `pgbench -T seconds -c 4 -j 2`, running.
    pub fn spawn_pgbench(&self, seconds: u64) -> anyhow::Result<Child> {
        Ok(self
            .pgbench(&["-T", &seconds.to_string(), "-c", "4", "-j", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// The primary's flush LSN.
    pub fn primary_flush(&self) -> anyhow::Result<Lsn> {
        Ok(self.sql("SELECT pg_current_wal_flush_lsn()")?.parse()?)
    }

    /// Committed pgbench transactions so far (rows of pgbench_history).
    pub fn pgbench_commits(&self) -> anyhow::Result<u64> {
        Ok(self.sql("SELECT count(*) FROM pgbench_history")?.parse()?)
    }

    /// `127.0.0.1:<port>` of safekeeper `i`'s HTTP API (0-based; 3 is the spare `sk4`).
    #[allow(dead_code)] // docker_membership's; docker_faults reads TIMELINE_STATUS only
    pub fn http_addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports.http[i])
    }

    /// The Neon compute's port on 127.0.0.1 (the `neon` profile).
    #[allow(dead_code)] // docker_neon's
    pub fn neon_compute_port(&self) -> u16 {
        self.ports.neon
    }

    /// `TIMELINE_STATUS` of safekeeper `i` (0-based; 3 is the spare `sk4`), read on its
    /// published port: of its only timeline.
    pub fn status(&self, i: usize) -> anyhow::Result<Status> {
        self.status_of(i, None)
    }

    /// `TIMELINE_STATUS` of timeline `ttid` (of the only one when `None`) on safekeeper `i`.
    pub fn status_of(&self, i: usize, ttid: Option<&TenantTimelineId>) -> anyhow::Result<Status> {
        let mut conninfo = format!(
            "host=127.0.0.1 port={} replication=1 connect_timeout=3",
            self.ports.pg[i]
        );
        if let Some(t) = ttid {
            conninfo.push_str(&format!(
                " options='-c tenant_id={} timeline_id={}'",
                t.tenant_id, t.timeline_id
            ));
        }
        let out = run_bounded(
            Command::new(pg_bin("psql"))
                .arg(conninfo)
                .args(["-X", "-At", "-c", "TIMELINE_STATUS"]),
            Duration::from_secs(15),
        )?;
        let f: Vec<&str> = out.split('|').collect();
        ensure!(f.len() >= 5, "unexpected TIMELINE_STATUS row {out:?}");
        let lsn = |i: usize| -> anyhow::Result<Lsn> {
            f[i].parse()
                .with_context(|| format!("bad LSN in TIMELINE_STATUS row {out:?}"))
        };
        Ok(Status {
            flush_lsn: lsn(0)?,
            commit_lsn: lsn(1)?,
            term: f[2]
                .parse()
                .with_context(|| format!("bad term in {out:?}"))?,
            timeline_start_lsn: lsn(4)?,
        })
    }

    /// Waits until every safekeeper has flushed and committed the primary's current flush
    /// LSN; their statuses then.
    pub fn wait_converged(&self, limit: Duration) -> anyhow::Result<Vec<Status>> {
        let target = self.primary_flush()?;
        let deadline = Instant::now() + limit;
        loop {
            let statuses: Vec<_> = (0..3).map(|i| self.status(i)).collect();
            if statuses.iter().all(|s| {
                s.as_ref()
                    .is_ok_and(|s| s.commit_lsn >= target && s.flush_lsn >= target)
            }) {
                return statuses.into_iter().collect();
            }
            if Instant::now() > deadline {
                let shown: Vec<String> = statuses
                    .iter()
                    .map(|s| match s {
                        Ok(s) => format!("{s:?}"),
                        Err(e) => format!("{e:#}"),
                    })
                    .collect();
                bail!("the safekeepers did not all reach {target} within {limit:?}: {shown:#?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Copies every safekeeper's timeline directory out of its container (`docker cp`) and
    /// checks the three hold the same bytes from the timeline's start to the lowest
    /// commit_lsn, which must reach `at_least`. Returns that range's end.
    pub fn assert_identical_wal(&self, at_least: Lsn) -> anyhow::Result<Lsn> {
        self.assert_identical_wal_of(&[0, 1, 2], at_least)
    }

    /// The tenant and timeline ids the bridge derives from the primary's system id.
    pub fn timeline_ids(&self) -> anyhow::Result<(utils::TenantId, utils::TimelineId)> {
        let system_id: u64 = self
            .sql("SELECT system_identifier FROM pg_control_system()")?
            .parse()?;
        Ok(derived_ids(system_id))
    }

    /// [`Stack::assert_identical_wal`] for safekeepers `which` (0-based; 3 is `sk4`): the
    /// first one's bytes are the reference.
    pub fn assert_identical_wal_of(&self, which: &[usize], at_least: Lsn) -> anyhow::Result<Lsn> {
        let (tenant, timeline) = self.timeline_ids()?;
        let statuses: Vec<Status> = which
            .iter()
            .map(|&i| self.status(i))
            .collect::<Result<_, _>>()?;
        let start = statuses[0].timeline_start_lsn;
        ensure!(
            statuses.iter().all(|s| s.timeline_start_lsn == start),
            "the safekeepers disagree on the timeline start: {statuses:?}"
        );
        let end = statuses.iter().map(|s| s.commit_lsn).min().unwrap_or(start);
        ensure!(
            end >= at_least && end > start,
            "commit_lsn {end} is below {at_least}: {statuses:?}"
        );
        let dir = tempfile::tempdir()?;
        let mut first: Option<Vec<u8>> = None;
        let services: Vec<String> = which.iter().map(|i| format!("sk{}", i + 1)).collect();
        for service in &services {
            let local = dir.path().join(service);
            docker(&[
                "cp",
                &format!("{}:/data/{tenant}/{timeline}", self.container(service)?),
                &local.to_string_lossy(),
            ])?;
            let wal = read_wal_range(&local, start, end)?;
            match &first {
                None => first = Some(wal),
                Some(w) if *w == wal => {}
                Some(w) => {
                    let at = w.iter().zip(&wal).position(|(a, b)| a != b).unwrap_or(0);
                    bail!(
                        "{service}'s WAL differs from {}'s at {} (compared {start}..{end})",
                        services[0],
                        Lsn(start.0 + at as u64)
                    );
                }
            }
        }
        Ok(end)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Err(e) = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "2"]) {
            eprintln!("cleaning up compose project {}: {e:#}", self.project);
        }
    }
}

/// A service cut off by [`Stack::disconnect`].
#[derive(Debug, Clone)]
pub struct Cut {
    service: String,
    container: String,
    network: String,
    ip: String,
}

/// Waits for pgbench and checks it committed everything it tried.
pub fn pgbench_ok(child: Child, limit: Duration) -> anyhow::Result<String> {
    let out = wait_bounded(child, limit, "pgbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "pgbench failed ({}): {stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("number of failed transactions: 0 "),
        "pgbench reports failed transactions: {stdout}"
    );
    Ok(stdout)
}

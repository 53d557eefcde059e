//! A `pg_auto_failover` formation on loopback ports: a monitor, a primary and a
//! synchronous secondary, each a `pg_autoctl run` process of the test's own (Debian's
//! `pg-auto-failover-cli` and `postgresql-<major>-auto-failover`), in a temporary
//! directory, as an unprivileged user when the test runs as root. The monitor's health
//! checks are tightened (1 s period, unhealthy after 3 s, no demote wait for a node
//! that is gone) so a failover takes seconds, not the default half minute.

use std::io::{Error, ErrorKind, Result};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::process::{find_program, free_port, give_to, unprivileged_user};

/// Settings of the monitor's `pgautofailover` extension, for failovers in seconds.
const MONITOR_SETTINGS: &[(&str, &str)] = &[
    ("pgautofailover.health_check_period", "1000"),
    ("pgautofailover.health_check_timeout", "1000"),
    ("pgautofailover.health_check_max_retries", "1"),
    ("pgautofailover.health_check_retry_delay", "500"),
    ("pgautofailover.node_considered_unhealthy_timeout", "3000"),
    ("pgautofailover.primary_demote_timeout", "3000"),
];

/// A running formation; dropping it stops every process and removes the directory.
#[derive(Debug)]
pub struct Formation {
    dir: tempfile::TempDir,
    bin: PathBuf,
    run_as: Option<(u32, u32)>,
    monitor_port: u16,
    /// `(name, port, pg_autoctl run)` of each data node.
    nodes: Vec<(String, u16, Option<Child>)>,
    monitor: Option<Child>,
}

impl Formation {
    /// The newest PostgreSQL version's binaries, when `pg_autoctl` and that version's
    /// `pgautofailover` extension are installed.
    pub fn binaries() -> Option<PathBuf> {
        find_program("pg_autoctl", &["/usr/bin"])?;
        let bin = dcb_store::internals::versioned_binaries("pg_ctl")?;
        let extension = bin.parent()?.join("lib/pgautofailover.so");
        extension.is_file().then_some(bin)
    }

    /// Starts the monitor, then the primary, then the secondary, and waits until they
    /// report `primary` and `secondary` (a minute at most).
    pub fn start() -> Result<Self> {
        let bin = Self::binaries()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "pg_auto_failover is not installed"))?;
        let dir = tempfile::Builder::new()
            .prefix("dcb-formation-")
            .tempdir()?;
        for sub in ["config", "data", "run"] {
            std::fs::create_dir(dir.path().join(sub))?;
        }
        let run_as = unprivileged_user()?;
        if let Some((uid, _)) = run_as {
            give_to(dir.path(), uid)?;
        }
        let mut formation = Formation {
            dir,
            bin,
            run_as,
            monitor_port: free_port()?,
            nodes: Vec::new(),
            monitor: None,
        };
        let port = formation.monitor_port.to_string();
        let monitor = formation.spawn(&[
            "create",
            "monitor",
            "--pgdata",
            "monitor",
            "--pgport",
            &port,
            "--hostname",
            "127.0.0.1",
            "--auth",
            "trust",
            "--no-ssl",
            "--run",
        ])?;
        formation.monitor = Some(monitor);
        formation.wait_for("the monitor", Duration::from_secs(60), |f| {
            f.monitor_sql("SELECT 1").is_ok()
        })?;
        for (name, value) in MONITOR_SETTINGS {
            formation.monitor_sql(&format!("ALTER SYSTEM SET {name} = '{value}'"))?;
        }
        formation.monitor_sql("SELECT pg_reload_conf()")?;
        for node in ["node_1", "node_2"] {
            formation.add_node(node)?;
        }
        formation.wait_for("a primary and a secondary", Duration::from_secs(90), |f| {
            f.states().is_ok_and(|s| {
                let mut states: Vec<&str> = s.iter().map(|(_, state)| state.as_str()).collect();
                states.sort();
                states == ["primary", "secondary"]
            })
        })?;
        Ok(formation)
    }

    fn add_node(&mut self, name: &str) -> Result<()> {
        let port = free_port()?;
        let monitor = self.monitor_uri();
        let child = self.spawn(&[
            "create",
            "postgres",
            "--pgdata",
            name,
            "--pgport",
            &port.to_string(),
            "--hostname",
            "127.0.0.1",
            "--name",
            name,
            "--auth",
            "trust",
            "--no-ssl",
            "--monitor",
            &monitor,
            "--run",
        ])?;
        self.nodes.push((name.to_owned(), port, Some(child)));
        // One at a time: the second must join a formation that has its primary.
        self.wait_for(name, Duration::from_secs(60), |f| {
            f.states().is_ok_and(|s| {
                s.iter().any(|(n, state)| {
                    n == name && ["single", "primary", "secondary"].contains(&state.as_str())
                })
            })
        })
    }

    /// The URL the formation gives applications: every node, `target_session_attrs=read-write`.
    pub fn uri(&self) -> Result<String> {
        let out = self.run(&[
            "show",
            "uri",
            "--formation",
            "default",
            "--pgdata",
            "monitor",
        ])?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find(|w| w.starts_with("postgres://") && w.contains("read-write"))
            .map(str::to_owned)
            .ok_or_else(|| Error::other(format!("no formation URI in: {text}")))
    }

    /// Each node's name and reported state, as the monitor sees them.
    pub fn states(&self) -> Result<Vec<(String, String)>> {
        let out =
            self.monitor_sql("SELECT nodename || '=' || reportedstate FROM pgautofailover.node")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(n, s)| (n.trim().to_owned(), s.trim().to_owned()))
            .collect())
    }

    /// Kills the primary as a lost machine would: its `pg_autoctl` (SIGKILL, so it
    /// restarts nothing), then its server (immediate stop). Returns its name.
    pub fn kill_primary(&mut self) -> Result<String> {
        let primary = self
            .states()?
            .into_iter()
            .find(|(_, state)| state == "primary")
            .map(|(name, _)| name)
            .ok_or_else(|| Error::other("no primary"))?;
        let pgctl = self.bin.join("pg_ctl");
        let data = self.dir.path().join(&primary);
        if let Some((_, _, child)) = self.nodes.iter_mut().find(|(n, _, _)| *n == primary) {
            if let Some(mut child) = child.take() {
                signal_group(&child, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
            }
        }
        self.command(&pgctl)
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(&data)
            .output()?;
        Ok(primary)
    }

    fn monitor_uri(&self) -> String {
        format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.monitor_port
        )
    }

    fn monitor_sql(&self, sql: &str) -> Result<Output> {
        let out = self
            .command(&self.bin.join("psql"))
            .args(["-X", "-qAt", "-h", "127.0.0.1", "-p"])
            .arg(self.monitor_port.to_string())
            .args(["-U", "postgres", "-d", "pg_auto_failover", "-c", sql])
            .output()?;
        if !out.status.success() {
            return Err(Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(out)
    }

    fn wait_for(&self, what: &str, limit: Duration, ready: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if ready(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(Error::new(
            ErrorKind::TimedOut,
            format!("{what} not ready; pg_autoctl logs:\n{}", self.logs()),
        ))
    }

    /// What the `pg_autoctl` processes logged.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for name in ["monitor", "node_1", "node_2"] {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            all.push_str(&format!("--- {name}\n"));
            for line in tail.into_iter().rev() {
                all.push_str(line);
                all.push('\n');
            }
        }
        all
    }

    /// `pg_autoctl args` as a long-running process, its output to `<pgdata>.log`.
    fn spawn(&self, args: &[&str]) -> Result<Child> {
        let pgdata = args
            .iter()
            .position(|a| *a == "--pgdata")
            .and_then(|i| args.get(i + 1))
            .copied()
            .unwrap_or("pg_autoctl");
        let log = std::fs::File::create(self.dir.path().join(format!("{pgdata}.log")))?;
        // A process group of its own: the keeper, its supervisor and its server go
        // together, as with a lost machine.
        self.autoctl(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
    }

    fn run(&self, args: &[&str]) -> Result<Output> {
        let out = self.autoctl(args).output()?;
        if !out.status.success() {
            return Err(Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(out)
    }

    fn autoctl(&self, args: &[&str]) -> Command {
        let mut command = self.command(Path::new("pg_autoctl"));
        command.args(args);
        if args.first() == Some(&"create") {
            command.arg("--pgctl").arg(self.bin.join("pg_ctl"));
        }
        command
    }

    /// A command in the formation's directory, with its own XDG directories (where
    /// `pg_autoctl` keeps its state), as the unprivileged user.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        let dir = self.dir.path();
        command
            .current_dir(dir)
            .env("HOME", dir)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env("PATH", format!("{}:/usr/bin:/bin", self.bin.display()))
            .env_remove("PGDATA")
            .env_remove("PGPORT");
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command
    }
}

/// Sends `signal` to `child`'s process group (the keeper and what it started).
fn signal_group(child: &Child, signal: nix::sys::signal::Signal) {
    let group = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(group, signal);
}

impl Drop for Formation {
    fn drop(&mut self) {
        let pgctl = self.bin.join("pg_ctl");
        let mut children: Vec<Child> = self.nodes.iter_mut().filter_map(|n| n.2.take()).collect();
        children.extend(self.monitor.take());
        // Graceful first (each keeper stops its server), then whatever is left.
        for child in &children {
            signal_group(child, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut children {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            signal_group(child, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
        for name in ["node_1", "node_2", "monitor"] {
            let data = self.dir.path().join(name);
            if data.join("PG_VERSION").is_file() {
                let _ = self
                    .command(&pgctl)
                    .args(["stop", "-m", "immediate", "-w", "-D"])
                    .arg(&data)
                    .output();
            }
        }
    }
}

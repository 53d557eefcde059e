//! A private, throwaway PostgreSQL server for when no database is configured.
//!
//! It runs the machine's own server binaries (`initdb`, `pg_ctl` on `PATH` or under
//! `/usr/lib/postgresql/*/bin`) in a temporary directory, listening on a free
//! loopback port. Dropping it stops the server and removes the directory; a small
//! watchdog process does the same if this process dies without dropping it. PostgreSQL
//! refuses to run as root, so as root the server runs as the `postgres` (or `nobody`)
//! user.
//!
//! Longer than most files because starting a server as root (a user to run it as,
//! directories it may write, a watchdog) is one sequence that fails as a whole.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::error::{Error, Result};

/// A running throwaway PostgreSQL server.
pub struct EmbeddedPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    /// The server's command-line options (port, sockets, settings).
    options: String,
    watchdog: Option<Child>,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .finish()
    }
}

impl EmbeddedPostgres {
    /// Where tests and demos run, the rule in one place: `DATABASE_URL` when it is set
    /// and something answers at its address, else a throwaway server (returned with
    /// the URL, to be kept alive as long as it is used). Blocks while a server starts.
    ///
    /// # Errors
    /// [`Error::Embedded`] when no throwaway server can be started.
    pub fn url_from_env_or_start() -> Result<(String, Option<Self>)> {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            if answers(&url) {
                return Ok((url, None));
            }
            tracing::warn!("DATABASE_URL does not answer; starting a throwaway PostgreSQL");
        }
        let server = Self::start()?;
        Ok((server.url(), Some(server)))
    }

    /// Creates a cluster and starts it. Blocks for a second or two; call it from
    /// `spawn_blocking` inside async code.
    pub fn start() -> Result<Self> {
        Self::start_inner(None)
    }

    /// Like [`start`](EmbeddedPostgres::start), with TLS on, using this certificate
    /// chain and private key (PEM); for testing TLS connections.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Result<Self> {
        Self::start_inner(Some((cert_pem, key_pem)))
    }

    fn start_inner(tls: Option<(&str, &str)>) -> Result<Self> {
        let mut server = Self::prepare()?;
        server.run(
            "initdb",
            &[
                "-D",
                &server.data_dir(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
        )?;
        if let Some((cert, key)) = tls {
            let cert_path = server.dir.path().join("server.crt");
            let key_path = server.dir.path().join("server.key");
            server.write_private(&cert_path, cert, 0o644)?;
            server.write_private(&key_path, key, 0o600)?;
            server.options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_path.display(),
                key_path.display()
            ));
        }
        server.launch()?;
        Ok(server)
    }

    /// A streaming replica of this server (`pg_basebackup -R`), running as a hot
    /// standby on a port of its own: it replays what this server commits and serves
    /// reads. `initdb`'s default access rules already let loopback connections
    /// replicate. Settings made on this server with `ALTER SYSTEM` before the call are
    /// copied too (make `synchronous_standby_names` after it, or a promoted replica
    /// would wait for a standby of its own).
    pub fn replica(&self) -> Result<Self> {
        let mut replica = Self::prepare()?;
        let port = self.port.to_string();
        replica.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &replica.data_dir(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        )?;
        replica.launch()?;
        Ok(replica)
    }

    /// A temporary directory, a free port and the server's options; no cluster yet.
    fn prepare() -> Result<Self> {
        let bin = find_binaries()?;
        let run_as = unprivileged_user()?;
        let dir = tempfile::Builder::new()
            .prefix("dcb-store-pg-")
            .tempdir()
            .map_err(|e| Error::Embedded(format!("cannot create a temporary directory: {e}")))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                Error::Embedded(format!("cannot hand the directory to uid {uid}: {e}"))
            })?;
        }
        let port = free_port()?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=on",
            dir.path().display()
        );
        Ok(EmbeddedPostgres {
            dir,
            bin,
            port,
            run_as,
            options,
            watchdog: None,
        })
    }

    /// Starts the prepared cluster and its watchdog.
    fn launch(&mut self) -> Result<()> {
        self.start_server()?;
        self.watchdog = spawn_watchdog(&self.data_dir(), self.dir.path()).ok();
        tracing::info!(port = self.port, dir = %self.dir.path().display(), "embedded PostgreSQL started");
        Ok(())
    }

    fn start_server(&self) -> Result<()> {
        // With a log file, so that the server does not inherit (and hold open) the
        // pipes this process reads pg_ctl's output from.
        let log = self.dir.path().join("server.log").display().to_string();
        let data = self.data_dir();
        let args = [
            "-D",
            &data,
            "-l",
            &log,
            "-o",
            &self.options,
            "-w",
            "-t",
            "60",
            "start",
        ];
        self.run("pg_ctl", &args)
    }

    /// A connection string for the `postgres` database as the `postgres` user.
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The TCP port the server listens on (loopback only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (fast shutdown: clients are disconnected, nothing committed is
    /// lost). `start_again` brings it back.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn stop(&self) -> Result<()> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"],
        )
    }

    /// Stops the server as a crash would (immediate shutdown: no checkpoint; the next
    /// start recovers from the WAL).
    pub(crate) fn kill(&self) -> Result<()> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "immediate", "-w", "-t", "60", "stop"],
        )
    }

    /// Starts the server again after `stop` or `kill`, on the same port and data.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn start_again(&self) -> Result<()> {
        self.start_server()
    }

    /// Promotes a [`replica`](EmbeddedPostgres::replica) to a primary (`pg_ctl
    /// promote`): it stops replaying and accepts writes. Blocks until it does.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn promote(&self) -> Result<()> {
        let data = self.data_dir();
        self.run("pg_ctl", &["-D", &data, "-w", "-t", "60", "promote"])
    }

    /// Writes a file the server (maybe another user) must own, with `mode`.
    fn write_private(&self, path: &Path, contents: &str, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let fail =
            |e: std::io::Error| Error::Embedded(format!("cannot write {}: {e}", path.display()));
        std::fs::write(path, contents).map_err(fail)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(fail)?;
        }
        Ok(())
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<()> {
        // Tools beyond the server's own (`pg_basebackup`) may live with the versioned
        // binaries when `initdb` and `pg_ctl` were found elsewhere on `PATH`.
        let mut path = self.bin.join(program);
        if !path.is_file() {
            if let Some(dir) = versioned_binaries(program) {
                path = dir.join(program);
            }
        }
        let mut command = Command::new(path);
        command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        let output = command
            .output()
            .map_err(|e| Error::Embedded(format!("cannot run {program}: {e}")))?;
        if !output.status.success() {
            return Err(Error::Embedded(format!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr),
                String::from_utf8_lossy(&output.stdout)
            )));
        }
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        // A server stopped on purpose has no pid file.
        if Path::new(&self.data_dir()).join("postmaster.pid").exists() {
            if let Err(e) = self.kill() {
                tracing::warn!(error = %crate::error::Chain(&e), "could not stop the embedded PostgreSQL");
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// The directory holding `initdb` and `pg_ctl`: `PATH` first, then the newest
/// `/usr/lib/postgresql/<version>/bin`.
fn find_binaries() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    versioned_binaries("initdb").ok_or_else(|| {
        Error::Embedded(
            "no database is configured and no PostgreSQL server binaries (initdb, pg_ctl) were \
             found on PATH or under /usr/lib/postgresql/*/bin: install PostgreSQL (Debian: \
             apt-get install postgresql) or set DATABASE_URL"
                .to_owned(),
        )
    })
}

/// The newest `/usr/lib/postgresql/<version>/bin` that holds `program`.
pub fn versioned_binaries(program: &str) -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join(program).is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// As root, `(uid, gid)` of the user to run the server as (PostgreSQL refuses root):
/// `postgres`, else `nobody`; `None` when not root.
pub fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
            return Ok(Some((user.uid.as_raw(), user.gid.as_raw())));
        }
    }
    Err(Error::Embedded(
        "running as root and neither a postgres nor a nobody user exists to run the server as"
            .to_owned(),
    ))
}

/// A free loopback port (free when asked; the server binds it soon after).
pub fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Embedded(format!("cannot find a free port: {e}")))
}

/// Stops the server and removes its directory once this process is gone, even when
/// it exits without running destructors (as test binaries do with statics).
fn spawn_watchdog(data_dir: &str, dir: &Path) -> std::io::Result<Child> {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 1; done
        pid=$(head -n 1 "$2/postmaster.pid" 2>/dev/null)
        [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        rm -rf "$3"
    "#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("dcb-store-watchdog")
        .arg(std::process::id().to_string())
        .arg(data_dir)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// Whether something accepts TCP connections at one of `url`'s hosts and ports.
fn answers(url: &str) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return false;
    };
    let ports = config.get_ports();
    config.get_hosts().iter().enumerate().any(|(i, host)| {
        let tokio_postgres::config::Host::Tcp(host) = host else {
            return false;
        };
        let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        (host.as_str(), port)
            .to_socket_addrs()
            .is_ok_and(|mut addrs| {
                addrs.any(|a| {
                    std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2))
                        .is_ok()
                })
            })
    })
}

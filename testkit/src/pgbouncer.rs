//! PgBouncer in front of a server: the machine's `pgbouncer` binary (Debian's package)
//! started on a free loopback port with a configuration of the test's own, stopped
//! when dropped.

use std::fs::File;
use std::io::{Error, ErrorKind, Result};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{free_port, give_to, unprivileged_user};

/// PgBouncer's `pool_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// A server session per client connection, reset (`DISCARD ALL`) when the client
    /// leaves.
    Session,
    /// A server session per transaction.
    Transaction,
}

/// A running PgBouncer.
#[derive(Debug)]
pub struct PgBouncer {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl PgBouncer {
    /// The `pgbouncer` binary, when the machine has one (on `PATH` or in `/usr/sbin`).
    pub fn binary() -> Option<PathBuf> {
        crate::process::find_program("pgbouncer", &["/usr/sbin", "/usr/bin"])
    }

    /// Starts PgBouncer in `mode` in front of the server at `host:port` (every
    /// database, trust authentication for `users`), with at most `pool_size` server
    /// connections per database and user. Waits until it accepts connections.
    pub fn start(
        host: &str,
        port: u16,
        mode: PoolMode,
        pool_size: u32,
        users: &[&str],
    ) -> Result<Self> {
        let binary = Self::binary()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "pgbouncer is not installed"))?;
        let dir = tempfile::Builder::new()
            .prefix("dcb-pgbouncer-")
            .tempdir()?;
        let listen = free_port()?;
        let mode = match mode {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        };
        let users: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(dir.path().join("users.txt"), &users)?;
        let ini = format!(
            "[databases]\n* = host={host} port={port}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {listen}\n\
             unix_socket_dir =\nauth_type = trust\nauth_file = {users_file}\n\
             pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n\
             server_reset_query = DISCARD ALL\nignore_startup_parameters = extra_float_digits\n",
            users_file = dir.path().join("users.txt").display(),
        );
        let ini_path = dir.path().join("pgbouncer.ini");
        std::fs::write(&ini_path, &ini)?;
        let log = File::create(dir.path().join("pgbouncer.log"))?;
        let mut command = Command::new(binary);
        if let Some((uid, _)) = unprivileged_user()? {
            give_to(dir.path(), uid)?;
            // PgBouncer refuses to run as root; `-u` drops to the user.
            command.arg("-u").arg(user_name(uid));
        }
        let child = command
            .arg(&ini_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut bouncer = PgBouncer {
            dir,
            child,
            port: listen,
        };
        bouncer.wait_ready()?;
        Ok(bouncer)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Err(Error::other(format!(
                    "pgbouncer exited ({status}): {}",
                    self.log()
                )));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::new(ErrorKind::TimedOut, "pgbouncer did not start"))
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

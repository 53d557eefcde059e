//! What starting a server program from a test needs: the program, a free port, and
//! a user to run it as (PostgreSQL and PgBouncer refuse to run as root).

use std::io::Result;
use std::path::{Path, PathBuf};

/// `name` on `PATH`, else in one of `dirs`.
pub(crate) fn find_program(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A free loopback port (free when asked; the program binds it soon after).
pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `(uid, gid)` to run servers as when this process is root: `postgres`, else
/// `nobody`; `None` when not root.
pub(crate) fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
            return Ok(Some((user.uid.as_raw(), user.gid.as_raw())));
        }
    }
    Err(std::io::Error::other(
        "running as root and neither a postgres nor a nobody user exists",
    ))
}

/// Makes `dir` and everything in it owned by `uid`.
pub(crate) fn give_to(dir: &Path, uid: u32) -> Result<()> {
    std::os::unix::fs::chown(dir, Some(uid), None)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        std::os::unix::fs::chown(&path, Some(uid), None)?;
        if path.is_dir() {
            give_to(&path, uid)?;
        }
    }
    Ok(())
}

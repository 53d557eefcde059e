//! What starting a server program from a test needs: the program, a free port, and
//! a user to run it as (PostgreSQL and PgBouncer refuse to run as root); the last two
//! as the library's throwaway server finds them.

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

/// A free loopback port, as the throwaway server finds one.
pub(crate) fn free_port() -> Result<u16> {
    dcb_store::internals::free_port().map_err(std::io::Error::other)
}

/// `(uid, gid)` to run servers as when this process is root (as the throwaway server
/// runs); `None` when not root.
pub(crate) fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    dcb_store::internals::unprivileged_user().map_err(std::io::Error::other)
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

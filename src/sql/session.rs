//! Statements about a connection rather than the events: session settings, the
//! transaction bounds the writer sends itself, a ping and `LISTEN`.

/// An actor's session settings (the writer's and each reader's), with `$1` its
/// `statement_timeout`: the server's bound on a statement nobody waits for any more.
/// Generic plans from the first execution, so plans are made once, not per batch or
/// read: the append statement is written to do well under a generic plan (probes per
/// event, not joins sized by guesses), and planning it anew cost about 0.1-0.2 ms of
/// every batch; read statements are built so that one plan serves every value (ordered
/// index probes), and the statement for many items would otherwise be planned anew on
/// every execution (its arrays' sizes make each custom plan look cheaper than the
/// generic one).
pub(crate) const SESSION_SETTINGS: &str = "SELECT set_config('statement_timeout', $1, false),
        set_config('plan_cache_mode', 'force_generic_plan', false)";

/// The type of [`SESSION_SETTINGS`]'s parameter.
pub(crate) const SESSION_SETTINGS_TYPE: postgres_types::Type = postgres_types::Type::TEXT;

/// The writer's isolation. A batch of one round runs as an implicit transaction (the
/// append function's call): pinned to READ COMMITTED, as [`BEGIN`] pins the others, so
/// that the check's snapshot is taken after the lock whatever the server's default.
pub(crate) const WRITER_ISOLATION: &str =
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED";

/// A lease's session: the server notices a holder that vanished (a crashed host, a
/// partition) within about 10 + 3 × 5 s and releases its lock, rather than after the
/// system's default of two hours; settable by any role.
pub(crate) const LEASE_SESSION: &str =
    "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3";

/// A batch's transaction of several rounds. Pinned: a server whose default isolation
/// is REPEATABLE READ or SERIALIZABLE would take the snapshot before the lock and
/// decide on stale state.
pub(crate) const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// Ends a batch's transaction.
pub(crate) const COMMIT: &str = "COMMIT";

/// A round trip that touches nothing (health checks).
pub(crate) const PING: &str = "SELECT 1";

/// The server's encoding (the store needs UTF8).
pub(crate) const SERVER_ENCODING: &str = "SELECT current_setting('server_encoding')";

/// Listens on `channel`, a plain identifier the store derived
/// ([`notify_channel`](super::notify_channel)), never a user's value.
pub(crate) fn listen(channel: &str) -> String {
    format!("LISTEN \"{channel}\"")
}

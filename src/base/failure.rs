//! The one classification of driver errors: what an error from tokio-postgres says
//! about the connection it came from and about repeating the statement.
//!
//! Two questions are asked of it, and they differ on purpose for a cancelled
//! statement (SQLSTATE 57014, a `statement_timeout`): a read asks whether a fresh
//! connection could help ([`Failure::connection_failed`]: no, the same read would time
//! out again), the writer asks whether the server's answer is known
//! ([`Failure::outcome_known`]: no, the cancel may have met the `COMMIT`).

use tokio_postgres::error::SqlState;

use crate::error::Error;

/// What a driver error means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection, or it broke (no SQLSTATE, or class 08): a statement in flight
    /// may or may not have run.
    ConnectionLost,
    /// The server is shutting down, restarting or not yet accepting work (57P01 to
    /// 57P03); the connection is gone or about to be.
    ShuttingDown,
    /// Any other operator intervention (class 57: a cancelled statement, 57014, or a
    /// dropped database): the connection may still work, but what was cut short is
    /// not known.
    Interrupted,
    /// The server refused the statement and rolled its transaction back (every other
    /// SQLSTATE); the same statement gets the same answer.
    Refused,
}

impl Failure {
    /// Classifies `error`; `closed` says whether its connection is known to be closed
    /// (which makes any error a lost connection).
    pub(crate) fn of(error: &tokio_postgres::Error, closed: bool) -> Failure {
        match error.code() {
            _ if closed => Failure::ConnectionLost,
            None => Failure::ConnectionLost,
            Some(code) => Self::of_code(code),
        }
    }

    /// Classifies a SQLSTATE.
    pub(crate) fn of_code(code: &SqlState) -> Failure {
        let code = code.code();
        match &code[..2] {
            "08" => Failure::ConnectionLost,
            "57" if matches!(code, "57P01" | "57P02" | "57P03") => Failure::ShuttingDown,
            "57" => Failure::Interrupted,
            _ => Failure::Refused,
        }
    }

    /// Classifies a store error by its driver error: a failed connect is a lost
    /// connection, and errors that are not the driver's are refusals.
    pub(crate) fn of_error(error: &Error) -> Failure {
        match error {
            Error::Connect(_) => Failure::ConnectionLost,
            Error::Database { source, .. } => Failure::of(source, false),
            _ => Failure::Refused,
        }
    }

    /// Whether trying again on a fresh connection may succeed (reads, which are
    /// always safe to repeat).
    pub(crate) fn connection_failed(self) -> bool {
        matches!(self, Failure::ConnectionLost | Failure::ShuttingDown)
    }

    /// Whether the server's answer is known: it refused, on a connection that still
    /// works, so nothing of the transaction was written (appends).
    pub(crate) fn outcome_known(self) -> bool {
        self == Failure::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::Failure;
    use tokio_postgres::error::SqlState;

    #[test]
    fn each_class_has_one_meaning() {
        let cases = [
            (SqlState::CONNECTION_FAILURE, Failure::ConnectionLost),
            (SqlState::ADMIN_SHUTDOWN, Failure::ShuttingDown),
            (SqlState::CRASH_SHUTDOWN, Failure::ShuttingDown),
            (SqlState::CANNOT_CONNECT_NOW, Failure::ShuttingDown),
            (SqlState::QUERY_CANCELED, Failure::Interrupted),
            (SqlState::DATABASE_DROPPED, Failure::Interrupted),
            (SqlState::UNIQUE_VIOLATION, Failure::Refused),
            (SqlState::T_R_SERIALIZATION_FAILURE, Failure::Refused),
        ];
        for (code, expected) in cases {
            assert_eq!(Failure::of_code(&code), expected, "{}", code.code());
        }
        assert!(!Failure::Interrupted.connection_failed());
        assert!(!Failure::Interrupted.outcome_known());
        assert!(Failure::ShuttingDown.connection_failed());
        assert!(Failure::Refused.outcome_known());
    }
}

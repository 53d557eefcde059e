//! How a statement reaches the server: prepared once on a connection and run by its
//! name, or sent unnamed with its parameters' types (Parse, Bind and Execute in one
//! round trip; nothing stays on the session). Statements run again and again are
//! prepared, except behind a transaction-mode pooler, where the next transaction may
//! be another server session that never saw the name. Text run once always goes
//! unnamed: a named prepare would cost a second round trip, and tokio-postgres would
//! leave a name on whichever session a pooler picked.

use std::sync::Arc;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Error, Row, Statement};

/// One bind parameter.
pub(crate) type Param<'a> = &'a (dyn ToSql + Sync);

/// A statement ready to run on the connection that made it.
#[derive(Clone)]
pub(crate) enum Prepared {
    /// Prepared on the connection; runs by name.
    Named(Statement),
    /// Sent in full each time.
    Unnamed(Arc<Unnamed>),
}

pub(crate) struct Unnamed {
    text: String,
    types: Vec<Type>,
}

impl Prepared {
    /// `text`, whose parameters have `types`: prepared on `client` when the session
    /// keeps it (`named`), otherwise kept here to be sent unnamed each time.
    pub(crate) async fn new(
        client: &Client,
        text: &str,
        types: &[Type],
        named: bool,
    ) -> Result<Self, Error> {
        if named {
            return Ok(Prepared::Named(client.prepare_typed(text, types).await?));
        }
        Ok(Prepared::Unnamed(Arc::new(Unnamed {
            text: text.to_owned(),
            types: types.to_vec(),
        })))
    }

    pub(crate) async fn query(
        &self,
        client: &Client,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>, Error> {
        match self {
            Prepared::Named(statement) => client.query(statement, params).await,
            Prepared::Unnamed(unnamed) => {
                client
                    .query_typed(&unnamed.text, &typed(params, &unnamed.types))
                    .await
            }
        }
    }

    /// Runs it; the number of rows it changed.
    pub(crate) async fn execute(
        &self,
        client: &Client,
        params: &[Param<'_>],
    ) -> Result<u64, Error> {
        match self {
            Prepared::Named(statement) => client.execute(statement, params).await,
            Prepared::Unnamed(unnamed) => {
                client
                    .execute_typed(&unnamed.text, &typed(params, &unnamed.types))
                    .await
            }
        }
    }
}

/// `params` paired with `types`, as an unnamed statement sends them.
fn typed<'a>(params: &[Param<'a>], types: &[Type]) -> Vec<(Param<'a>, Type)> {
    params.iter().copied().zip(types.iter().cloned()).collect()
}

//! The PostgreSQL pool and migrations: the platform's tables (outbox, inbox) and
//! the service's own, applied together in version order.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgPool};

use crate::backoff::{Backoff, MAX_BACKOFF};
use crate::config::ServiceSettings;
use crate::shutdown::Shutdown;

/// The outbox and inbox tables (versions below 100; services number theirs from 100).
pub static PLATFORM_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Whether a database error is worth retrying: the connection or pool failed, or
/// the server aborted the transaction (deadlock, serialization failure, shutdown,
/// out of resources, or a bounded transaction that sat idle past its limit,
/// 25P03) rather than refusing the statement itself.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code == "25P03"
                || ["40", "08", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

/// Why a connection attempt can never succeed as configured: the server's
/// certificate is not trusted (TLS), or the server refused us (authentication,
/// pg_hba, an unknown database). None for what may pass (down, restarting, full).
fn refusal(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Tls(tls) => Some(format!("TLS: {tls}")),
        // rustls' verdict on the server's certificate arrives as invalid data.
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            Some(format!("TLS: {io}"))
        }
        sqlx::Error::Database(db)
            if db
                .code()
                .is_some_and(|c| c.starts_with("28") || c == "3D000") =>
        {
            Some(db.message().to_owned())
        }
        _ => None,
    }
}

/// How long a transaction that holds rows others wait on may sit idle between its
/// statements before PostgreSQL ends it (and its session), releasing the rows. A
/// copy frozen mid-transaction (SIGSTOP, a stalled VM) otherwise holds them for as
/// long as it is frozen, and every other copy's writes to those rows wait that
/// long too. Our own transactions never wait on anything but the database between
/// statements, so a healthy one is idle for milliseconds; one that a starved
/// process leaves idle that long ends as UNAVAILABLE (25P03 is transient), which
/// its callers retry, having changed nothing.
/// Sent as one simple query, so the bound costs no round trip of its own.
const BEGIN_BOUNDED: &str = "BEGIN; SET LOCAL idle_in_transaction_session_timeout = '500ms'";

/// A transaction that may sit idle 500 ms at most: for every one that locks rows
/// or unique keys another copy may wait on (stock, an order's request id, a
/// user's figures or email). Not for one that waits on something else between
/// statements (the outbox relay awaits the broker inside its transaction).
pub async fn begin_bounded(
    pool: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    pool.begin_with(BEGIN_BOUNDED).await
}

/// A pool that connects lazily, so a service starts (NOT_SERVING) while its
/// database is still coming up.
pub fn pool(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy(url)
        .context("DATABASE_URL: not a valid PostgreSQL URL")
}

/// Applies the platform's migrations and the service's, waiting for the database
/// to answer (until shutdown).
pub async fn migrate(pool: &PgPool, service: &Migrator, shutdown: &Shutdown) -> anyhow::Result<()> {
    let all = PLATFORM_MIGRATIONS
        .iter()
        .chain(service.iter())
        .cloned()
        .collect::<Vec<_>>();
    let migrator = Migrator::with_migrations(all);
    let mut backoff = Backoff::new(Duration::from_millis(200), MAX_BACKOFF);
    loop {
        match migrator.run(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_),
            )) => {
                // The pool reports a refused connection as a timeout: one direct
                // attempt tells an unreachable server from one that refuses us.
                if let Err(err) = sqlx::PgConnection::connect_with(&pool.connect_options()).await
                    && let Some(refusal) = refusal(&err)
                {
                    anyhow::bail!("DATABASE_URL: the database refused the connection: {refusal}");
                }
                tracing::warn!(
                    retry_in_ms = backoff.current().as_millis() as u64,
                    "database not reachable yet"
                );
            }
            Err(err) => return Err(err).context("applying database migrations"),
        }
        if !backoff.wait(shutdown).await {
            anyhow::bail!("shutdown before the database became reachable");
        }
    }
}

/// The service's pool, with every migration applied; gives up when the database
/// has not answered within a minute (the orchestrator restarts the process).
pub async fn connect_and_migrate(
    settings: &ServiceSettings,
    service: &Migrator,
) -> anyhow::Result<PgPool> {
    let pool = pool(
        settings.database_url.expose(),
        settings.database_max_connections,
    )?;
    tokio::time::timeout(
        Duration::from_secs(60),
        migrate(&pool, service, &Shutdown::new()),
    )
    .await
    .context("DATABASE_URL: database not reachable within 60 s")??;
    Ok(pool)
}

/// What a connection listening on a channel reports to its follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// LISTEN took effect: from here on every notification arrives. Also after a
    /// reconnection, when those sent in between are gone.
    Listening,
    /// A notification's payload.
    Notified(String),
    /// The connection failed or could not listen: notifications may be missed
    /// until the next `Listening`.
    Lost,
}

/// Follows `channel`'s notifications on a connection of `pool`'s server until
/// shutdown, handing `on` each one, and each gap, in order (the next waits for
/// `on` to finish): a lost connection is made again after a back-off.
pub async fn follow_notifications<F, Fut>(
    pool: PgPool,
    channel: &str,
    shutdown: Shutdown,
    mut on: F,
) where
    F: FnMut(Notice) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut backoff = Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let listened = tokio::select! {
            _ = shutdown.wait() => return,
            listening = listening => listening,
        };
        match listened {
            Ok(mut listener) => {
                backoff.reset();
                on(Notice::Listening).await;
                loop {
                    let received = tokio::select! {
                        _ = shutdown.wait() => return,
                        received = listener.try_recv() => received,
                    };
                    match received {
                        Ok(Some(notification)) => {
                            on(Notice::Notified(notification.payload().to_owned())).await;
                        }
                        // The connection closed; listen again on a new one, so that
                        // `Listening` marks where the gap ends.
                        Ok(None) => break,
                        Err(err) => {
                            tracing::warn!(error = %err, channel, "listening connection lost");
                            break;
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, channel, "notifications not listened for");
            }
        }
        on(Notice::Lost).await;
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// An insert's result, with a unique-constraint violation as ALREADY_EXISTS
/// naming `resource` and `id` (the row a concurrent or earlier request wrote).
pub fn unless_exists<T>(
    inserted: Result<T, sqlx::Error>,
    resource: &'static str,
    id: impl FnOnce() -> String,
) -> Result<T, crate::ApiError> {
    match inserted {
        Ok(row) => Ok(row),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
            Err(crate::ApiError::AlreadyExists { resource, id: id() })
        }
        Err(err) => Err(err.into()),
    }
}

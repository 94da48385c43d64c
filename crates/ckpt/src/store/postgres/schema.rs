//! Schema versions and migrations of the PostgreSQL store.

use super::conn::pg_err;
use super::PgStore;
use crate::error::{Error, Result};
use crate::store::OpenMode;

/// Migrations: entry `i` brings a store from version `i` to `i + 1`.
/// Unqualified names resolve to the store's schema (the connection's
/// `search_path`).
const MIGRATIONS: &[&str] = &[
    // 1: jobs with their checkpoints, bounded history, work items.
    "CREATE TABLE ckpt_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE jobs (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        cursor JSONB,
        items_processed BIGINT NOT NULL DEFAULT 0,
        stage TEXT,
        state JSONB,
        state_bytes BIGINT NOT NULL DEFAULT 0,
        checkpoint_at BIGINT,
        owner TEXT,
        lease_expires BIGINT,
        epoch BIGINT NOT NULL DEFAULT 0,
        attempts INT NOT NULL DEFAULT 0,
        saves BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        completed_at BIGINT,
        error TEXT
    );
    CREATE TABLE history (
        job_id BIGINT NOT NULL,
        seq BIGINT NOT NULL,
        cursor JSONB NOT NULL,
        items_processed BIGINT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE items (
        id BIGSERIAL PRIMARY KEY,
        job_id BIGINT NOT NULL,
        key TEXT NOT NULL,
        payload JSONB,
        status TEXT NOT NULL,
        attempts INT NOT NULL DEFAULT 0,
        claims BIGINT NOT NULL DEFAULT 0,
        owner TEXT,
        ready_at BIGINT,
        last_error TEXT,
        stats JSONB,
        cursor JSONB,
        enqueued_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        UNIQUE (job_id, key)
    );
    CREATE INDEX items_ready ON items (job_id, ready_at, id) WHERE ready_at IS NOT NULL;
    CREATE INDEX items_status ON items (job_id, status);",
    // 2: the liveness lock key of an owner's session, for fast crash detection.
    "ALTER TABLE items ADD COLUMN owner_key BIGINT;
    ALTER TABLE jobs ADD COLUMN owner_key BIGINT;",
    // 3: no index on every item's status. Every claim and completion
    // changes the status, so that index cost two index insertions per item
    // (measured: claim + complete 1.3-1.5x faster without it). Unfinished
    // items are found through items_ready (ready_at is set exactly while an
    // item is pending, running or failed), dead ones through the small
    // partial index of `dead_index`, built after this commits; counting by status
    // scans the job's items.
    "DROP INDEX items_status;",
    // 4: the history becomes a ring of `history_keep` slots per job, written
    // in place (see sql::HISTORY_SWEEP_EVERY). Existing entries keep their
    // sequence number as their slot: below `history_keep` that is the slot a
    // ring gives them, above it they are swept as they age.
    "ALTER TABLE history ADD COLUMN slot BIGINT;
    UPDATE history SET slot = seq;
    ALTER TABLE history ALTER COLUMN slot SET NOT NULL;
    ALTER TABLE history DROP CONSTRAINT history_pkey;
    ALTER TABLE history ADD PRIMARY KEY (job_id, slot);",
    // 5: each job's item count, kept by enqueue (items are only ever deleted
    // with their job), so counting completed items needs no scan.
    "ALTER TABLE jobs ADD COLUMN items_total BIGINT NOT NULL DEFAULT 0;
    UPDATE jobs SET items_total = (SELECT count(*) FROM items WHERE items.job_id = jobs.id)
    WHERE EXISTS (SELECT 1 FROM items WHERE items.job_id = jobs.id);",
    // 6: which command did it: a job's command templates, and the one that
    // completed each item (NULL: unknown, as for every item completed
    // before this step). Adding a nullable column rewrites no rows.
    "CREATE TABLE commands (
        job_id BIGINT NOT NULL,
        id BIGINT NOT NULL,
        command TEXT NOT NULL,
        first_used BIGINT NOT NULL,
        last_used BIGINT NOT NULL,
        PRIMARY KEY (job_id, id),
        UNIQUE (job_id, command)
    );
    ALTER TABLE items ADD COLUMN command_id BIGINT;",
    // 7: the tail of the last failure's output, beside its error (NULL for
    // every failure before this step). A nullable column rewrites no rows.
    "ALTER TABLE items ADD COLUMN last_output TEXT;",
];

/// The dead-letter index of schema 3. It is built with CONCURRENTLY, outside
/// the migration's transaction, so that upgrading a store of millions of
/// items does not lock the items table (and every worker) for the scan.
/// Schema-qualified: it runs outside any transaction, where a pooler's
/// connection has no search path of ours.
fn dead_index(schema: &str) -> String {
    format!("CREATE INDEX CONCURRENTLY IF NOT EXISTS items_dead ON {schema}.items (job_id, id) WHERE status = 'dead'")
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The store's version, or `None` when its schema holds no ckpt store.
async fn stored_version(
    client: &impl deadpool_postgres::GenericClient,
    schema: &str,
) -> Result<Option<i64>> {
    // One statement, so one snapshot: in two, a store that another process
    // committed in between looked like another application's tables (40
    // processes opening a fresh schema at once hit it). The catalog, not
    // information_schema: that one hides tables the role has no privilege
    // on, so a store the role may not read looked like no store at all.
    // Tables, partitioned tables, views, materialized views and foreign
    // tables count as another application's, as information_schema's do.
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                              JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = $1 AND c.relname = 'ckpt_meta'
                              AND c.relkind IN ('r', 'p')),
                    (SELECT count(*) FROM pg_catalog.pg_class c
                       JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f'))",
            &[&schema],
        )
        .await
        .map_err(pg_err)?;
    let (has_meta, tables): (bool, i64) = (row.get(0), row.get(1));
    if !has_meta {
        if tables > 0 {
            return Err(Error::NotAStore(format!(
                "schema \"{schema}\" holds {tables} table(s) of another application, not a ckpt store; it was left untouched (choose another with ?schema=NAME)"
            )));
        }
        return Ok(None);
    }
    let row = client
        .query_opt(
            &format!("SELECT value FROM {schema}.ckpt_meta WHERE key = 'schema_version'"),
            &[],
        )
        .await
        .map_err(pg_err)?;
    let version = row
        .and_then(|r| r.get::<_, String>(0).parse::<i64>().ok())
        .filter(|v| *v >= 0)
        .ok_or_else(|| {
            Error::NotAStore(format!("schema \"{schema}\" has a damaged ckpt_meta table"))
        })?;
    Ok(Some(version))
}

fn too_new(store: &PgStore, found: i64) -> Error {
    Error::SchemaTooNew {
        store: format!("{} (schema {})", store.url, store.schema),
        found,
        supported: SCHEMA_VERSION,
    }
}

/// Checks the store and brings it to [`SCHEMA_VERSION`]; creates it when
/// missing and `mode` allows.
pub(super) async fn migrate(store: &PgStore, mode: OpenMode) -> Result<()> {
    let schema = store.schema.as_str();
    let mut client = store.client().await?;
    // Fast path: already current, no lock needed.
    let found = if store.pooler().keeps_sessions() {
        stored_version(&client, schema).await?
    } else {
        // Behind a transaction-mode pooler, statements need a transaction.
        let tx = client.transaction().await.map_err(pg_err)?;
        let found = stored_version(&tx, schema).await;
        store.leave(&tx.statement_cache);
        tx.commit().await.map_err(pg_err)?;
        found?
    };
    match found {
        Some(v) if v == SCHEMA_VERSION => return Ok(()),
        Some(v) if v > SCHEMA_VERSION => return Err(too_new(store, v)),
        None if mode == OpenMode::MustExist => {
            return Err(Error::NotFound(format!(
                "no ckpt store in schema \"{schema}\" at {}",
                store.url
            )))
        }
        _ => {}
    }
    let tx = client.transaction().await.map_err(pg_err)?;
    let migrated = async {
        store.enter(&tx).await?;
        // Serialise migrations of this schema across processes.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext('ckpt-migrate:' || $1))",
            &[&schema],
        )
        .await
        .map_err(pg_err)?;
        let version = stored_version(&tx, schema).await?.unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(too_new(store, version));
        }
        // A reserved word (`order`, `user`) is a valid lowercase
        // identifier that every unquoted statement would trip on.
        let reserved = tx
            .query_opt(
                "SELECT 1 FROM pg_get_keywords() WHERE word = $1 AND catcode IN ('R', 'T')",
                &[&schema],
            )
            .await
            .map_err(pg_err)?
            .is_some();
        if reserved {
            return Err(Error::Open(format!(
                "schema \"{schema}\" is a reserved word in SQL; choose another name with ?schema=NAME"
            )));
        }
        // Created only when missing: CREATE SCHEMA IF NOT EXISTS needs the
        // CREATE privilege on the database even when the schema exists,
        // and a managed database often grants a role only CREATE on a
        // schema an administrator made for it.
        let exists = tx
            .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema])
            .await
            .map_err(pg_err)?
            .is_some();
        if !exists {
            tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await
                .map_err(pg_err)?;
        }
        for sql in &MIGRATIONS[version as usize..] {
            tx.batch_execute(sql).await.map_err(pg_err)?;
        }
        tx.execute(
            "INSERT INTO ckpt_meta (key, value) VALUES ('application', 'ckpt'), ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&SCHEMA_VERSION.to_string()],
        )
        .await
        .map_err(pg_err)?;
        Ok::<_, Error>(version)
    }
    .await;
    store.leave(&tx.statement_cache);
    match migrated {
        Ok(version) => {
            tx.commit().await.map_err(pg_err)?;
            if version < 3 {
                // Another process upgrading at the same moment may build it
                // too; the loser's error changes nothing, and without the
                // index dead items are still found, by a scan.
                let dead_index = dead_index(schema);
                if let Err(e) = client.batch_execute(&dead_index).await {
                    tracing::warn!(error = %e, "could not build the dead-items index; dead items are found by a scan until it is built by hand: {dead_index}");
                }
            }
            Ok(())
        }
        Err(e) => {
            // Release the advisory lock now rather than whenever the
            // dropped transaction's ROLLBACK gets sent.
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

//! The PostgreSQL schema: versioned migrations embedded in the binary, applied at start.
//!
//! Each migration is one SQL script, applied in one transaction together with the new version
//! number in `handover_schema`. The relay applies the missing ones under an advisory lock (so
//! that nodes starting together migrate once), and refuses to start when the database is at a
//! version newer than it knows ([`StoreError::SchemaTooNew`]): a newer relay migrated it, and
//! an older one must not write to a schema it does not understand.
//!
//! Why not a migration crate (refinery, sqlx): the list is short, forward-only and applied by
//! one function of 40 lines, where those crates bring a dependency tree of their own (refinery:
//! regex, time, siphasher, walkdir, ...; sqlx: a second PostgreSQL driver) into a relay that
//! keeps its build lean.

use super::{ADVISORY_MIGRATE, pg_err};
use crate::store::StoreError;

/// One migration: its version (1, 2, ...) and SQL.
pub(super) struct Migration {
    pub(super) version: i64,
    pub(super) sql: &'static str,
}

/// Every migration, in order. Never edit a released one: add the next.
pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: V1,
}];

/// The schema version this relay writes.
pub const SCHEMA_VERSION: i64 = 1;

const V1: &str = r#"
CREATE TABLE handover_mailboxes (
    recv_id bytea PRIMARY KEY,
    send_id bytea NOT NULL UNIQUE,
    auth_key bytea NOT NULL,
    capability_hashes bytea[] NOT NULL,
    next_seq bigint NOT NULL DEFAULT 1,
    queued_count bigint NOT NULL DEFAULT 0,
    queued_bytes bigint NOT NULL DEFAULT 0,
    next_prekey bigint NOT NULL DEFAULT 0,
    one_time_count bigint NOT NULL DEFAULT 0,
    one_time_kem_count bigint NOT NULL DEFAULT 0,
    tombstones bigint NOT NULL DEFAULT 0
);
CREATE TABLE handover_envelopes (
    recv_id bytea NOT NULL REFERENCES handover_mailboxes ON DELETE CASCADE,
    seq bigint NOT NULL,
    envelope_id bytea NOT NULL,
    expires_at bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (recv_id, seq),
    UNIQUE (recv_id, envelope_id)
);
CREATE INDEX handover_envelopes_expiry ON handover_envelopes (expires_at);
CREATE TABLE handover_tombstones (
    recv_id bytea NOT NULL REFERENCES handover_mailboxes ON DELETE CASCADE,
    envelope_id bytea NOT NULL,
    until bigint NOT NULL,
    PRIMARY KEY (recv_id, envelope_id)
);
CREATE INDEX handover_tombstones_until ON handover_tombstones (until);
CREATE TABLE handover_prekey_bundles (
    recv_id bytea PRIMARY KEY REFERENCES handover_mailboxes ON DELETE CASCADE,
    bundle bytea NOT NULL
);
CREATE TABLE handover_one_time_prekeys (
    recv_id bytea NOT NULL REFERENCES handover_mailboxes ON DELETE CASCADE,
    kind smallint NOT NULL,
    n bigint NOT NULL,
    prekey bytea NOT NULL,
    PRIMARY KEY (recv_id, kind, n)
);
CREATE TABLE handover_directory (
    org_root_key bytea PRIMARY KEY,
    issued_at bigint NOT NULL,
    profile bytea NOT NULL
);
CREATE TABLE handover_blobs (
    blob_id bytea PRIMARY KEY,
    size bigint NOT NULL,
    expires_at bigint NOT NULL,
    written bigint NOT NULL DEFAULT 0,
    complete boolean NOT NULL DEFAULT false,
    owner bigint NOT NULL
);
CREATE INDEX handover_blobs_expiry ON handover_blobs (expires_at);
CREATE TABLE handover_blob_chunks (
    blob_id bytea NOT NULL REFERENCES handover_blobs ON DELETE CASCADE,
    idx bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (blob_id, idx)
);
CREATE TABLE handover_counters (
    name text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO handover_counters (name, value) VALUES ('blob_bytes', 0);

-- A send in one round trip: the mailbox row is locked (FOR UPDATE) from the sequence number's
-- allocation to the commit, so one mailbox's envelopes commit in sequence order.
-- Returns the sequence number, or -1 (no mailbox), -2 (duplicate id), -3 (over quota).
CREATE FUNCTION handover_enqueue(p_recv bytea, p_env bytea, p_expires bigint, p_body bytea,
                                 p_max_count bigint, p_max_bytes bigint, p_wake text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    m record;
BEGIN
    SELECT next_seq, queued_count, queued_bytes INTO m
        FROM handover_mailboxes WHERE recv_id = p_recv FOR UPDATE;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    PERFORM 1 FROM handover_envelopes WHERE recv_id = p_recv AND envelope_id = p_env;
    IF FOUND THEN
        RETURN -2;
    END IF;
    IF m.queued_count >= p_max_count OR m.queued_bytes + octet_length(p_body) > p_max_bytes THEN
        RETURN -3;
    END IF;
    INSERT INTO handover_envelopes (recv_id, seq, envelope_id, expires_at, body)
        VALUES (p_recv, m.next_seq, p_env, p_expires, p_body);
    UPDATE handover_mailboxes
        SET next_seq = m.next_seq + 1,
            queued_count = queued_count + 1,
            queued_bytes = queued_bytes + octet_length(p_body)
        WHERE recv_id = p_recv;
    PERFORM pg_notify('handover_wake', p_wake);
    RETURN m.next_seq;
END
$$;

-- An ack in one round trip, under the mailbox row's lock. Returns the envelopes deleted and
-- their bytes.
CREATE FUNCTION handover_ack(p_recv bytea, p_ids bytea[], OUT n bigint, OUT b bigint)
LANGUAGE plpgsql AS $$
BEGIN
    n := 0;
    b := 0;
    PERFORM 1 FROM handover_mailboxes WHERE recv_id = p_recv FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    WITH d AS (
        DELETE FROM handover_envelopes
            WHERE recv_id = p_recv AND envelope_id = ANY (p_ids)
            RETURNING octet_length(body) AS len
    )
    SELECT count(*), coalesce(sum(len), 0) INTO n, b FROM d;
    IF n > 0 THEN
        UPDATE handover_mailboxes
            SET queued_count = queued_count - n, queued_bytes = queued_bytes - b
            WHERE recv_id = p_recv;
    END IF;
END
$$;
"#;

/// Applies the missing migrations in one transaction under an advisory lock. Returns the
/// version the database was at before.
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<i64, StoreError> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&ADVISORY_MIGRATE])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS handover_schema (
            one boolean PRIMARY KEY DEFAULT true CHECK (one),
            version bigint NOT NULL
        )",
    )
    .await
    .map_err(pg_err)?;
    let found: i64 = tx
        .query_opt("SELECT version FROM handover_schema", &[])
        .await
        .map_err(pg_err)?
        .map(|row| row.get(0))
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.batch_execute(m.sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO handover_schema (one, version) VALUES (true, $1)
             ON CONFLICT (one) DO UPDATE SET version = excluded.version",
            &[&m.version],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(found)
}

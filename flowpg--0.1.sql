/* flowpg--0.1.sql: catalog, SQL functions and views of flowpg 0.1 */

\echo Use "CREATE EXTENSION flowpg" to load this file. \quit

/*
 * CREATE EXTENSION uses the schema flowpg if it exists already.  Owned by
 * a role that is not a superuser, that role could drop every stream of
 * every role with it (DROP SCHEMA ... CASCADE), or put functions of its
 * own beside flowpg's: refuse it.
 */
DO $$
DECLARE
    owner pg_catalog.name;
BEGIN
    SELECT r.rolname INTO owner
      FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
     WHERE n.nspname OPERATOR(pg_catalog.=) 'flowpg' AND NOT r.rolsuper;
    IF FOUND THEN
        RAISE EXCEPTION 'schema "flowpg" is owned by role "%", which is not a superuser', owner
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'flowpg installs into the existing schema flowpg, whose owner could drop or shadow flowpg''s objects.',
                  HINT = 'Drop the schema, or give it to a superuser (ALTER SCHEMA flowpg OWNER TO ...), then create the extension.';
    END IF;
END $$;

/*
 * Catalog: one row per stream.  Written only by flowpg's C code, which
 * switches to the extension owner for that; users read it through the
 * flowpg.streams view.
 */
CREATE TABLE flowpg.stream (
    id                  integer PRIMARY KEY,
    name                text NOT NULL,
    result              pg_catalog.regclass NOT NULL UNIQUE,
    source              pg_catalog.regclass NOT NULL,
    owner               pg_catalog.oid NOT NULL,
    query               text NOT NULL,
    definition          text NOT NULL,
    plan                text NOT NULL,
    checkpoint_interval interval,
    paused              boolean NOT NULL DEFAULT false,
    rewrite             boolean NOT NULL DEFAULT false,
    failure             text,
    failed_at           timestamptz,
    restored            boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now(),
    settings            text[] NOT NULL DEFAULT '{}',
    slot_origin         text
);
COMMENT ON TABLE flowpg.stream IS 'flowpg streams: definition, owner, result and source tables; name is the result table''s name at creation';
COMMENT ON COLUMN flowpg.stream.rewrite IS 'the worker rewrites the whole result table from its state at its next start (after flowpg.restore)';
COMMENT ON COLUMN flowpg.stream.definition IS 'the query with every name schema-qualified, as the objects are named now (renames are followed); compiled again when a dump is restored';
COMMENT ON COLUMN flowpg.stream.plan IS 'the analyzed query (object ids: valid in this database only)';
COMMENT ON COLUMN flowpg.stream.settings IS 'name=value: the settings (TimeZone, DateStyle, lc_time, search_path, ...) of the session that created the stream, with which it evaluates its query';
COMMENT ON COLUMN flowpg.stream.restored IS 'loaded from a dump: not running until flowpg rebuilds it from its source table';
COMMENT ON COLUMN flowpg.stream.slot_origin IS 'system identifier/timeline/database oid where the stream''s slot was made: a stream found without its slot in a copy (pg_upgrade, failover, a recovered base backup, CREATE DATABASE ... TEMPLATE) is rebuilt from its source table';
COMMENT ON COLUMN flowpg.stream.owner IS 'the role the stream runs as: the owner of its result table (a restored row takes its result table''s owner)';
COMMENT ON COLUMN flowpg.stream.failure IS 'why the stream stopped for good (its slot is gone); its results are stale';

/*
 * pg_dump dumps the stream definitions (result and source go out by
 * name, as regclass).  A row that does not come from create_stream, such
 * as one pg_restore loads, is marked restored by this trigger, which also
 * gives it the owner of its result table (the dumped owner's oid means
 * nothing on another server; the role may not even exist there, and
 * pg_restore --no-owner gives the restoring role the tables), and at
 * commit flowpg starts rebuilding the stream: a new slot, and a state
 * computed from the source table's rows.
 */
SELECT pg_catalog.pg_extension_config_dump('flowpg.stream', '');

CREATE FUNCTION flowpg.stream_restored()
RETURNS trigger
AS 'MODULE_PATHNAME', 'flowpg_stream_restored'
LANGUAGE C;
CREATE TRIGGER stream_restored BEFORE INSERT ON flowpg.stream
    FOR EACH ROW EXECUTE FUNCTION flowpg.stream_restored();

/*
 * Operator state, as a log: each checkpoint appends the keys it writes
 * (key id, key, serialized aggregate states), packed into segments; a
 * later entry of a key replaces an earlier one.  Now and then a checkpoint
 * writes every key and deletes the older segments (compaction).
 */
CREATE TABLE flowpg.state (
    stream_id     integer NOT NULL,
    checkpoint_id bigint NOT NULL,
    seq           integer NOT NULL,
    keys          integer NOT NULL,
    data          bytea NOT NULL,
    PRIMARY KEY (stream_id, checkpoint_id, seq)
);
/*
 * Segments are compressed (lz4 where the server has it): a checkpoint's WAL
 * shares the disk with the source tables' writers, and the key entries of
 * a segment compress about 3 to 1.
 */
ALTER TABLE flowpg.state ALTER COLUMN data SET STORAGE EXTENDED;
COMMENT ON TABLE flowpg.state IS 'flowpg checkpointed operator state: segments of key entries, newest entry of a key wins';

/* One row per checkpoint; the newest row of a stream is where it resumes. */
CREATE SEQUENCE flowpg.checkpoint_id_seq;
CREATE TABLE flowpg.checkpoint (
    id          bigint PRIMARY KEY DEFAULT pg_catalog.nextval('flowpg.checkpoint_id_seq'),
    stream_id   integer NOT NULL,
    lsn         pg_lsn NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    keys        bigint NOT NULL,
    bytes       bigint NOT NULL,
    kind        text NOT NULL
        CHECK (kind IN ('periodic', 'forced', 'savepoint', 'restore', 'rewrite')),
    state_keys  bigint      -- keys in the state it holds: what a restore reserves
);
CREATE INDEX checkpoint_stream_idx ON flowpg.checkpoint (stream_id, id);
COMMENT ON TABLE flowpg.checkpoint IS 'flowpg checkpoints: the source position and keys written by each';

/*
 * Savepoints: a full copy of a stream's state at a checkpoint, kept until
 * dropped, with a replication slot (flowpg_sp_<database>_<stream>_<id>)
 * that keeps the WAL since that checkpoint.
 */
CREATE TABLE flowpg.savepoint (
    id          bigint PRIMARY KEY,
    stream_id   integer NOT NULL,
    name        text NOT NULL,
    lsn         pg_lsn NOT NULL,
    created_at  timestamptz NOT NULL,
    keys        bigint NOT NULL,
    bytes       bigint NOT NULL,
    UNIQUE (stream_id, name)
);
COMMENT ON TABLE flowpg.savepoint IS 'flowpg savepoints: named, durable copies of a stream''s state and position';

CREATE TABLE flowpg.savepoint_state (
    savepoint_id bigint NOT NULL,
    seq          integer NOT NULL,
    keys         integer NOT NULL,
    data         bytea NOT NULL,
    PRIMARY KEY (savepoint_id, seq)
);
ALTER TABLE flowpg.savepoint_state ALTER COLUMN data SET STORAGE EXTENDED;
DO $$
BEGIN
    ALTER TABLE flowpg.state ALTER COLUMN data SET COMPRESSION lz4;
    ALTER TABLE flowpg.savepoint_state ALTER COLUMN data SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;   -- a server built without lz4: the default, pglz
END
$$;
COMMENT ON TABLE flowpg.savepoint_state IS 'flowpg savepoints'' state: segments of key entries, as in flowpg.state';

/*
 * A publication FOR ALL TABLES publishes flowpg's tables too: a
 * subscriber's logical replication workers skip their changes (its
 * streams are its own): the trigger is enabled ALWAYS, as they run with
 * session_replication_role replica, and fires only then (WHEN: firing on
 * every row of a checkpoint's state segments made its lazy commit's WAL
 * flushed at once).
 */
CREATE FUNCTION flowpg.not_replicated()
RETURNS trigger
AS 'MODULE_PATHNAME', 'flowpg_not_replicated'
LANGUAGE C;
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['stream', 'state', 'checkpoint', 'savepoint', 'savepoint_state'] LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER not_replicated BEFORE INSERT OR UPDATE OR DELETE '
                                  'ON flowpg.%I FOR EACH ROW '
                                  'WHEN (pg_catalog.current_setting(''session_replication_role'') OPERATOR(pg_catalog.=) ''replica'') '
                                  'EXECUTE FUNCTION flowpg.not_replicated()', t);
        EXECUTE pg_catalog.format('ALTER TABLE flowpg.%I ENABLE ALWAYS TRIGGER not_replicated', t);
    END LOOP;
END
$$;

/*
 * flowpg checks and follows DDL on streams' tables in hooks of its
 * library, which a server has only when it preloads it.  On a server that
 * does not (flowpg taken out of shared_preload_libraries for a while),
 * these event triggers run the same checks and refuse what they cannot
 * follow (dropping a stream's table, changing a stream's owner); on one
 * that does, they do nothing.
 */
CREATE FUNCTION flowpg.ddl_guard()
RETURNS event_trigger
AS 'MODULE_PATHNAME', 'flowpg_ddl_guard'
LANGUAGE C;
CREATE EVENT TRIGGER flowpg_ddl_start ON ddl_command_start
    EXECUTE FUNCTION flowpg.ddl_guard();
CREATE EVENT TRIGGER flowpg_ddl_end ON ddl_command_end
    EXECUTE FUNCTION flowpg.ddl_guard();
CREATE EVENT TRIGGER flowpg_sql_drop ON sql_drop
    EXECUTE FUNCTION flowpg.ddl_guard();

CREATE FUNCTION flowpg.create_stream(name text, query text,
                                     checkpoint_interval interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'flowpg_create_stream'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.create_stream(text, text, interval) IS
    'create a stream: a result table kept equal to the query over rows inserted from now on';

CREATE FUNCTION flowpg.drop_stream(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'flowpg_drop_stream'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.drop_stream(text) IS
    'drop a stream: its worker, slot, state, checkpoints and result table';

CREATE FUNCTION flowpg.wait(name text, timeout interval DEFAULT '60 s')
RETURNS void
AS 'MODULE_PATHNAME', 'flowpg_wait'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.wait(text, interval) IS
    'wait until every transaction committed before the call is in the stream''s result table';

CREATE FUNCTION flowpg.checkpoint(name text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'flowpg_checkpoint'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.checkpoint(text) IS
    'take a checkpoint of the stream now and return its id';

CREATE FUNCTION flowpg.pause_stream(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'flowpg_pause_stream'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.pause_stream(text) IS
    'pause a stream: checkpoint, then stop applying the source until resumed (kept across restarts)';

CREATE FUNCTION flowpg.resume_stream(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'flowpg_resume_stream'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.resume_stream(text) IS
    'resume a paused stream: it catches up with everything committed meanwhile';

CREATE FUNCTION flowpg.set_checkpoint_interval(name text, checkpoint_interval interval)
RETURNS void
AS 'MODULE_PATHNAME', 'flowpg_set_checkpoint_interval'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.set_checkpoint_interval(text, interval) IS
    'change a stream''s checkpoint interval (NULL: flowpg.checkpoint_interval), without restarting it';

CREATE FUNCTION flowpg.live(stream anyelement)
RETURNS SETOF anyelement
AS 'MODULE_PATHNAME', 'flowpg_live'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.live(anyelement) IS
    'current results of a stream, read from shared memory: flowpg.live(NULL::result_table)';

CREATE FUNCTION flowpg.savepoint(stream text, savepoint text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'flowpg_savepoint'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.savepoint(text, text) IS
    'take a named, durable savepoint of the stream: its state and position, and the WAL since; returns its id';

CREATE FUNCTION flowpg.restore(stream text, savepoint text)
RETURNS void
AS 'MODULE_PATHNAME', 'flowpg_restore'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.restore(text, text) IS
    'rewind the stream to a savepoint: state, result table and position; it then re-processes everything committed since';

CREATE FUNCTION flowpg.rebuild_stream(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'flowpg_rebuild_stream'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.rebuild_stream(text) IS
    'rebuild the stream from its source table, as a restored one: its results become its query over every row of the table; its savepoints go';

CREATE FUNCTION flowpg.drop_savepoint(stream text, savepoint text)
RETURNS void
AS 'MODULE_PATHNAME', 'flowpg_drop_savepoint'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION flowpg.drop_savepoint(text, text) IS
    'drop a savepoint of the stream, releasing the WAL it keeps';

CREATE FUNCTION flowpg.stream_status(
    OUT stream_id integer,
    OUT pid integer,
    OUT status text,
    OUT processed_lsn pg_lsn,
    OUT checkpoint_lsn pg_lsn,
    OUT last_checkpoint_at timestamptz,
    OUT checkpoint_id bigint,
    OUT checkpoint_ms float8,
    OUT checkpoints bigint,
    OUT checkpoint_total_ms float8,
    OUT events bigint,
    OUT events_per_second float8,
    OUT lag_bytes bigint,
    OUT lag_seconds float8,
    OUT keys bigint,
    OUT state_bytes bigint,
    OUT restarts integer,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT ignored_updates bigint,
    OUT ignored_deletes bigint,
    OUT ignored_truncates bigint,
    OUT writer_pid integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'flowpg_stream_status'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION flowpg.stream_status() IS
    'run-time status of this database''s stream workers, from shared memory';

CREATE FUNCTION flowpg.free_stream_entries()
RETURNS integer
AS 'MODULE_PATHNAME', 'flowpg_free_stream_entries'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION flowpg.free_stream_entries() IS
    'flowpg.max_streams entries no stream of the server holds; when none is free, a stream without one does not run';

CREATE FUNCTION flowpg.slot_origin()
RETURNS text
AS 'MODULE_PATHNAME', 'flowpg_slot_origin'
LANGUAGE C STABLE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION flowpg.slot_origin() IS
    'system identifier/timeline/database oid of the slots made here now; a stream whose slot_origin differs and whose slot is missing is in a copy, and is rebuilt';

CREATE FUNCTION flowpg.retained_wal(stream_id integer)
RETURNS bigint
AS 'MODULE_PATHNAME', 'flowpg_retained_wal'
LANGUAGE C VOLATILE STRICT
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION flowpg.retained_wal(integer) IS
    'bytes of WAL the stream''s replication slots (its own and its savepoints'') keep from being removed';

CREATE VIEW flowpg.streams AS
SELECT CASE WHEN c.oid IS NULL THEN s.name ELSE pg_catalog.format('%I.%I', n.nspname, c.relname) END AS name,
       s.query,
       s.definition,
       s.settings,
       s.owner::pg_catalog.regrole AS owner,
       CASE WHEN s.failure IS NOT NULL OR lost.slot IS NOT NULL THEN 'failed'
            -- a standby has the streams' tables, replicated, and no worker
            WHEN pg_catalog.pg_is_in_recovery() THEN 'standby'
            WHEN st.stream_id IS NULL AND e.none_free THEN 'failed'
            WHEN s.restored AND st.status IS DISTINCT FROM 'failed' THEN 'starting'
            WHEN s.paused AND st.status IS DISTINCT FROM 'failed' THEN 'paused'
            ELSE COALESCE(st.status, 'starting') END AS status,
       s.failure IS NOT NULL OR lost.slot IS NOT NULL AS stale,
       st.pid,
       st.writer_pid,
       COALESCE(s.checkpoint_interval,
                pg_catalog.current_setting('flowpg.checkpoint_interval')::pg_catalog.interval)
           AS checkpoint_interval,
       st.processed_lsn,
       st.checkpoint_lsn,
       st.last_checkpoint_at,
       st.checkpoint_id,
       st.checkpoint_ms,
       COALESCE(st.checkpoints, 0) AS checkpoints,
       COALESCE(st.checkpoint_total_ms, 0) AS checkpoint_total_ms,
       COALESCE(st.events, 0) AS events,
       COALESCE(st.events_per_second, 0) AS events_per_second,
       st.lag_bytes,
       st.lag_seconds,
       flowpg.retained_wal(s.id) AS retained_wal,
       COALESCE(st.keys, 0) AS keys,
       COALESCE(st.state_bytes, 0) AS state_bytes,
       COALESCE(st.restarts, 0) AS restarts,
       -- an error may quote a source row: for the owner's members only, as
       -- pg_stat_activity shows a session's query
       CASE WHEN NOT pg_catalog.pg_has_role(s.owner, 'USAGE')
                 AND NOT pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE')
            THEN '<insufficient privilege>' ELSE
       COALESCE(s.failure,
                CASE WHEN lost.slot IS NOT NULL THEN
                    pg_catalog.format('replication slot "%s" was dropped or invalidated outside flowpg, or dropped by flowpg past flowpg.max_retained_wal while the stream could not run (the server log says which): the WAL the stream had not applied may be gone; its results are stale (flowpg.rebuild_stream rebuilds it from its source table)',
                                      lost.slot) END,
                st.last_error,
                CASE WHEN st.stream_id IS NULL AND e.none_free THEN
                    pg_catalog.format('all %s flowpg.max_streams entries are taken by other streams, so this one does not run (its slot keeps its WAL): raise flowpg.max_streams and restart the server',
                                      pg_catalog.current_setting('flowpg.max_streams')) END) END AS last_error,
       CASE WHEN s.failure IS NOT NULL THEN s.failed_at ELSE st.last_error_at END AS last_error_at,
       COALESCE(st.ignored_updates, 0) AS ignored_updates,
       COALESCE(st.ignored_deletes, 0) AS ignored_deletes,
       COALESCE(st.ignored_truncates, 0) AS ignored_truncates,
       s.source,
       s.result,
       s.id
  FROM flowpg.stream s
  LEFT JOIN pg_catalog.pg_class c ON c.oid = s.result
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN flowpg.stream_status() st ON st.stream_id = s.id
  -- more streams than flowpg.max_streams: those without an entry do not run
  CROSS JOIN (SELECT flowpg.free_stream_entries() = 0 AS none_free) e
  -- the stream's slot went without flowpg (see ApiCheckNotFailed)
  LEFT JOIN LATERAL (
      SELECT own.slot
        FROM (SELECT pg_catalog.format('flowpg_%s_%s', d.oid, s.id) AS slot
                FROM pg_catalog.pg_database d
               WHERE d.datname = pg_catalog.current_database()) own
       WHERE s.failure IS NULL AND NOT s.restored
         AND NOT pg_catalog.pg_is_in_recovery()   -- a standby has no slots
         -- nor has a copy (pg_upgrade, failover, a database's copy): it rebuilds
         AND s.slot_origin IS NOT DISTINCT FROM flowpg.slot_origin()
         AND NOT EXISTS (SELECT FROM pg_catalog.pg_replication_slots r
                          WHERE r.slot_name = own.slot
                            AND r.wal_status IS DISTINCT FROM 'lost')) lost ON true;
COMMENT ON VIEW flowpg.streams IS 'every stream of this database with its status and progress';

CREATE VIEW flowpg.checkpoints AS
SELECT k.id,
       COALESCE(pg_catalog.format('%I.%I', n.nspname, c.relname), s.name) AS stream,
       k.lsn,
       k.started_at,
       k.finished_at,
       k.finished_at - k.started_at AS duration,
       k.keys,
       k.bytes,
       k.kind,
       k.stream_id
  FROM flowpg.checkpoint k
  JOIN flowpg.stream s ON s.id = k.stream_id
  LEFT JOIN pg_catalog.pg_class c ON c.oid = s.result
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;
COMMENT ON VIEW flowpg.checkpoints IS 'the last checkpoints of every stream (flowpg.checkpoints_retained per stream)';

CREATE VIEW flowpg.savepoints AS
SELECT p.id,
       COALESCE(pg_catalog.format('%I.%I', n.nspname, c.relname), s.name) AS stream,
       p.name,
       p.lsn,
       p.created_at,
       p.keys,
       p.bytes,
       r.slot_name IS NOT NULL AND r.wal_status IS DISTINCT FROM 'lost' AS restorable,
       pg_catalog.pg_wal_lsn_diff(
           CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn()
                ELSE pg_catalog.pg_current_wal_lsn() END,
           r.restart_lsn)::bigint AS retained_wal,
       p.stream_id
  FROM flowpg.savepoint p
  JOIN flowpg.stream s ON s.id = p.stream_id
  LEFT JOIN pg_catalog.pg_class c ON c.oid = s.result
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_catalog.pg_replication_slots r
         ON r.slot_name = pg_catalog.format('flowpg_sp_%s_%s_%s',
                (SELECT d.oid FROM pg_catalog.pg_database d
                  WHERE d.datname = pg_catalog.current_database()),
                p.stream_id, p.id);
COMMENT ON VIEW flowpg.savepoints IS 'every savepoint of this database''s streams, and whether it can still be restored';

GRANT USAGE ON SCHEMA flowpg TO PUBLIC;
GRANT SELECT ON flowpg.streams TO PUBLIC;
GRANT SELECT ON flowpg.checkpoints TO PUBLIC;
GRANT SELECT ON flowpg.savepoints TO PUBLIC;

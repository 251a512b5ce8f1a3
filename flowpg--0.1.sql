/* flowpg--0.1.sql: catalog, SQL functions and views of flowpg 0.1 */

\echo Use "CREATE EXTENSION flowpg" to load this file. \quit

/*
 * Catalog: one row per stream.  Written only by flowpg's C code, which
 * switches to the extension owner for that; users read it through the
 * flowpg.streams view.
 */
CREATE TABLE flowpg.stream (
    id                  integer PRIMARY KEY,
    name                text NOT NULL,
    result              oid NOT NULL UNIQUE,
    source              oid NOT NULL,
    owner               oid NOT NULL,
    query               text NOT NULL,
    plan                text NOT NULL,
    checkpoint_interval interval,
    paused              boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE flowpg.stream IS 'flowpg streams: definition, owner, result and source tables; name is the result table''s name at creation';

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
ALTER TABLE flowpg.state ALTER COLUMN data SET STORAGE EXTERNAL;
COMMENT ON TABLE flowpg.state IS 'flowpg checkpointed operator state: segments of key entries, newest entry of a key wins';

/* One row per checkpoint; the newest row of a stream is where it resumes. */
CREATE SEQUENCE flowpg.checkpoint_id_seq;
CREATE TABLE flowpg.checkpoints (
    id          bigint PRIMARY KEY DEFAULT pg_catalog.nextval('flowpg.checkpoint_id_seq'),
    stream_id   integer NOT NULL,
    lsn         pg_lsn NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    keys        bigint NOT NULL,
    kind        text NOT NULL
);
CREATE INDEX checkpoints_stream_idx ON flowpg.checkpoints (stream_id, id);
COMMENT ON TABLE flowpg.checkpoints IS 'flowpg checkpoints: the source position and keys written by each';

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

CREATE FUNCTION flowpg.stream_status(
    OUT stream_id integer,
    OUT pid integer,
    OUT status text,
    OUT processed_lsn pg_lsn,
    OUT checkpoint_lsn pg_lsn,
    OUT last_checkpoint_at timestamptz,
    OUT checkpoint_id bigint,
    OUT events bigint,
    OUT keys bigint,
    OUT state_bytes bigint,
    OUT restarts integer,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT ignored_updates bigint,
    OUT ignored_deletes bigint,
    OUT ignored_truncates bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'flowpg_stream_status'
LANGUAGE C VOLATILE
SET search_path = pg_catalog, pg_temp;
COMMENT ON FUNCTION flowpg.stream_status() IS
    'run-time status of this database''s stream workers, from shared memory';

CREATE VIEW flowpg.streams AS
SELECT CASE WHEN c.oid IS NULL THEN s.name ELSE pg_catalog.format('%I.%I', n.nspname, c.relname) END AS name,
       s.query,
       s.owner::pg_catalog.regrole AS owner,
       CASE WHEN s.paused AND st.status IS DISTINCT FROM 'failed' THEN 'paused'
            ELSE COALESCE(st.status, 'starting') END AS status,
       st.pid,
       COALESCE(s.checkpoint_interval,
                pg_catalog.current_setting('flowpg.checkpoint_interval')::pg_catalog.interval)
           AS checkpoint_interval,
       st.processed_lsn,
       st.checkpoint_lsn,
       st.last_checkpoint_at,
       st.checkpoint_id,
       COALESCE(st.events, 0) AS events,
       COALESCE(st.keys, 0) AS keys,
       COALESCE(st.state_bytes, 0) AS state_bytes,
       COALESCE(st.restarts, 0) AS restarts,
       st.last_error,
       st.last_error_at,
       COALESCE(st.ignored_updates, 0) AS ignored_updates,
       COALESCE(st.ignored_deletes, 0) AS ignored_deletes,
       COALESCE(st.ignored_truncates, 0) AS ignored_truncates,
       s.source::pg_catalog.regclass AS source,
       s.result::pg_catalog.regclass AS result,
       s.id
  FROM flowpg.stream s
  LEFT JOIN pg_catalog.pg_class c ON c.oid = s.result
  LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN flowpg.stream_status() st ON st.stream_id = s.id;
COMMENT ON VIEW flowpg.streams IS 'every stream of this database with its status and progress';

GRANT USAGE ON SCHEMA flowpg TO PUBLIC;
GRANT SELECT ON flowpg.streams TO PUBLIC;
GRANT SELECT ON flowpg.checkpoints TO PUBLIC;

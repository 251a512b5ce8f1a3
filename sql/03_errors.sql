-- Every wrong call gets an SQLSTATE, a message naming what is wrong and
-- usually a hint; and leaves nothing behind: no catalog row, slot, origin,
-- worker or table.
CREATE FUNCTION try(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    state text;
    msg text;
    hint text;
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            hint = PG_EXCEPTION_HINT;
    RETURN state || ': ' || msg || CASE WHEN hint <> '' THEN E'\nHINT:  ' || hint ELSE '' END;
END $$;
CREATE VIEW leftovers AS
SELECT (SELECT count(*) FROM flowpg.streams) AS streams,
       (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%') AS slots,
       (SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'flowpg%') AS origins,
       (SELECT count(*) FROM pg_class WHERE relname = 'bad') AS tables;
-- create_stream that must fail; says so if it leaves anything behind
CREATE FUNCTION try_create(name text, query text, iv interval DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    before text := (SELECT l::text FROM leftovers l);
    result text;
    after text;
BEGIN
    result := try(format('SELECT flowpg.create_stream(%L, %L, %L)', name, query, iv));
    after := (SELECT l::text FROM leftovers l);
    IF after <> before THEN
        result := result || E'\nLEFT BEHIND: ' || before || ' -> ' || after;
    END IF;
    RETURN result;
END $$;

CREATE TABLE src (k int, v numeric, t text);
CREATE VIEW src_view AS SELECT * FROM src;
CREATE TEMP TABLE src_temp (k int);
CREATE UNLOGGED TABLE src_unlogged (k int);
CREATE TABLE src_parted (k int) PARTITION BY RANGE (k);
CREATE MATERIALIZED VIEW src_matview AS SELECT 1 AS k;
CREATE TABLE src_parent (k int);
CREATE TABLE src_child () INHERITS (src_parent);
CREATE TABLE taken (x int);
CREATE EXTENSION file_fdw;
CREATE SERVER files FOREIGN DATA WRAPPER file_fdw;
CREATE FOREIGN TABLE src_foreign (k int) SERVER files OPTIONS (filename '/dev/null');
CREATE UNLOGGED TABLE src_parted_u PARTITION OF src_parted FOR VALUES FROM (0) TO (10);
CREATE TABLE src_parted_sub PARTITION OF src_parted FOR VALUES FROM (10) TO (20)
  PARTITION BY RANGE (k);
CREATE FOREIGN TABLE src_parted_f PARTITION OF src_parted_sub FOR VALUES FROM (10) TO (20)
  SERVER files OPTIONS (filename '/dev/null');
CREATE SEQUENCE seq;
-- what exists before: the stream of the previous test
SELECT * FROM leftovers;
\pset format unaligned
\pset tuples_only on

-- arguments
SELECT try('SELECT flowpg.create_stream(NULL, ''SELECT count(*) FROM src'')');
SELECT try('SELECT flowpg.create_stream(''bad'', NULL)');
SELECT try_create('', 'SELECT count(*) FROM src');
SELECT try_create('bad', '   ');
SELECT try_create('bad', 'SELECT count(*) FROM src', '0 s');
SELECT try_create('bad', 'SELECT count(*) FROM src', '-1 s');
SELECT try_create('bad', 'SELECT count(*) FROM src', '100 years');
-- intervals of more microseconds than a bigint holds, either way
SELECT try_create('bad', 'SELECT count(*) FROM src', '300000 years');
SELECT try_create('bad', 'SELECT count(*) FROM src', '-300000 years');
SELECT try_create('bad', 'SELECT count(*) FROM src', '7116800 mons -1526289.448384 secs');
SELECT try_create(repeat('x', 70), 'SELECT count(*) FROM src');
SELECT try_create('public."' || repeat('Y', 70) || '"', 'SELECT count(*) FROM src');
SELECT try_create('"bad', 'SELECT count(*) FROM src');
SELECT try_create('taken', 'SELECT count(*) FROM src');
SELECT try_create('no_such_schema.bad', 'SELECT count(*) FROM src');
-- statements that are not one SELECT
SELECT try_create('bad', 'SELEC count(*) FROM src');
SELECT try_create('bad', 'SELECT count(*) FROM src; SELECT 1');
SELECT try_create('bad', 'INSERT INTO src VALUES (1)');
SELECT try_create('bad', 'SELECT k INTO newtab FROM src');
SELECT try_create('bad', 'EXPLAIN SELECT count(*) FROM src');
SELECT try_create('bad', 'VALUES (1)');
-- sources
SELECT try_create('bad', 'SELECT count(*) FROM no_such_table');
SELECT try_create('bad', 'SELECT count(*) FROM src_view');
SELECT try_create('bad', 'SELECT count(*) FROM src_temp');
SELECT try_create('bad', 'SELECT count(*) FROM src_unlogged');
-- a partitioned source: every partition must write its rows to the WAL
SELECT try_create('bad', 'SELECT count(*) FROM src_parted');
DROP TABLE src_parted_u;
SELECT try_create('bad', 'SELECT count(*) FROM src_parted');
DROP FOREIGN TABLE src_parted_f;
SELECT try_create('bad', 'SELECT count(*) FROM ONLY src_parted');
SELECT try_create('bad', 'SELECT count(*) FROM src_matview');
SELECT try_create('bad', 'SELECT count(*) FROM src_foreign');
SELECT try_create('bad', 'SELECT count(*) FROM src_parent');
SELECT try_create('bad', 'SELECT count(*) FROM pg_class');
SELECT try_create('bad', 'SELECT count(*) FROM flowpg.state');
SELECT try_create('bad', 'SELECT count(*) FROM otherdb.public.src');
SELECT try_create('bad', 'SELECT count(*) FROM generate_series(1, 3)');
SELECT try_create('bad', 'SELECT 1 AS one');
-- query shapes
SELECT try_create('bad', 'SELECT count(*) FROM src a JOIN src b USING (k)');
SELECT try_create('bad', 'SELECT count(*) FROM src, taken');
SELECT try_create('bad', 'SELECT count(*) FROM src WHERE k IN (SELECT x FROM taken)');
SELECT try_create('bad', 'WITH s AS (SELECT * FROM src) SELECT count(*) FROM s');
SELECT try_create('bad', 'SELECT count(*) FROM src UNION SELECT count(*) FROM src');
SELECT try_create('bad', 'SELECT DISTINCT k FROM src');
SELECT try_create('bad', 'SELECT k, count(*) FROM src GROUP BY k ORDER BY k');
SELECT try_create('bad', 'SELECT k, count(*) FROM src GROUP BY k LIMIT 3');
SELECT try_create('bad', 'SELECT k, count(*) FROM src GROUP BY k HAVING count(*) > 1');
SELECT try_create('bad', 'SELECT k, count(*) FROM src GROUP BY ROLLUP (k)');
SELECT try_create('bad', 'SELECT k, sum(v) OVER () FROM src');
SELECT try_create('bad', 'SELECT k, generate_series(1, 2) FROM src');
SELECT try_create('bad', 'SELECT k, count(*) FROM src GROUP BY k FOR UPDATE');
SELECT try_create('bad', 'SELECT k FROM src');
-- aggregates
SELECT try_create('bad', 'SELECT count(DISTINCT k) FROM src');
SELECT try_create('bad', 'SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM src');
SELECT try_create('bad', 'SELECT sum(v ORDER BY k) FROM src');
SELECT try_create('bad', 'SELECT array_agg(k) FROM src');
SELECT try_create('bad', 'SELECT string_agg(t, '','') FROM src');
SELECT try_create('bad', 'SELECT json_agg(k) FROM src');
-- more keys than an index takes (it was PostgreSQL's error creating the
-- result table's index)
SELECT try_create('bad', 'SELECT ' || string_agg('k + ' || g || ' AS k' || g, ', ') ||
                  ', count(*) FROM src GROUP BY ' || string_agg(g::text, ', '))
  FROM generate_series(1, 33) g;
-- volatile functions, anywhere
SELECT try_create('bad', 'SELECT count(*) FROM src WHERE random() > 0.5');
SELECT try_create('bad', 'SELECT clock_timestamp() > now() AS late, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT sum(nextval(''seq'')) FROM src');
-- functions whose value is the evaluating transaction's or session's
SELECT try_create('bad', 'SELECT count(*) FROM src WHERE now() > ''2026-01-01''');
SELECT try_create('bad', 'SELECT k, max(CURRENT_TIMESTAMP) FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT k, count(*) FROM src WHERE k > pg_backend_pid() GROUP BY k');
SELECT try_create('bad', 'SELECT k, sum(txid_current()) FROM src GROUP BY k');
-- (the worker's settings, ages from the worker's transaction, what the
-- server has counted by then: they were accepted, and a stream's results
-- were the worker's, 'public.bad' for application_name, not the batch's)
SELECT try_create('bad', 'SELECT current_setting(''application_name'') AS app, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT k, count(*) FROM src WHERE current_setting(''work_mem'', true) IS NOT NULL GROUP BY k');
SELECT try_create('bad', 'SELECT k, max(age(k::text::xid)) FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT k, max(pg_stat_get_numscans(k::oid)) FROM src GROUP BY k');
-- stable functions in SQL or a PL may read tables; immutable ones may run
CREATE TABLE lookup (k int);
CREATE FUNCTION in_lookup(int) RETURNS bool STABLE LANGUAGE sql
    AS 'SELECT EXISTS (SELECT 1 FROM lookup WHERE k = $1)';
CREATE FUNCTION stable_pl(int, int) RETURNS int STABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN $1 + $2; END';
CREATE FUNCTION volatile_sql(int, int) RETURNS int VOLATILE LANGUAGE sql
    AS 'SELECT $1 + $2';
CREATE AGGREGATE stable_sum (int) (sfunc = stable_pl, stype = int, combinefunc = int4pl);
CREATE AGGREGATE volatile_sum (int) (sfunc = int4pl, stype = int, combinefunc = volatile_sql);
SELECT try_create('bad', 'SELECT k, count(*) FROM src WHERE in_lookup(k) GROUP BY k');
SELECT try_create('bad', 'SELECT k, stable_sum(k) FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT k, volatile_sum(k) FROM src GROUP BY k');
-- a domain's CHECK runs as the query's expressions do (it was not looked
-- at: a volatile or stable PL function there was accepted)
CREATE DOMAIN checked_int AS int CHECK (stable_pl(VALUE, 0) IS NOT NULL);
CREATE DOMAIN checked_again AS checked_int CHECK (VALUE > 0);
CREATE DOMAIN random_int AS int CHECK (random() >= 0);
SELECT try_create('bad', 'SELECT k::checked_again AS c, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT k, max(v::int::random_int) FROM src GROUP BY k');
DROP DOMAIN checked_again, checked_int, random_int;
DROP AGGREGATE stable_sum(int), volatile_sum(int);
DROP FUNCTION in_lookup(int), stable_pl(int, int), volatile_sql(int, int);
DROP TABLE lookup;
-- built-in functions that look up what the catalog says of objects: a
-- stream saw it as it was when its worker processed the row, the batch
-- query as it is (a GRANT, a table created later: they were accepted, and
-- differed)
SELECT try_create('bad', 'SELECT has_table_privilege(t, ''src'', ''SELECT'') AS a, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT k, count(*) FROM src WHERE pg_has_role(t, ''pg_monitor'', ''MEMBER'') GROUP BY k');
SELECT try_create('bad', 'SELECT to_regclass(t)::text AS rel, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT t::regclass AS rel, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT k::oid::regclass::text AS rel, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT format_type(k::oid, NULL) AS ty, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT pg_get_userbyid(k::oid) AS who, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT obj_description(k::oid) AS d, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT k, count(*) FROM src WHERE pg_table_is_visible(k::oid) GROUP BY k');
-- (names printed by functions that take any type, or by an array's or a
-- row's output, are names all the same)
SELECT try_create('bad', 'SELECT format(''%s'', k::oid::regclass) AS rel, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT concat(''in '', k::oid::regclass) AS rel, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT ARRAY[k::oid::regclass]::text AS rel, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT k, count(*) FROM src WHERE to_jsonb(row(k, k::oid::regtype)) IS NOT NULL GROUP BY k');
-- and the session's role, database and schema
SELECT try_create('bad', 'SELECT k, count(*) FROM src WHERE t = CURRENT_USER GROUP BY k');
SELECT try_create('bad', 'SELECT session_user AS who, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT getpgusername() AS who, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT k, count(*) FROM src WHERE t = current_schema() GROUP BY k');
-- (a constant is looked up once, when the query is compiled)
SELECT flowpg.create_stream('by_class', 'SELECT k, count(*) FILTER (WHERE k::oid = ''src''::regclass) AS n FROM src GROUP BY k');
SELECT flowpg.drop_stream('by_class');
-- (and an oid kept as a key, compared or counted, is no name)
SELECT flowpg.create_stream('by_oid', 'SELECT k::oid::regclass AS rel, count(*) FILTER (WHERE k::oid::regclass = ''src''::regclass) AS n FROM src GROUP BY 1');
SELECT flowpg.drop_stream('by_oid');
-- system columns and whole rows: decoded rows have neither
SELECT try_create('bad', 'SELECT xmin::text AS x, count(*) FROM src GROUP BY 1');
SELECT try_create('bad', 'SELECT count(*) FROM src WHERE tableoid > 0');
SELECT try_create('bad', 'SELECT k, count(s) FROM src s GROUP BY k');
SELECT try_create('bad', 'SELECT k, max(src::text) FROM src GROUP BY k');
-- keys and output columns
SELECT try_create('bad', 'SELECT count(*) FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT k + 1 AS k1, count(*) FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT k, count(*) AS k FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT k, count(*), count(v) FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT k, grouping(k) AS g FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT row(k, 1) AS r, count(*) FROM src GROUP BY row(k, 1)');
-- composite keys: a composite value hashes over its type's attributes as
-- they are now (ALTER TYPE ... ADD ATTRIBUTE made a stream count one key
-- twice); their fields are keys
CREATE TYPE pair AS (a int, b text);
CREATE DOMAIN pair_d AS pair;
CREATE TABLE pairs (p pair, ps pair[], pd pair_d, n int);
SELECT try_create('bad', 'SELECT p, count(*) AS n FROM pairs GROUP BY p');
SELECT try_create('bad', 'SELECT ps, count(*) AS n FROM pairs GROUP BY ps');
SELECT try_create('bad', 'SELECT pd, count(*) AS n FROM pairs GROUP BY pd');
-- keys of a type with no btree operator class, which the result table's
-- unique index needs
SELECT try_create('bad', 'SELECT (n::text)::xid AS x, count(*) AS n FROM pairs GROUP BY 1');
SELECT try_create('bad', 'SELECT ARRAY[(n::text)::xid] AS x, count(*) AS n FROM pairs GROUP BY 1');
SELECT flowpg.create_stream('pair_parts', 'SELECT (p).a, (p).b, count(*) AS n, sum(n) AS total FROM pairs GROUP BY (p).a, (p).b');
INSERT INTO pairs VALUES (row(1, 'x'), NULL, NULL, 1);
ALTER TYPE pair ADD ATTRIBUTE c int;
INSERT INTO pairs VALUES (row(1, 'x', NULL), NULL, NULL, 1), (row(1, 'x', 3), NULL, NULL, 1);
SELECT flowpg.wait('pair_parts');
TABLE pair_parts ORDER BY a, b;
SELECT flowpg.drop_stream('pair_parts');
DROP TABLE pairs;
DROP DOMAIN pair_d;
DROP TYPE pair;

-- flowpg's schema keeps its name, and a superuser owner
SELECT try($$ALTER SCHEMA flowpg RENAME TO fp$$);
CREATE ROLE flowpg_schema_taker;
SELECT try($$ALTER SCHEMA flowpg OWNER TO flowpg_schema_taker$$);
DROP ROLE flowpg_schema_taker;
-- a stream cannot read another stream's result table
SELECT flowpg.create_stream('good', 'SELECT k, count(*) AS n FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT count(*) FROM good');
SELECT flowpg.drop_stream('good');
-- messages quote a name that needs quotes once, as PostgreSQL's do
SELECT flowpg.create_stream('"Good é"', 'SELECT k, count(*) AS n FROM src GROUP BY k');
SELECT try_create('bad', 'SELECT count(*) FROM "Good é"');
SELECT name FROM flowpg.streams WHERE name LIKE '%Good%';
SELECT flowpg.drop_stream('"Good é"');
SELECT try('SELECT flowpg.wait(''"Good é"'')');
SELECT try('SELECT flowpg.wait(''public."No Such"'')');

-- create_stream needs a transaction that has not written yet
BEGIN;
INSERT INTO taken VALUES (1);
SELECT try_create('bad', 'SELECT count(*) FROM src');
ROLLBACK;

-- the other functions
SELECT try('SELECT flowpg.drop_stream(NULL)');
SELECT try('SELECT flowpg.wait('' '')');
SELECT try('SELECT flowpg.drop_stream(''no_such_stream'')');
SELECT try('SELECT flowpg.drop_stream(''taken'')');
SELECT try('SELECT flowpg.wait(''no_such_stream'')');
SELECT try('SELECT flowpg.wait(''taken'')');
SELECT try('SELECT flowpg.checkpoint(''no_such_stream'')');
SELECT try('SELECT * FROM flowpg.live(NULL::int)');
SELECT try('SELECT * FROM flowpg.live(NULL::taken)');
-- flowpg's trigger functions, called otherwise
SELECT try('SELECT flowpg.stream_restored()');
SELECT try('SELECT flowpg.not_replicated()');
SELECT try('SELECT flowpg.ddl_guard()');
-- functions that change a stream, in a read-only transaction: refused at
-- once (drop_stream dropped the result table, and only the commit failed)
SELECT flowpg.create_stream('ro', 'SELECT k, count(*) AS n FROM src GROUP BY k');
BEGIN READ ONLY;
SELECT try('SELECT flowpg.drop_stream(''ro'')');
SELECT try('SELECT flowpg.pause_stream(''ro'')');
SELECT try('SELECT flowpg.create_stream(''ro2'', ''SELECT count(*) FROM src'')');
SELECT try('SELECT flowpg.drop_savepoint(''ro'', ''none'')');
SELECT to_regclass('ro') IS NOT NULL AS still_there;
COMMIT;
-- waiting for the worker in the transaction that changed the stream: the
-- worker waits for that transaction (it timed out, blaming the background
-- worker slots)
BEGIN;
SELECT flowpg.set_checkpoint_interval('ro', '5 s');
SELECT try('SELECT flowpg.wait(''ro'', ''30 s'')');
SELECT try('SELECT flowpg.checkpoint(''ro'')');
ROLLBACK;
BEGIN;
SELECT flowpg.create_stream('ro2', 'SELECT count(*) AS n FROM src');
SELECT try('SELECT flowpg.wait(''ro2'', ''30 s'')');
ROLLBACK;
-- a wait that times out as the worker reaches its position returns (it
-- raised its timeout, with a detail saying the table was exact up to
-- the position it needed: 59 and 118 times in 200)
CREATE FUNCTION short_waits(n int) RETURNS TABLE (outcome text, calls bigint)
LANGUAGE plpgsql AS $$
DECLARE
    detail text;
    outcomes text[] := '{}';
BEGIN
    FOR i IN 1 .. n LOOP
        BEGIN
            INSERT INTO src VALUES (i % 5, 1);
            PERFORM flowpg.wait('ro', '1 ms');
            outcomes := outcomes || 'returned'::text;
        EXCEPTION WHEN query_canceled THEN
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
            outcomes := outcomes || CASE
                WHEN detail ~ 'exact up to WAL position (\S+); the wait needs \1\.'
                THEN 'timed out at the position it needed' ELSE 'timed out' END;
        END;
    END LOOP;
    RETURN QUERY SELECT o, count(*) FROM unnest(outcomes) o GROUP BY o;
END $$;
SELECT outcome FROM short_waits(200) WHERE outcome = 'timed out at the position it needed';
DROP FUNCTION short_waits;
SELECT flowpg.drop_stream('ro');

-- the output plugin is flowpg's alone
SELECT try('SELECT pg_create_logical_replication_slot(''mine'', ''flowpg'')');

\pset tuples_only off
\pset format aligned
-- nothing was left behind by any of the failures above
SELECT * FROM leftovers;
SELECT count(*) AS slots FROM pg_replication_slots;
DROP VIEW leftovers;
DROP EXTENSION file_fdw CASCADE;
-- settings: shown, and only changed in the configuration (reload)
SHOW flowpg.poll_interval;
SHOW flowpg.checkpoint_interval;
SET flowpg.poll_interval = '1ms';

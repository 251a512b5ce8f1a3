-- Sources are streams of events: UPDATE, DELETE and TRUNCATE are counted
-- and reported, never applied and never mistaken for inserts.
CREATE TABLE readings (device int, temp numeric);
SELECT flowpg.create_stream('temps',
    'SELECT device, count(*) AS n, max(temp) AS hottest FROM readings GROUP BY device');
INSERT INTO readings SELECT g % 3, g FROM generate_series(1, 30) g;
UPDATE readings SET temp = temp + 100 WHERE device = 0;
DELETE FROM readings WHERE device = 1;
TRUNCATE readings;
INSERT INTO readings VALUES (5, 1);
SELECT flowpg.wait('temps');
TABLE temps ORDER BY device;
SELECT events, ignored_updates, ignored_deletes, ignored_truncates
  FROM flowpg.streams WHERE name = 'public.temps';

-- adding a column to the source keeps the stream working
ALTER TABLE readings ADD COLUMN unit text DEFAULT 'C';
INSERT INTO readings VALUES (5, 7, 'F');
SELECT flowpg.wait('temps');
TABLE temps ORDER BY device;

-- columns and tables the stream uses cannot go away or change under it
\set VERBOSITY terse
ALTER TABLE readings DROP COLUMN temp;
ALTER TABLE readings ALTER COLUMN temp TYPE float8;
DROP TABLE readings;
\set VERBOSITY default
ALTER TABLE readings ALTER COLUMN temp SET NOT NULL;
ALTER TABLE readings ALTER COLUMN temp DROP NOT NULL;

-- a source cannot stop writing WAL, nor get inheritance children (whose
-- rows the query reads); a result table cannot become unlogged (crash
-- recovery would empty it)
ALTER TABLE readings SET UNLOGGED;
ALTER TABLE temps SET UNLOGGED;
CREATE TABLE readings_child () INHERITS (readings);
CREATE TABLE readings_other (device int, temp numeric, unit text);
ALTER TABLE readings_other INHERIT readings;
DROP TABLE readings_other;

-- the stream keeps working when the source is renamed and when columns it
-- does not use change or go
ALTER TABLE readings ALTER COLUMN unit TYPE varchar(3);
ALTER TABLE readings DROP COLUMN unit;
ALTER TABLE readings RENAME TO sensor_readings;
ALTER TABLE sensor_readings RENAME COLUMN device TO sensor;
INSERT INTO sensor_readings VALUES (5, 9), (6, 1);
SELECT flowpg.wait('temps');
TABLE temps ORDER BY device;
SELECT name, source, status FROM flowpg.streams WHERE name = 'public.temps';
-- the definition (what pg_dump carries, and a restore compiles) follows
-- the renames; the query stays as it was written
SELECT query, definition FROM flowpg.streams WHERE name = 'public.temps';
ALTER TABLE sensor_readings RENAME COLUMN sensor TO device;
ALTER TABLE sensor_readings RENAME TO readings;
SELECT definition FROM flowpg.streams WHERE name = 'public.temps';

-- so does it when what the query calls is renamed or moves: a function, a
-- type and one of its enum values, the source's schema
CREATE SCHEMA metrics;
CREATE TYPE metrics.level AS ENUM ('low', 'high');
CREATE FUNCTION metrics.grade(v numeric) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    AS $$ BEGIN RETURN CASE WHEN v > 10 THEN 'above' ELSE 'below' END; END $$;
CREATE TABLE metrics.obs (k int, v numeric, lvl metrics.level);
SELECT flowpg.create_stream('graded', $$
    SELECT metrics.grade(v) AS grade, count(*) AS n,
           count(*) FILTER (WHERE lvl = 'high') AS flagged
      FROM metrics.obs GROUP BY 1 $$);
INSERT INTO metrics.obs
    SELECT g, g, CASE WHEN g % 3 = 0 THEN 'high' ELSE 'low' END::metrics.level
      FROM generate_series(1, 20) g;
ALTER FUNCTION metrics.grade(numeric) RENAME TO classify;
ALTER TYPE metrics.level RENAME VALUE 'high' TO 'hot';
ALTER TYPE metrics.level RENAME TO heat;
ALTER TABLE metrics.obs RENAME COLUMN lvl TO reading;
ALTER SCHEMA metrics RENAME TO telemetry;
CREATE SCHEMA archive;
ALTER TABLE telemetry.obs SET SCHEMA archive;
INSERT INTO archive.obs
    SELECT g, g, CASE WHEN g % 4 = 0 THEN 'hot' ELSE 'low' END::telemetry.heat
      FROM generate_series(21, 40) g;
SELECT definition FROM flowpg.streams WHERE name = 'public.graded';
SELECT oracle('graded', false);
TABLE graded ORDER BY grade;
-- a rename that rolls back leaves the definition as it was
BEGIN;
ALTER TABLE archive.obs RENAME TO gone;
ROLLBACK;
SELECT definition LIKE '%archive.obs%' AS unchanged FROM flowpg.streams WHERE name = 'public.graded';
SELECT flowpg.drop_stream('graded');
DROP SCHEMA archive, telemetry CASCADE;

-- changing the type of a column the stream does not use rewrites the table
-- with another layout: each row is read as it was written, on both sides
-- of the change, also by a worker that starts after the change and decodes
-- rows written before it (here: paused, then restarted)
CREATE TABLE layout (a int2, b int4, c int4);
SELECT flowpg.create_stream('layout_sums',
    'SELECT b, count(*) AS n, sum(c) AS total FROM layout GROUP BY b');
INSERT INTO layout SELECT 1, g % 3, g FROM generate_series(1, 30) g;
ALTER TABLE layout ALTER COLUMN a TYPE int8;
INSERT INTO layout SELECT 1, g % 3, g FROM generate_series(31, 60) g;
SELECT flowpg.wait('layout_sums');
SELECT flowpg.pause_stream('layout_sums');
INSERT INTO layout SELECT 1, g % 3, g FROM generate_series(61, 90) g;
ALTER TABLE layout ALTER COLUMN a TYPE int2;
INSERT INTO layout SELECT 1, g % 3, g FROM generate_series(91, 120) g;
SELECT pg_terminate_backend(pid) AS restarted
  FROM flowpg.streams WHERE name = 'public.layout_sums';
SELECT flowpg.resume_stream('layout_sums');
SELECT flowpg.wait('layout_sums');
TABLE layout_sums ORDER BY b;
-- the oracle: the same query over the table
(TABLE layout_sums EXCEPT SELECT b, count(*), sum(c) FROM layout GROUP BY b)
UNION ALL
(SELECT b, count(*), sum(c) FROM layout GROUP BY b EXCEPT TABLE layout_sums);
SELECT flowpg.drop_stream('layout_sums');
DROP TABLE layout;

-- a large transaction is applied once
INSERT INTO readings (device, temp) SELECT g % 1000, g FROM generate_series(1, 300000) g;
SELECT flowpg.wait('temps');
SELECT count(*) AS devices, sum(n) AS rows FROM temps;
SELECT flowpg.drop_stream('temps');
DROP TABLE readings;

-- a source row on which the query raises an error stops the stream, as the
-- same query over the table fails; nothing of that transaction is applied,
-- the results keep what came before it, and the stream fails again each
-- time its worker reaches the row.  The way out: remove the row (or guard
-- the query) and create the stream again, which, as any new stream, counts
-- the rows committed after it is created.
CREATE TABLE ratios (k int, a int, b int);
SELECT flowpg.create_stream('quotients', 'SELECT k, sum(a / b) AS q FROM ratios GROUP BY k');
INSERT INTO ratios VALUES (1, 10, 2), (2, 9, 3);
SELECT flowpg.wait('quotients');
INSERT INTO ratios VALUES (1, 1, 0), (2, 4, 2);
SELECT k, sum(a / b) FROM ratios GROUP BY k;
SELECT flowpg.wait('quotients');
SELECT last_error FROM flowpg.streams WHERE name = 'public.quotients';
TABLE quotients ORDER BY k;
DELETE FROM ratios WHERE b = 0;
SELECT flowpg.drop_stream('quotients');
SELECT flowpg.create_stream('quotients', 'SELECT k, sum(a / b) AS q FROM ratios GROUP BY k');
INSERT INTO ratios VALUES (1, 8, 2);
SELECT flowpg.wait('quotients');
TABLE quotients ORDER BY k;
SELECT flowpg.drop_stream('quotients');
DROP TABLE ratios;

-- the transactions committed before the failing one since the last
-- checkpoint count too: the next worker stops before the failing
-- transaction and checkpoints them (they were applied and lost again at
-- each start, and the results held none of them)
CREATE TABLE ratios (k int, a int, b int);
SELECT flowpg.create_stream('quotients', 'SELECT k, sum(a / b) AS q FROM ratios GROUP BY k', '1 hour');
INSERT INTO ratios VALUES (1, 3, 1);
INSERT INTO ratios VALUES (2, 8, 4);
INSERT INTO ratios VALUES (1, 1, 0);
DO $$
BEGIN
    FOR i IN 1 .. 600 LOOP
        EXIT WHEN (SELECT count(*) FROM quotients) = 2;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
TABLE quotients ORDER BY k;
SELECT flowpg.drop_stream('quotients');
DROP TABLE ratios;

-- an error computing a key's result row at a checkpoint (here an output
-- expression over aggregates) fails the checkpoint, and the batch query
-- fails as well.  The next worker checkpoints one source transaction at a
-- time until it finds the one after which the row cannot be computed: the
-- results hold every transaction before it (before, they held none of the
-- transactions since the last checkpoint).  The transactions after it may
-- make every row computable again, as they make the batch query succeed:
-- then the stream goes on.
CREATE TABLE ratios (k int, a int, b int);
SELECT flowpg.create_stream('ratios_out', 'SELECT k, sum(a) / sum(b) AS r FROM ratios GROUP BY k', '1 hour');
INSERT INTO ratios VALUES (1, 10, 2);
INSERT INTO ratios VALUES (2, 9, 3);
INSERT INTO ratios VALUES (1, 1, -2);
INSERT INTO ratios VALUES (3, 4, 4);
SELECT k, sum(a) / sum(b) FROM ratios GROUP BY k;
SELECT flowpg.wait('ratios_out');
DO $$
BEGIN
    FOR i IN 1 .. 600 LOOP
        EXIT WHEN (SELECT count(*) FROM ratios_out) = 2 AND
            (SELECT status = 'failed' AND pid IS NULL FROM flowpg.streams
              WHERE name = 'public.ratios_out');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
TABLE ratios_out ORDER BY k;
SELECT last_error FROM flowpg.streams WHERE name = 'public.ratios_out';
INSERT INTO ratios VALUES (1, 3, 1);
SELECT flowpg.wait('ratios_out');
TABLE ratios_out ORDER BY k;
(TABLE ratios_out EXCEPT SELECT k, sum(a) / sum(b) FROM ratios GROUP BY k)
UNION ALL
(SELECT k, sum(a) / sum(b) FROM ratios GROUP BY k EXCEPT TABLE ratios_out);
SELECT flowpg.drop_stream('ratios_out');
DROP TABLE ratios;

-- then the next worker postpones its periodic checkpoints while a key's
-- row cannot be computed, and takes them once every row can again: the
-- stream goes on.  Before, each periodic checkpoint that fell between the
-- failing transaction and the one that made the row computable again
-- failed, and the stream stayed failed although the batch query
-- succeeded.  (Paused, the worker applies the backlog at once when it
-- resumes, in rounds, each followed by a periodic checkpoint.)
CREATE TABLE ratios (k int, a int, b int);
SELECT flowpg.create_stream('ratios_out', 'SELECT k, sum(a) / sum(b) AS r, count(*) AS n FROM ratios GROUP BY k', '1 hour');
INSERT INTO ratios VALUES (1, 10, 2);
SELECT flowpg.wait('ratios_out');
SELECT flowpg.pause_stream('ratios_out');
INSERT INTO ratios VALUES (1, 1, -2);
SET synchronous_commit = off;
DO $$
BEGIN
    FOR i IN 1 .. 15000 LOOP
        INSERT INTO ratios VALUES (2 + i % 100, 1, 1);
        COMMIT;
    END LOOP;
END $$;
RESET synchronous_commit;
INSERT INTO ratios VALUES (1, 0, 1);
SELECT flowpg.set_checkpoint_interval('ratios_out', '1 ms');
SELECT flowpg.resume_stream('ratios_out');
DO $$
BEGIN
    FOR i IN 1 .. 30 LOOP
        BEGIN
            PERFORM flowpg.wait('ratios_out');
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            PERFORM pg_sleep(0.2);
        END;
    END LOOP;
    RAISE EXCEPTION 'the stream did not go on';
END $$;
SELECT * FROM ratios_out WHERE k = 1;
SELECT count(*) AS keys, sum(n) AS rows FROM ratios_out;
(TABLE ratios_out EXCEPT SELECT k, sum(a) / sum(b), count(*) FROM ratios GROUP BY k)
UNION ALL
(SELECT k, sum(a) / sum(b), count(*) FROM ratios GROUP BY k EXCEPT TABLE ratios_out);
SELECT flowpg.drop_stream('ratios_out');
DROP TABLE ratios;

-- a group key too long for the result table's unique index fails the same
-- way, at its row: the batch query does not fail, but no result table can
-- hold its row (before, the checkpoint writing the key failed, naming
-- neither).  A long key that the index compresses enough is counted.
-- The way out: delete the row, then rebuild the stream over the source.
CREATE TABLE notes (body text, n int);
SELECT flowpg.create_stream('note_counts', 'SELECT body, count(*) AS c, sum(n) AS total FROM notes GROUP BY body');
INSERT INTO notes VALUES ('short', 1), (repeat('x', 100000), 2);
SELECT flowpg.wait('note_counts');
SELECT length(body), c, total FROM note_counts ORDER BY 1;
INSERT INTO notes SELECT string_agg(md5(g::text), ''), 3 FROM generate_series(1, 100) g;
INSERT INTO notes VALUES ('short', 4);
SELECT length(body), count(*), sum(n) FROM notes GROUP BY body ORDER BY 1;
SELECT flowpg.wait('note_counts');
SELECT last_error FROM flowpg.streams WHERE name = 'public.note_counts';
SELECT length(body), c, total FROM note_counts ORDER BY 1;
DELETE FROM notes WHERE length(body) = 3200;
SELECT flowpg.rebuild_stream('note_counts');
SELECT flowpg.wait('note_counts');
SELECT length(body), c, total FROM note_counts ORDER BY 1;
(TABLE note_counts EXCEPT SELECT body, count(*), sum(n) FROM notes GROUP BY body)
UNION ALL
(SELECT body, count(*), sum(n) FROM notes GROUP BY body EXCEPT TABLE note_counts);
-- the same with a key index made by hand with INCLUDE columns: its key
-- columns must fit
CREATE UNIQUE INDEX note_counts_inc ON note_counts (body) INCLUDE (c) NULLS NOT DISTINCT;
DROP INDEX note_counts_body_idx;
INSERT INTO notes VALUES ('short', 6);
SELECT flowpg.wait('note_counts');
INSERT INTO notes SELECT string_agg(md5(g::text), ''), 7 FROM generate_series(1, 100) g;
SELECT try($$SELECT flowpg.wait('note_counts')$$) LIKE '55000: stream "public.note_counts" has failed%' AS failed;
SELECT last_error FROM flowpg.streams WHERE name = 'public.note_counts';
SELECT flowpg.drop_stream('note_counts');
-- a key past the largest entry any index takes (8 kB) says the same (it
-- was PostgreSQL's "index row requires 9616 bytes")
CREATE TABLE huge_keys (body text);
SELECT flowpg.create_stream('huge_counts', 'SELECT body, count(*) AS c FROM huge_keys GROUP BY body');
INSERT INTO huge_keys SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g;
SELECT try($$SELECT flowpg.wait('huge_counts')$$) LIKE '55000: stream "public.huge_counts" has failed%' AS failed;
SELECT last_error FROM flowpg.streams WHERE name = 'public.huge_counts';
SELECT flowpg.drop_stream('huge_counts');
DROP TABLE huge_keys;
DROP TABLE notes;

-- CREATE OR REPLACE AGGREGATE may change an aggregate's state type, and a
-- stream's states are of the old one (read as the new one, they crashed the
-- server at the worker's next start, again and again): the worker, and
-- flowpg.live, stop with an error instead, until the aggregate is as it
-- was or the stream is rebuilt over its source
CREATE TABLE agg_src (k int, v int);
CREATE FUNCTION my_t1(bigint, int) RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT coalesce($1, 0) + $2';
CREATE FUNCTION my_c1(bigint, bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT coalesce($1, 0) + coalesce($2, 0)';
CREATE AGGREGATE my_sum(int) (sfunc = my_t1, stype = bigint, combinefunc = my_c1);
SELECT flowpg.create_stream('my_sums', 'SELECT k, my_sum(v) AS s FROM agg_src GROUP BY k');
INSERT INTO agg_src VALUES (1, 1), (2, 2);
SELECT flowpg.wait('my_sums');
-- (a plan stored by an older flowpg lacks the state types: the worker
-- records them as it starts)
UPDATE flowpg.stream SET plan = regexp_replace(plan, ':aggtranstype [0-9]+', ':aggtranstype 0', 'g')
 WHERE name = 'public.my_sums';
SELECT pg_terminate_backend(pid) AS restarted FROM flowpg.streams WHERE name = 'public.my_sums';
INSERT INTO agg_src VALUES (3, 3);
SELECT flowpg.wait('my_sums');
SELECT plan ~ ':aggtranstype 20 ' AS recorded FROM flowpg.stream WHERE name = 'public.my_sums';
CREATE FUNCTION my_t2(numeric, int) RETURNS numeric LANGUAGE sql IMMUTABLE AS 'SELECT coalesce($1, 0) + $2';
CREATE FUNCTION my_c2(numeric, numeric) RETURNS numeric LANGUAGE sql IMMUTABLE AS 'SELECT coalesce($1, 0) + coalesce($2, 0)';
CREATE FUNCTION my_f2(numeric) RETURNS bigint LANGUAGE sql IMMUTABLE AS 'SELECT $1::bigint';
CREATE OR REPLACE AGGREGATE my_sum(int) (sfunc = my_t2, stype = numeric, combinefunc = my_c2, finalfunc = my_f2);
SELECT try($$SELECT * FROM flowpg.live(NULL::my_sums)$$);
SELECT pg_terminate_backend(pid) AS restarted FROM flowpg.streams WHERE name = 'public.my_sums';
INSERT INTO agg_src VALUES (1, 10);
SELECT try($$SELECT flowpg.wait('my_sums')$$);
SELECT status, last_error FROM flowpg.streams WHERE name = 'public.my_sums';
TABLE my_sums ORDER BY k;
SELECT flowpg.rebuild_stream('my_sums');
SELECT flowpg.wait('my_sums');
INSERT INTO agg_src VALUES (2, 20);
SELECT flowpg.wait('my_sums');
TABLE my_sums ORDER BY k;
(TABLE my_sums EXCEPT SELECT k, my_sum(v) FROM agg_src GROUP BY k)
UNION ALL
(SELECT k, my_sum(v) FROM agg_src GROUP BY k EXCEPT TABLE my_sums);
SELECT flowpg.drop_stream('my_sums');
DROP TABLE agg_src;
DROP AGGREGATE my_sum(int);
DROP FUNCTION my_t1(bigint, int), my_c1(bigint, bigint), my_t2(numeric, int), my_c2(numeric, numeric), my_f2(numeric);

-- a function replaced while a stream runs: the stream computes with it as
-- it is, from the rows decoded after (README).  Decoding reads the catalog
-- as it was when each row was written, and the functions ran under it:
-- replaced twice while the stream was paused, the function ran with its
-- middle body (PL/pgSQL) under the handler of its last language (SQL), a
-- syntax error that failed the stream for good; and a restore computed
-- the rows since the savepoint again with the bodies they had met, not
-- with the function as fixed
CREATE TABLE repl_src (k int, v int);
CREATE FUNCTION repl_t(bigint, int) RETURNS bigint IMMUTABLE LANGUAGE sql
    AS 'SELECT coalesce($1, 0) + $2';
CREATE AGGREGATE repl_sum(int) (sfunc = repl_t, stype = bigint, combinefunc = int8pl);
SELECT flowpg.create_stream('repl_sums', 'SELECT k, repl_sum(v) AS s FROM repl_src GROUP BY k');
SELECT flowpg.savepoint('repl_sums', 'before') > 0 AS saved;
INSERT INTO repl_src VALUES (1, 1);
SELECT flowpg.wait('repl_sums');
SELECT flowpg.pause_stream('repl_sums');
CREATE OR REPLACE FUNCTION repl_t(bigint, int) RETURNS bigint IMMUTABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN coalesce($1, 0) + $2 * 100; END';
INSERT INTO repl_src VALUES (1, 1);
CREATE OR REPLACE FUNCTION repl_t(bigint, int) RETURNS bigint IMMUTABLE LANGUAGE sql
    AS 'SELECT coalesce($1, 0) + $2 * 10000';
SELECT flowpg.resume_stream('repl_sums');
SELECT try($$SELECT flowpg.wait('repl_sums')$$);
SELECT status FROM flowpg.streams WHERE name = 'public.repl_sums';
-- 1 + 10000: the second row was decoded after the last replacement
TABLE repl_sums;
CREATE OR REPLACE FUNCTION repl_t(bigint, int) RETURNS bigint IMMUTABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN coalesce($1, 0) + $2 * 10; END';
INSERT INTO repl_src VALUES (1, 1);
-- replaced with one in another language while the worker runs: its
-- compiled call (of a SQL function) read the new body, a syntax error;
-- the next worker compiles it again and starts at once, and the wait
-- goes on for it
SELECT try($$SELECT flowpg.wait('repl_sums')$$);
TABLE repl_sums;
CREATE OR REPLACE FUNCTION repl_t(bigint, int) RETURNS bigint IMMUTABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN coalesce($1, 0) + $2; END';
SELECT flowpg.restore('repl_sums', 'before');
SELECT flowpg.wait('repl_sums');
-- every row computed again with the function as it is: the batch's 3
TABLE repl_sums;
SELECT k, repl_sum(v) AS s FROM repl_src GROUP BY k;
SELECT flowpg.drop_stream('repl_sums');
DROP TABLE repl_src;
DROP AGGREGATE repl_sum(int);
DROP FUNCTION repl_t(bigint, int);

-- a compiled call keeps what it took from the catalog (a SECURITY DEFINER
-- function's owner, strictness, a domain's constraints): the worker ran a
-- function as it was when it started, whatever happened to it since (its
-- body given to a role that replaced it ran as its old owner, a
-- superuser's).  A change of any of those starts the worker again, at
-- once, to compile the stream with them.
CREATE ROLE flowpg_def_a;
CREATE ROLE flowpg_def_b;
CREATE TABLE cc_src (k int, v int);
CREATE FUNCTION cc_who(int) RETURNS text IMMUTABLE SECURITY DEFINER LANGUAGE plpgsql
    AS 'BEGIN RETURN current_user; END';
ALTER FUNCTION cc_who(int) OWNER TO flowpg_def_a;
CREATE FUNCTION cc_seven(int) RETURNS int IMMUTABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN coalesce($1, 7); END';
SELECT flowpg.create_stream('cc_runs', 'SELECT cc_who(k) AS runner, k, sum(cc_seven(v)) AS s FROM cc_src GROUP BY 1, 2');
INSERT INTO cc_src VALUES (1, NULL);
SELECT flowpg.wait('cc_runs');
ALTER FUNCTION cc_who(int) OWNER TO flowpg_def_b;
CREATE OR REPLACE FUNCTION cc_seven(int) RETURNS int IMMUTABLE STRICT LANGUAGE plpgsql
    AS 'BEGIN RETURN coalesce($1, 7); END';
INSERT INTO cc_src VALUES (2, NULL);
SELECT try($$SELECT flowpg.wait('cc_runs')$$);
-- the row after the changes: run as the function's new owner, and the
-- function strict (NULL for NULL)
SELECT * FROM cc_runs ORDER BY k;
CREATE DOMAIN cc_small AS int CHECK (VALUE >= 0);
SELECT flowpg.create_stream('cc_dom', 'SELECT k, sum(v::cc_small) AS s FROM cc_src GROUP BY k');
INSERT INTO cc_src VALUES (3, 60);
SELECT flowpg.wait('cc_dom');
ALTER DOMAIN cc_small ADD CONSTRAINT cc_lt50 CHECK (VALUE < 50);
INSERT INTO cc_src VALUES (3, 70);
-- as the batch query does, the stream fails on the row the new constraint refuses
SELECT try($$SELECT k, sum(v::cc_small) FROM cc_src GROUP BY k$$);
SELECT try($$SELECT flowpg.wait('cc_dom')$$) LIKE '55000: stream "public.cc_dom" has failed%' AS failed;
SELECT last_error FROM flowpg.streams WHERE name = 'public.cc_dom';
SELECT flowpg.drop_stream('cc_dom');
-- ... what a domain's constraints call too (a SECURITY DEFINER function
-- in a CHECK ran as its old owner); read from the catalog, not planned
-- (a CHECK calling a PL/pgSQL function, folded, ran it within decoding,
-- without a snapshot: the stream failed for good at the next change of
-- any constraint)
CREATE FUNCTION cc_lo() RETURNS int IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN -1000; END';
CREATE FUNCTION cc_is_a(int) RETURNS bool IMMUTABLE SECURITY DEFINER LANGUAGE plpgsql
    AS $$BEGIN RETURN current_user = 'flowpg_def_a'; END$$;
ALTER FUNCTION cc_is_a(int) OWNER TO flowpg_def_a;
CREATE DOMAIN cc_above AS int CHECK (VALUE > cc_lo()) CHECK (cc_is_a(VALUE));
SELECT flowpg.create_stream('cc_dom2', 'SELECT k, sum(v::cc_above) AS s FROM cc_src WHERE k = 4 GROUP BY k');
INSERT INTO cc_src VALUES (4, 1);
SELECT flowpg.wait('cc_dom2');
CREATE TEMP TABLE cc_other (a int CHECK (a > 0));
INSERT INTO cc_src VALUES (4, 2);
SELECT flowpg.wait('cc_dom2');
TABLE cc_dom2;
ALTER FUNCTION cc_is_a(int) OWNER TO flowpg_def_b;
INSERT INTO cc_src VALUES (4, 3);
SELECT try($$SELECT flowpg.wait('cc_dom2')$$) LIKE '55000: stream "public.cc_dom2" has failed%' AS failed;
SELECT last_error FROM flowpg.streams WHERE name = 'public.cc_dom2';
SELECT flowpg.drop_stream('cc_dom2');
-- ... and an aggregate replaced with another transition function
CREATE FUNCTION cc_plus1(bigint, int) RETURNS bigint IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN coalesce($1, 0) + 1; END';
CREATE FUNCTION cc_plus100(bigint, int) RETURNS bigint IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN coalesce($1, 0) + 100; END';
CREATE AGGREGATE cc_agg(int) (sfunc = cc_plus1, stype = bigint, combinefunc = int8pl);
SELECT flowpg.create_stream('cc_aggs', 'SELECT k, cc_agg(v) AS a FROM cc_src WHERE k = 5 GROUP BY k');
INSERT INTO cc_src VALUES (5, 1);
SELECT flowpg.wait('cc_aggs');
CREATE OR REPLACE AGGREGATE cc_agg(int) (sfunc = cc_plus100, stype = bigint, combinefunc = int8pl);
INSERT INTO cc_src VALUES (5, 1);
SELECT try($$SELECT flowpg.wait('cc_aggs')$$);
-- 1 + 100
TABLE cc_aggs;
SELECT flowpg.drop_stream('cc_aggs');
-- ... and a SQL function that compiling inlined, or a call of one on
-- constants that it folded (neither was seen: the worker went on with
-- the old body)
CREATE FUNCTION cc_inl(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 + 1';
SELECT flowpg.create_stream('cc_inline', 'SELECT k, sum(cc_inl(v)) AS s, max(v + cc_inl(0)) AS m FROM cc_src WHERE k = 6 GROUP BY k');
INSERT INTO cc_src VALUES (6, 1);
SELECT flowpg.wait('cc_inline');
CREATE OR REPLACE FUNCTION cc_inl(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1 + 100';
INSERT INTO cc_src VALUES (6, 1);
SELECT try($$SELECT flowpg.wait('cc_inline')$$);
-- 2 + 101, and 1 + 100
TABLE cc_inline;
SELECT flowpg.drop_stream('cc_inline');
-- a function that writes, called by an IMMUTABLE one: the stream fails
-- with flowpg's error (it was PostgreSQL's "output plugin used XID"), and
-- the write does not stay
CREATE TABLE cc_log (v int);
CREATE FUNCTION cc_logs(int) RETURNS int VOLATILE LANGUAGE plpgsql
    AS 'BEGIN INSERT INTO cc_log VALUES ($1); RETURN $1; END';
CREATE FUNCTION cc_pure(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN cc_logs($1); END';
SELECT flowpg.create_stream('cc_writes', 'SELECT k, sum(cc_pure(v)) AS s FROM cc_src WHERE k = 7 GROUP BY k');
INSERT INTO cc_src VALUES (7, 1);
SELECT try($$SELECT flowpg.wait('cc_writes')$$) LIKE '55000: stream "public.cc_writes" has failed%' AS failed;
SELECT last_error FROM flowpg.streams WHERE name = 'public.cc_writes';
SELECT count(*) AS written FROM cc_log;
SELECT flowpg.drop_stream('cc_writes');
-- the same in what is computed from the aggregates (an output expression,
-- a final function), at checkpoints and in flowpg.live: refused too.  Such
-- a write went through: it committed with each checkpoint, and the rows
-- it inserted into the stream's source were never counted (the worker's
-- decoding skips its own transactions)
CREATE FUNCTION cc_feeds(bigint) RETURNS bigint VOLATILE LANGUAGE plpgsql
    AS 'BEGIN INSERT INTO cc_src VALUES (8, 100); RETURN $1; END';
CREATE FUNCTION cc_fed(bigint) RETURNS bigint IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN cc_feeds($1); END';
CREATE AGGREGATE cc_sum_fed(bigint) (sfunc = int8pl, stype = bigint, combinefunc = int8pl,
    finalfunc = cc_fed, initcond = '0');
SELECT flowpg.create_stream('cc_out_writes', 'SELECT k, cc_fed(count(*)) AS n FROM cc_src WHERE k = 8 GROUP BY k');
SELECT flowpg.create_stream('cc_final_writes', 'SELECT k, cc_sum_fed(v) AS s FROM cc_src WHERE k = 9 GROUP BY k');
INSERT INTO cc_src VALUES (8, 1), (9, 1);
SELECT try($$SELECT flowpg.wait('cc_out_writes')$$);
SELECT try($$SELECT flowpg.wait('cc_final_writes')$$);
SELECT name, last_error FROM flowpg.streams WHERE name LIKE 'public.cc_%writes' ORDER BY 1;
-- flowpg.live, in its caller's transaction: a function that writes only
-- when the caller has set cc.write
CREATE FUNCTION cc_feeds_if(bigint) RETURNS bigint VOLATILE LANGUAGE plpgsql
    AS $$BEGIN
        IF current_setting('cc.write', true) = 'on' THEN INSERT INTO cc_log VALUES (2); END IF;
        RETURN $1;
    END$$;
CREATE FUNCTION cc_fed_if(bigint) RETURNS bigint IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN cc_feeds_if($1); END';
SELECT flowpg.create_stream('cc_live_writes', 'SELECT k, cc_fed_if(count(*)) AS n FROM cc_src WHERE k = 8 GROUP BY k');
INSERT INTO cc_src VALUES (8, 2);
SELECT flowpg.wait('cc_live_writes');
SELECT * FROM flowpg.live(NULL::cc_live_writes);
SET cc.write = on;
SELECT try($$SELECT * FROM flowpg.live(NULL::cc_live_writes)$$);
-- the calling transaction may write once it has caught the error
DO $$
BEGIN
    BEGIN
        PERFORM * FROM flowpg.live(NULL::cc_live_writes);
    EXCEPTION WHEN read_only_sql_transaction THEN
        RAISE NOTICE 'refused: %', SQLERRM;
    END;
    INSERT INTO cc_log VALUES (1);
END$$;
RESET cc.write;
-- and as a rebuild reads the source table (its writes committed with it)
CREATE FUNCTION cc_logs_666(int) RETURNS int VOLATILE LANGUAGE plpgsql
    AS 'BEGIN IF $1 = 666 THEN INSERT INTO cc_log VALUES (666); END IF; RETURN $1; END';
CREATE FUNCTION cc_pure_666(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN cc_logs_666($1); END';
INSERT INTO cc_src VALUES (10, 666);
SELECT flowpg.create_stream('cc_rebuild_writes', 'SELECT k, sum(cc_pure_666(v)) AS s FROM cc_src WHERE k = 10 GROUP BY k');
SELECT flowpg.rebuild_stream('cc_rebuild_writes');
SELECT try($$SELECT flowpg.wait('cc_rebuild_writes')$$) LIKE '55000: %' AS failed;
SELECT status, last_error FROM flowpg.streams WHERE name = 'public.cc_rebuild_writes';
SELECT count(*) AS written_666 FROM cc_log WHERE v = 666;
SELECT flowpg.drop_stream('cc_rebuild_writes');
DROP FUNCTION cc_pure_666(int), cc_logs_666(int);
SELECT count(*) AS written FROM cc_log;
SELECT v FROM cc_log;
SELECT k, count(*) FROM cc_src WHERE k IN (8, 9) GROUP BY k ORDER BY k;
SELECT flowpg.drop_stream('cc_out_writes');
SELECT flowpg.drop_stream('cc_final_writes');
SELECT flowpg.drop_stream('cc_live_writes');
DROP AGGREGATE cc_sum_fed(bigint);
DROP FUNCTION cc_fed(bigint), cc_feeds(bigint), cc_fed_if(bigint), cc_feeds_if(bigint);
DROP TABLE cc_log;
DROP FUNCTION cc_pure(int), cc_logs(int);
SELECT flowpg.drop_stream('cc_runs');
DROP TABLE cc_src, cc_other;
DROP DOMAIN cc_small, cc_above;
DROP AGGREGATE cc_agg(int);
DROP FUNCTION cc_inl(int), cc_who(int), cc_seven(int), cc_lo(), cc_is_a(int), cc_plus1(bigint, int), cc_plus100(bigint, int);
DROP ROLE flowpg_def_a, flowpg_def_b;

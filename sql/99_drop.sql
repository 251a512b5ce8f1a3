-- Dropping streams, whatever the path: drop_stream, DROP TABLE of the result
-- table, DROP ... CASCADE of the source, DROP EXTENSION; and creates that
-- roll back.  Nothing may stay behind.
CREATE TABLE s (k int, v int);
CREATE OR REPLACE VIEW leftovers AS
SELECT (SELECT count(*) FROM flowpg.streams) AS streams,
       (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%') AS slots,
       (SELECT count(*) FROM pg_replication_origin WHERE roname LIKE 'flowpg%') AS origins;
CREATE FUNCTION workers() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    -- a dropped stream's worker has let go of its slot; wait for it to exit
    FOR i IN 1 .. 100 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'flowpg worker');
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'flowpg worker');
END $$;

-- a create that rolls back leaves nothing
BEGIN;
SELECT flowpg.create_stream('t1', 'SELECT k, sum(v) AS v FROM s GROUP BY k');
ROLLBACK;
SELECT *, to_regclass('t1') AS t1 FROM leftovers;
BEGIN;
SAVEPOINT a;
SELECT flowpg.create_stream('t1', 'SELECT k, sum(v) AS v FROM s GROUP BY k');
ROLLBACK TO a;
COMMIT;
SELECT *, to_regclass('t1') AS t1 FROM leftovers;

-- a drop that rolls back leaves the stream running
SELECT flowpg.create_stream('t1', 'SELECT k, sum(v) AS v FROM s GROUP BY k');
BEGIN;
SELECT flowpg.drop_stream('t1');
ROLLBACK;
INSERT INTO s VALUES (1, 1);
SELECT flowpg.wait('t1');
TABLE t1;

-- DROP TABLE of a result table drops the stream
DROP TABLE t1;
SELECT * FROM leftovers;

-- DROP ... CASCADE of a source drops its streams
SELECT flowpg.create_stream('t2', 'SELECT k, count(*) AS n FROM s GROUP BY k');
SELECT flowpg.create_stream('t3', 'SELECT count(*) AS n FROM s');
SELECT * FROM leftovers;
DROP TABLE s CASCADE;
SELECT * FROM leftovers;
SELECT workers();

-- DROP EXTENSION drops every stream and its result table
CREATE TABLE s (k int, v int);
SELECT flowpg.create_stream('t4', 'SELECT k, count(*) AS n FROM s GROUP BY k');
SELECT flowpg.create_stream('t5', 'SELECT max(v) AS m FROM s');
INSERT INTO s VALUES (1, 2);
SELECT flowpg.wait('t4');
DROP VIEW leftovers;
DROP EXTENSION flowpg;
SELECT count(*) AS slots FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%';
SELECT count(*) AS origins FROM pg_replication_origin WHERE roname LIKE 'flowpg%';
SELECT to_regclass('t4') AS t4, to_regclass('t5') AS t5;
SELECT workers();
DROP TABLE s;
DROP FUNCTION workers();

-- CREATE EXTENSION refuses a schema flowpg that a role other than a
-- superuser owns (it could drop every stream with it, or shadow flowpg's
-- functions), and leaves nothing
-- (DROP EXTENSION left the schema, as it does any extension's)
DROP SCHEMA flowpg;
CREATE ROLE flowpg_squatter;
CREATE SCHEMA flowpg AUTHORIZATION flowpg_squatter;
\set SHOW_CONTEXT never
CREATE EXTENSION flowpg;
\echo :LAST_ERROR_SQLSTATE
\set SHOW_CONTEXT errors
SELECT count(*) AS objects FROM pg_class WHERE relnamespace = 'flowpg'::regnamespace;
DROP SCHEMA flowpg;
DROP ROLE flowpg_squatter;

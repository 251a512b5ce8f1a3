-- A stream runs with its owner's privileges, and only its owner manages it.
CREATE ROLE flowpg_alice LOGIN;
CREATE ROLE flowpg_bob LOGIN;
CREATE ROLE flowpg_group NOLOGIN;
CREATE TABLE events (who text, v int);
GRANT SELECT, INSERT ON events TO flowpg_alice, flowpg_group;
GRANT INSERT ON events TO flowpg_bob;
GRANT CREATE ON SCHEMA public TO flowpg_alice, flowpg_bob, flowpg_group;
\set VERBOSITY terse

-- the worker runs as alice: current_user in a function the query calls
-- says so (a stream refuses current_user itself, which is the session's)
CREATE FUNCTION runner(text) RETURNS name IMMUTABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN current_user; END';
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('alice_view',
    'SELECT runner(who) AS runner, who, count(*) AS n, sum(v) AS total FROM events GROUP BY runner(who), who');
RESET ROLE;
INSERT INTO events VALUES ('x', 1), ('y', 2), ('x', 3);
SELECT flowpg.wait('alice_view');
TABLE alice_view ORDER BY who;
SELECT owner FROM flowpg.streams WHERE name = 'public.alice_view';

-- a role without CREATE on a schema cannot put a result table there
CREATE SCHEMA locked;
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('locked.alice_view', 'SELECT count(*) AS n FROM events');
RESET ROLE;
DROP SCHEMA locked;

-- streams and savepoints take replication slots, which the server shares:
-- a server can keep them to some roles
REVOKE EXECUTE ON FUNCTION flowpg.create_stream(text, text, interval),
    flowpg.savepoint(text, text) FROM PUBLIC;
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('alice_more', 'SELECT count(*) AS n FROM events');
SELECT flowpg.savepoint('alice_view', 'sp');
RESET ROLE;
GRANT EXECUTE ON FUNCTION flowpg.create_stream(text, text, interval),
    flowpg.savepoint(text, text) TO PUBLIC;

-- bob may not read the source, nor manage or read alice's stream
SET ROLE flowpg_bob;
SELECT flowpg.create_stream('bob_view', 'SELECT count(*) AS n FROM events');
SELECT flowpg.drop_stream('alice_view');
SELECT flowpg.checkpoint('alice_view');
SELECT flowpg.pause_stream('alice_view');
SELECT flowpg.resume_stream('alice_view');
SELECT * FROM flowpg.live(NULL::alice_view);
SELECT flowpg.wait('alice_view');
SELECT name, status FROM flowpg.streams;
RESET ROLE;

-- flowpg.live runs the stream's final functions and output expressions
-- as its owner, whoever calls it (here a superuser), and is refused to a
-- user whom the result table's row security would filter
CREATE TABLE sightings (who text);
GRANT SELECT ON sightings TO flowpg_alice;
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('alice_seen',
    $$SELECT who, runner(who) || ':' || count(*) AS seen FROM sightings GROUP BY who$$);
RESET ROLE;
INSERT INTO sightings VALUES ('x'), ('y'), ('x');
SELECT flowpg.wait('alice_seen');
SELECT * FROM flowpg.live(NULL::alice_seen) ORDER BY who;
GRANT SELECT ON alice_seen TO flowpg_bob;
ALTER TABLE alice_seen ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_x ON alice_seen FOR SELECT TO flowpg_bob USING (who = 'x');
SET ROLE flowpg_bob;
SELECT flowpg.wait('alice_seen');
TABLE alice_seen;
SELECT * FROM flowpg.live(NULL::alice_seen);
RESET ROLE;
SELECT flowpg.drop_stream('alice_seen');
-- ... with settings that end with the call: a SET by the owner's code (of
-- search_path, where the owner could put functions of its own for the
-- caller to run next) does not outlive it
SET ROLE flowpg_alice;
CREATE FUNCTION alice_sets(bigint) RETURNS bigint IMMUTABLE LANGUAGE plpgsql
    AS $$BEGIN PERFORM pg_catalog.set_config('search_path', 'alice_trap', false); RETURN $1; END$$;
SELECT flowpg.create_stream('alice_sets_path',
    'SELECT who, alice_sets(count(*)) AS n FROM sightings GROUP BY who');
RESET ROLE;
INSERT INTO sightings VALUES ('z');
SELECT flowpg.wait('alice_sets_path');
SHOW search_path;
SELECT * FROM flowpg.live(NULL::alice_sets_path);
SHOW search_path;
SELECT flowpg.drop_stream('alice_sets_path');
DROP FUNCTION alice_sets(bigint);
-- ... and with pg_temp last on the stream's search_path: a type of the
-- caller's temporary schema named like one the owner's function names is
-- not the one it finds (its CHECK, calling whatever the caller wants, ran
-- as the owner)
SET ROLE flowpg_alice;
CREATE FUNCTION alice_pretty(bigint) RETURNS text IMMUTABLE LANGUAGE plpgsql
    AS $$BEGIN RETURN $1::text || ' seen'; END$$;
SELECT flowpg.create_stream('alice_pretty',
    'SELECT who, alice_pretty(count(*)) AS n FROM sightings GROUP BY who');
RESET ROLE;
INSERT INTO sightings VALUES ('p'), ('p');
SELECT flowpg.wait('alice_pretty');
GRANT SELECT ON alice_pretty TO flowpg_bob;
SET ROLE flowpg_bob;
CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (VALUE IS NULL);
SELECT * FROM flowpg.live(NULL::alice_pretty) ORDER BY who;
DROP DOMAIN pg_temp.text;
RESET ROLE;
SELECT flowpg.drop_stream('alice_pretty');
DROP FUNCTION alice_pretty(bigint);
DROP TABLE sightings;

-- a source whose row security applies to the owner is refused: the stream
-- would see rows the owner cannot
CREATE TABLE secret (k int);
ALTER TABLE secret ENABLE ROW LEVEL SECURITY;
GRANT SELECT ON secret TO flowpg_alice;
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('alice_secret', 'SELECT count(*) AS n FROM secret');
RESET ROLE;
DROP TABLE secret;

-- flowpg's trigger that marks a stream restored from a dump fires on its
-- catalog only (on a table of the caller's with the same columns, it
-- asked for the rebuild of any stream id)
SET ROLE flowpg_bob;
CREATE TABLE fake_stream (id int, result oid, plan text, restored bool, owner oid);
CREATE TRIGGER fake BEFORE INSERT ON fake_stream
    FOR EACH ROW EXECUTE FUNCTION flowpg.stream_restored();
INSERT INTO fake_stream VALUES (1, 'pg_class'::regclass, '', false, 0);
DROP TABLE fake_stream;
RESET ROLE;

-- a role that cannot log in cannot own a stream: its worker could not connect
SET ROLE flowpg_group;
SELECT flowpg.create_stream('group_view', 'SELECT count(*) AS n FROM events');
RESET ROLE;

-- privileges are checked again while the stream runs: a running stream
-- stops reading a source its owner may no longer read
CREATE FUNCTION await_running(stream text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. 600 LOOP
        EXIT WHEN (SELECT status FROM flowpg.streams WHERE name = stream) = 'running';
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
CREATE FUNCTION await_error(stream text, pattern text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        EXIT WHEN (SELECT last_error LIKE pattern FROM flowpg.streams WHERE name = stream);
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
-- until a worker started after the given count of restarts runs
CREATE FUNCTION await_restart(stream text, before int) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        EXIT WHEN (SELECT restarts > before AND status = 'running'
                     FROM flowpg.streams WHERE name = stream);
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
REVOKE SELECT ON events FROM flowpg_alice;
INSERT INTO events VALUES ('y', 100);
SELECT FROM await_error('public.alice_view', '%');
SELECT last_error FROM flowpg.streams WHERE name = 'public.alice_view';
-- an error may quote a row of the source: only the owner's members (and
-- pg_read_all_stats) read it
SET ROLE flowpg_bob;
SELECT status, last_error FROM flowpg.streams WHERE name = 'public.alice_view';
SELECT count(*) FILTER (WHERE last_error LIKE 'permission denied%') AS readable
  FROM flowpg.stream_status();
RESET ROLE;
SET ROLE flowpg_alice;
SELECT last_error LIKE 'permission denied%' AS owner_reads_it
  FROM flowpg.streams WHERE name = 'public.alice_view';
RESET ROLE;
-- flowpg.wait starts a failed worker again at once (not after the
-- launcher's back-off of 1, 2, 4 s ...), and raises its error if it fails
-- again: three calls, two restarts at least
SELECT restarts AS before FROM flowpg.streams WHERE name = 'public.alice_view' \gset
SELECT flowpg.wait('alice_view', '10 s');
SELECT flowpg.wait('alice_view', '10 s');
SELECT flowpg.wait('alice_view', '10 s');
SELECT restarts >= :before + 2 AS restarted_at_once
  FROM flowpg.streams WHERE name = 'public.alice_view';
GRANT SELECT ON events TO flowpg_alice;
SELECT FROM await_running('public.alice_view');
INSERT INTO events VALUES ('y', 10);
SELECT flowpg.wait('alice_view');
TABLE alice_view ORDER BY who;

-- ... and one whose row security comes to apply to its owner, until it
-- no longer does
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
INSERT INTO events VALUES ('y', 1000);
SELECT FROM await_error('public.alice_view', '%row-level security%');
SELECT last_error FROM flowpg.streams WHERE name = 'public.alice_view';
ALTER TABLE events DISABLE ROW LEVEL SECURITY;
SELECT FROM await_running('public.alice_view');
SELECT flowpg.wait('alice_view');
TABLE alice_view ORDER BY who;

-- ... at once, between checkpoints (a stream checkpointing once a day read
-- on until then, and flowpg.live showed what it read), and one whose owner
-- loses EXECUTE on a function it calls (not checked again before its next
-- start)
CREATE TABLE payroll (who text, amount int);
CREATE TABLE bonus (who text, v int);
GRANT SELECT ON payroll, bonus TO flowpg_alice;
CREATE FUNCTION doubled(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN 2 * $1; END';
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('alice_pay', 'SELECT who, sum(amount) AS total FROM payroll GROUP BY who', '1 day');
SELECT flowpg.create_stream('alice_doubled', 'SELECT who, sum(doubled(v)) AS total FROM bonus GROUP BY who', '1 day');
RESET ROLE;
INSERT INTO payroll VALUES ('intern', 10);
INSERT INTO bonus VALUES ('d', 1);
SELECT flowpg.wait('alice_pay'), flowpg.wait('alice_doubled');
REVOKE SELECT ON payroll FROM flowpg_alice;
REVOKE EXECUTE ON FUNCTION doubled(int) FROM PUBLIC;
INSERT INTO payroll VALUES ('ceo', 999999);
INSERT INTO bonus VALUES ('d', 2);
SELECT FROM await_error('public.alice_pay', 'permission denied%');
SELECT FROM await_error('public.alice_doubled', 'permission denied%');
SELECT name, status, last_error FROM flowpg.streams
  WHERE name IN ('public.alice_pay', 'public.alice_doubled') ORDER BY name;
GRANT SELECT ON payroll TO flowpg_alice;
GRANT EXECUTE ON FUNCTION doubled(int) TO PUBLIC;
SELECT flowpg.wait('alice_pay'), flowpg.wait('alice_doubled');
TABLE alice_pay ORDER BY who;
TABLE alice_doubled;
SELECT flowpg.drop_stream('alice_pay'), flowpg.drop_stream('alice_doubled');
DROP TABLE payroll, bonus;
DROP FUNCTION doubled(int);
-- ... and so when the owner leaves the role it read the source through
CREATE TABLE team (who text, v int);
GRANT SELECT ON team TO flowpg_group;
GRANT flowpg_group TO flowpg_alice;
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('alice_team', 'SELECT who, sum(v) AS total FROM team GROUP BY who', '1 day');
RESET ROLE;
INSERT INTO team VALUES ('a', 1);
SELECT flowpg.wait('alice_team');
REVOKE flowpg_group FROM flowpg_alice;
INSERT INTO team VALUES ('a', 2);
SELECT FROM await_error('public.alice_team', 'permission denied%');
SELECT status, last_error FROM flowpg.streams WHERE name = 'public.alice_team';
GRANT flowpg_group TO flowpg_alice;
SELECT flowpg.wait('alice_team');
TABLE alice_team;
SELECT flowpg.drop_stream('alice_team');
REVOKE flowpg_group FROM flowpg_alice;
DROP TABLE team;
-- ... but not on a call that compiling folded away unrun, which
-- PostgreSQL does not check either (the stream failed at the next VACUUM
-- of its source, and at every start after)
CREATE FUNCTION hidden(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1';
REVOKE EXECUTE ON FUNCTION hidden(int) FROM PUBLIC;
CREATE TABLE folded (k int, v int);
GRANT SELECT ON folded TO flowpg_alice;
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('alice_folded',
    'SELECT k, count(*) AS n FROM folded WHERE true OR hidden(v) > 0 GROUP BY k');
RESET ROLE;
INSERT INTO folded VALUES (1, 1);
SELECT flowpg.wait('alice_folded');
VACUUM folded;
INSERT INTO folded VALUES (1, 2);
SELECT flowpg.wait('alice_folded');
TABLE alice_folded;
SELECT flowpg.drop_stream('alice_folded');
DROP TABLE folded;
DROP FUNCTION hidden(int);
-- create_stream refuses what the owner may not run (each start of the
-- stream's worker refused it, for good)
CREATE AGGREGATE locked_sum(int) (sfunc = int4pl, stype = int, combinefunc = int4pl, initcond = '0');
REVOKE EXECUTE ON FUNCTION locked_sum(int) FROM PUBLIC;
CREATE FUNCTION locked_check(int) RETURNS bool IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN $1 > 0; END';
REVOKE EXECUTE ON FUNCTION locked_check(int) FROM PUBLIC;
CREATE DOMAIN locked_pos AS int CHECK (locked_check(VALUE));
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('alice_locked_agg', 'SELECT who, locked_sum(v) AS s FROM events GROUP BY who');
SELECT flowpg.create_stream('alice_locked_dom', 'SELECT who, sum(v::locked_pos) AS s FROM events GROUP BY who');
RESET ROLE;
DROP DOMAIN locked_pos;
DROP FUNCTION locked_check(int);
DROP AGGREGATE locked_sum(int);

-- ... and one whose owner may no longer log in, until it may again
ALTER ROLE flowpg_alice NOLOGIN;
SELECT pg_terminate_backend(pid) AS stopped FROM flowpg.streams WHERE name = 'public.alice_view';
SELECT FROM await_error('public.alice_view', '%not permitted to log in%');
SELECT status, last_error FROM flowpg.streams WHERE name = 'public.alice_view';
ALTER ROLE flowpg_alice LOGIN;
SELECT FROM await_running('public.alice_view');
INSERT INTO events VALUES ('x', 5);
SELECT flowpg.wait('alice_view');
TABLE alice_view ORDER BY who;

-- the worker's session is alice's: a stream's functions cannot become
-- another role (here the bootstrap superuser)
CREATE FUNCTION become(setting text, v int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config(setting, (SELECT rolname FROM pg_roles WHERE oid = 10), false);
    RETURN v;
END $$;
SET ROLE flowpg_alice;
SELECT flowpg.create_stream('escape_role', $$SELECT sum(become('role', v)) AS s FROM events$$);
SELECT flowpg.create_stream('escape_session',
    $$SELECT sum(become('session_authorization', v)) AS s FROM events$$);
RESET ROLE;
INSERT INTO events VALUES ('x', 0);
SELECT FROM await_error('public.escape_role', 'permission denied to set role%');
SELECT FROM await_error('public.escape_session', 'permission denied to set session authorization%');
SELECT name, status, last_error LIKE 'permission denied to set %' AS refused
  FROM flowpg.streams WHERE name LIKE 'public.escape%' ORDER BY name;
SELECT flowpg.drop_stream('escape_role');
SELECT flowpg.drop_stream('escape_session');
DROP FUNCTION become(text, int);

-- identifiers are quoted wherever flowpg writes SQL
SELECT flowpg.create_stream('public."x""; DROP TABLE events; --"',
    'SELECT who AS "we""ird", count(*) AS "n; DROP TABLE events" FROM events GROUP BY who');
INSERT INTO events VALUES ('z', 1);
SELECT flowpg.wait('public."x""; DROP TABLE events; --"');
SELECT * FROM "x""; DROP TABLE events; --" ORDER BY 1;
SELECT count(*) AS events_still_there FROM events;

SELECT flowpg.drop_stream('public."x""; DROP TABLE events; --"');

-- a stream changes hands with its result table; the new owner must be
-- able to run it: log in, read events (bob may not yet) ...
SELECT flowpg.wait('alice_view');
-- (and only to a role whose privileges its owner has: alice may act as bob)
GRANT flowpg_bob TO flowpg_alice;
\set VERBOSITY default
ALTER TABLE alice_view OWNER TO flowpg_group;
ALTER TABLE alice_view OWNER TO flowpg_bob;
GRANT SELECT ON events TO flowpg_bob;
SELECT restarts AS before FROM flowpg.streams WHERE name = 'public.alice_view' \gset
ALTER TABLE alice_view OWNER TO flowpg_bob;
\set VERBOSITY terse
SELECT name, owner FROM flowpg.streams ORDER BY name;
-- ... and its worker starts again as bob, from its checkpoint: the rows
-- from then on are bob's, each counted once
SELECT FROM await_restart('public.alice_view', :before);
INSERT INTO events VALUES ('x', 6), ('y', 7);
SELECT flowpg.wait('alice_view');
TABLE alice_view ORDER BY runner, who;
SELECT sum(n) = (SELECT count(*) FROM events) AS exact FROM alice_view;
-- a stream does not go to a role whose privileges its owner lacks (bob
-- may not act as alice), even from a superuser; from now on bob may
\set VERBOSITY default
ALTER TABLE alice_view OWNER TO flowpg_alice;
\set VERBOSITY terse
REVOKE flowpg_bob FROM flowpg_alice;
GRANT flowpg_alice TO flowpg_bob;
-- not in a transaction that rolls back, nor in a prepared one
BEGIN;
ALTER TABLE alice_view OWNER TO flowpg_alice;
ROLLBACK;
BEGIN;
ALTER TABLE alice_view OWNER TO flowpg_alice;
PREPARE TRANSACTION 'flowpg_owner';
-- (nor can a drop of a stream; other tables can be dropped so)
BEGIN;
DROP TABLE alice_view;
PREPARE TRANSACTION 'flowpg_drop';
-- nor a pause, a resume, a new checkpoint interval or a savepoint, whose
-- lock on the stream a prepared transaction would keep (a restarting
-- worker waits for it); the savepoint was taken at once, as ever
BEGIN;
SELECT flowpg.pause_stream('alice_view');
PREPARE TRANSACTION 'flowpg_pause';
BEGIN;
SELECT flowpg.resume_stream('alice_view');
PREPARE TRANSACTION 'flowpg_resume';
BEGIN;
SELECT flowpg.set_checkpoint_interval('alice_view', '5 s');
PREPARE TRANSACTION 'flowpg_interval';
BEGIN;
SELECT flowpg.savepoint('alice_view', 'prepared') > 0 AS taken;
PREPARE TRANSACTION 'flowpg_savepoint';
SELECT flowpg.drop_savepoint('alice_view', 'prepared');
SELECT status, checkpoint_interval FROM flowpg.streams WHERE name = 'public.alice_view';
-- a pause rolled back to a savepoint let its lock go and changes nothing:
-- the transaction may be prepared (it was refused)
BEGIN;
CREATE TABLE flowpg_scratch (k int);
SAVEPOINT s;
SELECT flowpg.pause_stream('alice_view');
ROLLBACK TO SAVEPOINT s;
PREPARE TRANSACTION 'flowpg_unpaused';
COMMIT PREPARED 'flowpg_unpaused';
DROP TABLE flowpg_scratch;
SELECT status FROM flowpg.streams WHERE name = 'public.alice_view';
BEGIN;
CREATE TABLE flowpg_scratch (k int);
DROP TABLE flowpg_scratch;
PREPARE TRANSACTION 'flowpg_other';
COMMIT PREPARED 'flowpg_other';
SELECT name, owner FROM flowpg.streams ORDER BY name;

-- REASSIGN OWNED gives away a role's streams too (checked as above), and
-- then the role can go
SELECT restarts AS before FROM flowpg.streams WHERE name = 'public.alice_view' \gset
\set VERBOSITY default
REASSIGN OWNED BY flowpg_bob TO flowpg_alice;
\set VERBOSITY terse
DROP OWNED BY flowpg_bob;
DROP ROLE flowpg_bob;
SELECT name, owner FROM flowpg.streams ORDER BY name;
SELECT FROM await_restart('public.alice_view', :before);
INSERT INTO events VALUES ('z', 8);
SELECT flowpg.wait('alice_view');
TABLE alice_view ORDER BY runner, who;
SELECT sum(n) = (SELECT count(*) FROM events) AS exact FROM alice_view;

-- the owner of a stream cannot be dropped; DROP OWNED drops its streams
\set VERBOSITY default
DROP ROLE flowpg_alice;
\set VERBOSITY terse
DROP OWNED BY flowpg_alice;
SELECT count(*) AS streams FROM flowpg.streams;
DROP TABLE events;
REVOKE CREATE ON SCHEMA public FROM flowpg_alice, flowpg_group;
DROP ROLE flowpg_alice, flowpg_group;
DROP FUNCTION runner(text);
DROP FUNCTION await_running(text);
DROP FUNCTION await_error(text, text);
DROP FUNCTION await_restart(text, int);

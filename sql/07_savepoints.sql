-- Savepoints: named, durable copies of a stream's state and position;
-- restore rewinds a stream to one, and it re-processes everything
-- committed since.  And what an operator reads: flowpg.checkpoints,
-- flowpg.savepoints, the metrics of flowpg.streams.
CREATE TABLE sv (k int, v int);
-- no periodic checkpoints: each checkpoint below is one this test asks for
-- (a savepoint writes the keys changed since the last checkpoint)
SELECT flowpg.create_stream('svs', 'SELECT k, count(*) AS n, sum(v) AS s FROM sv GROUP BY k', '1 hour');
SELECT flowpg.create_stream('svg', 'SELECT count(*) AS n, max(v) AS top FROM sv', '1 hour');
SELECT flowpg.savepoint('svg', 'empty') > 0 AS savepoint_of_nothing;
INSERT INTO sv SELECT g % 4, g FROM generate_series(1, 100) g;
-- (created_at: when it was taken, in its worker's transaction, which
-- began after this statement; not when the worker started)
SELECT clock_timestamp() AS before_first \gset
SELECT flowpg.savepoint('svs', 'first') AS first_id \gset
SELECT stream, name, keys, bytes > 0 AS has_bytes, restorable, retained_wal > 0 AS keeps_wal,
       created_at > :'before_first' AS taken_then
  FROM flowpg.savepoints ORDER BY stream, name;
SELECT kind, keys FROM flowpg.checkpoints WHERE id = :first_id;
INSERT INTO sv SELECT g % 6, g FROM generate_series(1, 60) g;
SELECT oracle('svs'), oracle('svg');

-- damage the result tables by hand; restoring puts them right
UPDATE svs SET n = 0;
DELETE FROM svg;
SELECT flowpg.restore('svs', 'first');
SELECT flowpg.restore('svg', 'empty');
SELECT oracle('svs'), oracle('svg');
TABLE svs ORDER BY k;
TABLE svg;
SELECT stream, kind, keys FROM flowpg.checkpoints
 WHERE kind IN ('savepoint', 'restore', 'rewrite') ORDER BY stream, id;

-- a restore that rolls back changes nothing, and the stream stays exact
BEGIN;
SELECT flowpg.restore('svs', 'first');
ROLLBACK;
INSERT INTO sv VALUES (9, 9);
SELECT oracle('svs');

-- what flowpg.streams and flowpg.checkpoints show
SELECT name, status, stale, events_per_second >= 0 AS rate, lag_bytes >= 0 AS lag,
       lag_seconds >= 0 AS lag_s, retained_wal > 0 AS keeps_wal, keys,
       state_bytes > 0 AS has_state, checkpoint_ms >= 0 AS ckpt_ms,
       checkpoints > 0 AND checkpoint_total_ms >= checkpoint_ms AS ckpt_total
  FROM flowpg.streams ORDER BY name;
SELECT count(*) > 0 AS has_rows,
       bool_and(duration = finished_at - started_at) AS duration,
       bool_and(stream IN ('public.svs', 'public.svg')) AS named
  FROM flowpg.checkpoints;

-- wrong calls
SELECT try($$SELECT flowpg.savepoint(NULL, 'x')$$);
SELECT try($$SELECT flowpg.savepoint('nope', 'x')$$);
SELECT try($$SELECT flowpg.savepoint('svs', NULL)$$);
SELECT try($$SELECT flowpg.savepoint('svs', ' ')$$);
SELECT try($$SELECT flowpg.savepoint('svs', repeat('x', 64))$$);
SELECT try($$SELECT flowpg.savepoint('svs', 'first')$$);
SELECT try($$SELECT flowpg.restore('svs', 'nope')$$);
SELECT try($$SELECT flowpg.restore('nope', 'first')$$);
SELECT try($$SELECT flowpg.drop_savepoint('svs', 'nope')$$);
BEGIN;
INSERT INTO sv VALUES (1, 1);
SELECT try($$SELECT flowpg.restore('svs', 'first')$$);
ROLLBACK;
CREATE ROLE flowpg_carol LOGIN;
SET ROLE flowpg_carol;
SELECT try($$SELECT flowpg.savepoint('svs', 'mine')$$);
SELECT try($$SELECT flowpg.restore('svs', 'first')$$);
SELECT try($$SELECT flowpg.drop_savepoint('svs', 'first')$$);
SELECT count(*) AS savepoints_carol_sees FROM flowpg.savepoints;
RESET ROLE;
DROP ROLE flowpg_carol;

-- dropping a savepoint releases its slot; a rollback keeps both, and so
-- does a rollback to a savepoint of the transaction, which commits
BEGIN;
SELECT flowpg.drop_savepoint('svs', 'first');
ROLLBACK;
SELECT name, restorable FROM flowpg.savepoints WHERE stream = 'public.svs';
BEGIN;
SAVEPOINT keep_it;
SELECT flowpg.drop_savepoint('svs', 'first');
ROLLBACK TO keep_it;
COMMIT;
SELECT name, restorable FROM flowpg.savepoints WHERE stream = 'public.svs';
-- a savepoint in the transaction that dropped one (the worker's insert of
-- the new row waited for this transaction's delete: 60 s, and then the
-- savepoint was taken all the same)
BEGIN;
SELECT flowpg.drop_savepoint('svs', 'first');
SELECT try($$SELECT flowpg.savepoint('svs', 'first')$$);
ROLLBACK;
BEGIN;
SELECT flowpg.pause_stream('svs');
SELECT try($$SELECT flowpg.savepoint('svs', 'paused')$$);
ROLLBACK;
SELECT flowpg.drop_savepoint('svs', 'first');
SELECT count(*) AS savepoints, (SELECT count(*) FROM pg_replication_slots
                                 WHERE slot_name LIKE 'flowpg\_sp\_%') AS slots
  FROM flowpg.savepoints WHERE stream = 'public.svs';

-- flowpg.rebuild_stream: the stream is rebuilt from its source table, its
-- savepoints go (with their slots); a rollback changes nothing
DELETE FROM svg;
BEGIN;
SELECT flowpg.rebuild_stream('svg');
ROLLBACK;
SELECT name FROM flowpg.savepoints WHERE stream = 'public.svg';
BEGIN;
SAVEPOINT keep_it;
SELECT flowpg.rebuild_stream('svg');
ROLLBACK TO keep_it;
COMMIT;
SELECT s.name, s.restorable, t.stale FROM flowpg.savepoints s
  JOIN flowpg.streams t ON t.name = s.stream WHERE s.stream = 'public.svg';
SELECT pg_sleep(1);
SELECT flowpg.wait('svg');
SELECT kind FROM flowpg.checkpoints WHERE stream = 'public.svg' ORDER BY id DESC LIMIT 1;
SELECT flowpg.rebuild_stream('svg');
SELECT oracle('svg');
SELECT name, status, stale FROM flowpg.streams WHERE name = 'public.svg';
SELECT count(*) AS savepoints, (SELECT count(*) FROM pg_replication_slots
                                 WHERE slot_name LIKE 'flowpg\_sp\_%') AS slots
  FROM flowpg.savepoints WHERE stream = 'public.svg';
SELECT kind FROM flowpg.checkpoints WHERE stream = 'public.svg' ORDER BY id DESC LIMIT 1;
INSERT INTO sv VALUES (1, 1000);
SELECT oracle('svg');
-- a rebuilt stream counts the rows of its source table from before it was
-- created, as a restored one does
CREATE TABLE early (k int);
INSERT INTO early VALUES (1), (1), (2);
SELECT flowpg.create_stream('early_n', 'SELECT k, count(*) AS n FROM early GROUP BY k');
INSERT INTO early VALUES (2);
SELECT flowpg.wait('early_n');
TABLE early_n ORDER BY k;
SELECT flowpg.rebuild_stream('early_n');
SELECT flowpg.wait('early_n');
TABLE early_n ORDER BY k;
SELECT flowpg.drop_stream('early_n');
DROP TABLE early;
-- a savepoint of a stream being rebuilt is refused at once: its worker
-- starts once the rebuild is done, and the rebuild does not wait for it
-- (it waited out the savepoint's timeout, which then took it all the same)
CREATE TABLE rb (v int);
INSERT INTO rb SELECT generate_series(1, 300000);
SELECT flowpg.create_stream('rb_n', 'SELECT count(*) AS n FROM rb');
SELECT flowpg.rebuild_stream('rb_n');
SELECT try($$SELECT flowpg.savepoint('rb_n', 'during')$$);
SELECT flowpg.wait('rb_n');
TABLE rb_n;
SELECT flowpg.savepoint('rb_n', 'after') > 0 AS taken;
SELECT name FROM flowpg.savepoints WHERE stream = 'public.rb_n';
SELECT flowpg.drop_stream('rb_n');
DROP TABLE rb;
-- a savepoint whose call failed is not taken afterwards: here the
-- stream's worker cannot start (its owner may not log in) when it is called
CREATE ROLE flowpg_dave LOGIN;
CREATE TABLE dv (k int);
GRANT SELECT ON dv TO flowpg_dave;
GRANT CREATE ON SCHEMA public TO flowpg_dave;
SET ROLE flowpg_dave;
SELECT flowpg.create_stream('dave_n', 'SELECT count(*) AS n FROM dv');
RESET ROLE;
INSERT INTO dv VALUES (1);
SELECT flowpg.wait('dave_n');
ALTER ROLE flowpg_dave NOLOGIN;
SELECT pg_terminate_backend(pid) AS stopped FROM flowpg.streams WHERE name = 'public.dave_n';
SELECT try($$SELECT flowpg.savepoint('dave_n', 'refused')$$) LIKE '55000: stream "public.dave_n" has failed%' AS refused;
ALTER ROLE flowpg_dave LOGIN;
INSERT INTO dv VALUES (2);
SELECT flowpg.wait('dave_n');
SELECT pg_sleep(0.5);
SELECT count(*) AS savepoints FROM flowpg.savepoints WHERE stream = 'public.dave_n';
TABLE dave_n;
SELECT flowpg.drop_stream('dave_n');
DROP TABLE dv;
REVOKE CREATE ON SCHEMA public FROM flowpg_dave;
DROP ROLE flowpg_dave;
-- a savepoint needs a replication slot of its own: with none free it is
-- refused, and the stream's worker goes on (it failed, taking it)
SELECT restarts AS restarts_before FROM flowpg.streams WHERE name = 'public.svs' \gset
SELECT count(pg_create_physical_replication_slot('flowpg_test_fill_' || g)) > 0 AS filled
  FROM generate_series(1, (SELECT setting::int FROM pg_settings WHERE name = 'max_replication_slots')
                          - (SELECT count(*) FROM pg_replication_slots)) g;
SELECT try($$SELECT flowpg.savepoint('svs', 'no_room')$$);
SELECT count(pg_drop_replication_slot(slot_name)) > 0 AS freed
  FROM pg_replication_slots WHERE slot_name LIKE 'flowpg\_test\_fill\_%';
SELECT flowpg.wait('svs');
SELECT status, restarts = :restarts_before AS not_restarted FROM flowpg.streams WHERE name = 'public.svs';
SELECT try($$SELECT flowpg.rebuild_stream('nope')$$);
SELECT try($$SELECT flowpg.rebuild_stream(NULL)$$);
CREATE ROLE flowpg_carol LOGIN;
SET ROLE flowpg_carol;
SELECT try($$SELECT flowpg.rebuild_stream('svg')$$);
RESET ROLE;
DROP ROLE flowpg_carol;

-- dropping a stream drops its savepoints and their slots
SELECT flowpg.drop_stream('svg');
SELECT count(*) AS savepoints, (SELECT count(*) FROM pg_replication_slots
                                 WHERE slot_name LIKE 'flowpg\_sp\_%') AS slots
  FROM flowpg.savepoint;
SELECT flowpg.drop_stream('svs');
DROP TABLE sv;

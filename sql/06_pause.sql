-- Pausing a stream: it checkpoints, keeps its state and its place, applies
-- nothing until resumed, then catches up exactly.
CREATE TABLE p (k int, v int);
SELECT flowpg.create_stream('ps', 'SELECT k, count(*) AS n, sum(v) AS s FROM p GROUP BY k');
INSERT INTO p VALUES (1, 1);
SELECT flowpg.wait('ps');
SELECT flowpg.pause_stream('ps');
SELECT name, status FROM flowpg.streams WHERE name = 'public.ps';
INSERT INTO p SELECT g % 3, g FROM generate_series(1, 300) g;
SELECT pg_sleep(0.5);
TABLE ps ORDER BY k;
SELECT * FROM flowpg.live(NULL::ps) ORDER BY k;
\set VERBOSITY terse
SELECT flowpg.wait('ps');
\set VERBOSITY default
SELECT flowpg.checkpoint('ps') > 0 AS checkpoint_while_paused;
SELECT flowpg.resume_stream('ps');
SELECT oracle('ps');
SELECT name, status FROM flowpg.streams WHERE name = 'public.ps';
TABLE ps ORDER BY k;
-- the checkpoint interval changes without a restart
SELECT pid AS worker FROM flowpg.streams WHERE name = 'public.ps' \gset
SELECT flowpg.set_checkpoint_interval('ps', '250 ms');
SELECT checkpoint_interval, pid = :worker AS same_worker FROM flowpg.streams WHERE name = 'public.ps';
SELECT flowpg.set_checkpoint_interval('ps', NULL);
SELECT checkpoint_interval FROM flowpg.streams WHERE name = 'public.ps';
\set VERBOSITY terse
SELECT flowpg.set_checkpoint_interval('ps', '0 s');
\set VERBOSITY default

SELECT flowpg.drop_stream('ps');
DROP TABLE p;

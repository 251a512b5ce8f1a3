-- The basic life of a stream: create, load, wait, read, drop.
SET client_min_messages = warning;
CREATE EXTENSION flowpg;
RESET client_min_messages;

-- Compare a stream's result table with its query run as a batch, both ways;
-- and with its definition (the query as pg_dump carries it, deparsed from
-- what the stream runs) run as a batch: missing and extra count both.
-- After renames, the query as written may name what is no longer there:
-- with_query false compares with the definition only.
CREATE FUNCTION oracle(stream text, with_query boolean DEFAULT true)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    q text;
    m bigint;
    e bigint;
    missing bigint := 0;
    extra bigint := 0;
    n bigint;
BEGIN
    PERFORM flowpg.wait(stream);
    FOR q IN SELECT unnest(CASE WHEN with_query THEN ARRAY[s.query, s.definition]
                                ELSE ARRAY[s.definition] END)
               FROM flowpg.streams s WHERE s.result = stream::regclass LOOP
        EXECUTE format('SELECT count(*) FROM ((%s) EXCEPT ALL TABLE %s) d', q, stream) INTO m;
        EXECUTE format('SELECT count(*) FROM (TABLE %s EXCEPT ALL (%s)) d', stream, q) INTO e;
        missing := missing + m;
        extra := extra + e;
    END LOOP;
    EXECUTE format('SELECT count(*) FROM %s', stream) INTO n;
    RETURN format('%s rows, %s missing, %s extra', n, missing, extra);
END $$;

CREATE TABLE clicks (ts timestamptz NOT NULL DEFAULT now(), campaign int, cost numeric);
-- rows already in the table are not part of a new stream
INSERT INTO clicks (campaign, cost) VALUES (99, 5);

SELECT flowpg.create_stream('spend', $$
    SELECT campaign, count(*) AS clicks, sum(cost) AS spend, avg(cost) AS avg_cost
      FROM clicks WHERE cost > 0 GROUP BY campaign $$);
\d spend
SELECT name, owner, status IN ('starting', 'running') AS alive,
       checkpoint_interval, source, result
  FROM flowpg.streams;

-- every way of writing: multi-row, single-row, rolled back, COPY
INSERT INTO clicks (campaign, cost) SELECT g % 5, g % 4 FROM generate_series(1, 1000) g;
INSERT INTO clicks (campaign, cost) VALUES (1, 10);
INSERT INTO clicks (campaign, cost) VALUES (2, -1), (NULL, 3);
BEGIN;
INSERT INTO clicks (campaign, cost) VALUES (7, 100);
ROLLBACK;
COPY clicks (campaign, cost) FROM STDIN;
3	2.5
4	0
\.
SELECT flowpg.wait('spend');
TABLE spend ORDER BY campaign;

-- the oracle, over the rows inserted after create_stream
DELETE FROM clicks WHERE campaign = 99;
SELECT oracle('spend');

-- flowpg.live reads shared memory: the same rows once waited for
SELECT count(*) AS differences
  FROM (TABLE spend EXCEPT ALL SELECT * FROM flowpg.live(NULL::spend)) d;
SELECT * FROM flowpg.live(NULL::spend) WHERE campaign IS NULL;

SELECT flowpg.checkpoint('spend') > 0 AS checkpointed;

-- savepoints: rows of a rolled-back subtransaction never count
BEGIN;
INSERT INTO clicks (campaign, cost) VALUES (1, 100);
SAVEPOINT s;
INSERT INTO clicks (campaign, cost) VALUES (1, 1000);
ROLLBACK TO s;
INSERT INTO clicks (campaign, cost) VALUES (2, 100);
COMMIT;
SELECT oracle('spend');

-- two-phase commit: a prepared transaction counts when COMMIT PREPARED
-- commits it, never when ROLLBACK PREPARED ends it
BEGIN;
INSERT INTO clicks (campaign, cost) VALUES (3, 30);
PREPARE TRANSACTION 'flowpg_p1';
BEGIN;
INSERT INTO clicks (campaign, cost) VALUES (3, 3000);
PREPARE TRANSACTION 'flowpg_p2';
INSERT INTO clicks (campaign, cost) VALUES (3, 1);
SELECT flowpg.wait('spend');
SELECT clicks, spend FROM spend WHERE campaign = 3;
COMMIT PREPARED 'flowpg_p1';
ROLLBACK PREPARED 'flowpg_p2';
SELECT oracle('spend');
SELECT clicks, spend FROM spend WHERE campaign = 3;

-- renaming the result table renames the stream
ALTER TABLE spend RENAME TO spend_renamed;
SELECT name FROM flowpg.streams;
SELECT oracle('spend_renamed');
-- and its worker goes by the new name from its next checkpoint on
SELECT flowpg.checkpoint('spend_renamed') > 0 AS checkpointed;
SELECT a.application_name FROM pg_stat_activity a JOIN flowpg.streams s USING (pid)
 WHERE s.name = 'public.spend_renamed';
ALTER TABLE spend_renamed RENAME TO spend;
SELECT flowpg.checkpoint('spend') > 0 AS checkpointed;
SELECT events, keys, ignored_deletes, status FROM flowpg.streams;

-- the worker runs as the stream's owner and shows as a flowpg process
SELECT a.backend_type, a.usename = s.owner::text AS runs_as_owner, a.application_name
  FROM flowpg.streams s JOIN pg_stat_activity a USING (pid);
SELECT count(*) AS slots FROM pg_replication_slots WHERE plugin = 'flowpg';

-- schema-qualified names, a global aggregate, a stream's own interval
CREATE SCHEMA reports;
SELECT flowpg.create_stream('reports.total',
    'SELECT count(*) AS n, sum(cost) AS s, max(ts) IS NOT NULL AS seen FROM clicks',
    '50 ms');
TABLE reports.total;
INSERT INTO clicks (campaign, cost) VALUES (1, 1), (2, 2);
SELECT flowpg.wait('reports.total');
TABLE reports.total;
SELECT * FROM flowpg.live(NULL::reports.total);
SELECT name, checkpoint_interval FROM flowpg.streams ORDER BY name;

-- a stream with only keys: the distinct campaigns seen
CREATE TABLE visits (campaign int);
SELECT flowpg.create_stream('campaigns', 'SELECT campaign FROM visits GROUP BY campaign');
INSERT INTO visits VALUES (1), (2), (42), (42), (NULL);
SELECT oracle('campaigns');
TABLE campaigns ORDER BY campaign;

SELECT flowpg.drop_stream('reports.total');
SELECT flowpg.drop_stream('campaigns');
SELECT to_regclass('reports.total') AS dropped_table;
SELECT name FROM flowpg.streams;
SELECT count(*) AS slots FROM pg_replication_slots WHERE plugin = 'flowpg';
DROP SCHEMA reports;
DROP TABLE visits;

-- After a load, the stream's slot soon keeps only the WAL after it: its
-- restart position moves past a record of the running transactions, which
-- the worker logs when the slot keeps more than a WAL segment (else the
-- background writer's, up to 15 s later); a restarted worker would read
-- the load's WAL again until then
CREATE TABLE bulk (k int, v int);
SELECT flowpg.create_stream('bulk_sums', 'SELECT k, sum(v) AS s FROM bulk GROUP BY k');
INSERT INTO bulk SELECT g % 100, 1 FROM generate_series(1, 400000) g;
SELECT flowpg.wait('bulk_sums');
SELECT flowpg.checkpoint('bulk_sums') > 0 AS checkpointed;
SELECT retained_wal < pg_size_bytes(current_setting('wal_segment_size')) AS let_it_go
  FROM flowpg.streams WHERE name = 'public.bulk_sums';
SELECT oracle('bulk_sums');
SELECT flowpg.drop_stream('bulk_sums');
DROP TABLE bulk;

SELECT flowpg.drop_stream('spend');
DROP TABLE clicks;
SELECT count(*) AS streams FROM flowpg.streams;

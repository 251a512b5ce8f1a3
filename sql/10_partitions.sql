-- A partitioned source: the stream counts the rows inserted into any of
-- its partitions, at any level, whatever their column order, and follows
-- partitions created and attached while it runs.
CREATE TABLE events (id bigint, ts date NOT NULL, device int, reading numeric)
  PARTITION BY RANGE (ts);
CREATE TABLE events_jan PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
-- a partition whose columns are in another order, with a dropped one
CREATE TABLE events_feb (reading numeric, gone int, device int, ts date NOT NULL, id bigint);
ALTER TABLE events_feb DROP COLUMN gone;
ALTER TABLE events ATTACH PARTITION events_feb FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
-- a partition that is itself partitioned
CREATE TABLE events_mar PARTITION OF events FOR VALUES FROM ('2026-03-01') TO ('2026-04-01')
  PARTITION BY HASH (device);
CREATE TABLE events_mar_0 PARTITION OF events_mar FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE events_mar_1 PARTITION OF events_mar FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO events VALUES (0, '2026-01-05', 1, 100);   -- before the stream: not counted
SELECT flowpg.create_stream('per_device',
    'SELECT device, count(*) AS n, sum(reading) AS total, max(ts) AS last FROM events GROUP BY device');
-- the batch query over the rows inserted since the stream was created
CREATE VIEW per_device_batch AS
  SELECT device, count(*) AS n, sum(reading) AS total, max(ts) AS last
    FROM events WHERE id > 0 GROUP BY device;
CREATE FUNCTION per_device_differs() RETURNS bigint LANGUAGE sql AS $$
  SELECT count(*) FROM ((TABLE per_device EXCEPT ALL TABLE per_device_batch)
                        UNION ALL (TABLE per_device_batch EXCEPT ALL TABLE per_device)) d $$;

INSERT INTO events SELECT g, date '2026-01-01' + g % 90, g % 5, g FROM generate_series(1, 900) g;
-- directly into a partition, and into a partition of a partition
INSERT INTO events_feb (id, ts, device, reading) VALUES (901, '2026-02-10', 7, 1);
INSERT INTO events_mar_1 SELECT 902, '2026-03-10', device, 2 FROM
  (SELECT g AS device FROM generate_series(1, 20) g) d
  WHERE satisfies_hash_partition('events_mar'::regclass, 2, 1, device) LIMIT 1;
SELECT flowpg.wait('per_device');
SELECT per_device_differs(), (SELECT sum(n) FROM per_device) AS counted;

-- partitions created or attached while the stream runs, and a column
-- added to the source with a default (older rows read it as the default)
CREATE TABLE events_apr PARTITION OF events FOR VALUES FROM ('2026-04-01') TO ('2026-05-01');
CREATE TABLE events_may (LIKE events);
ALTER TABLE events ATTACH PARTITION events_may FOR VALUES FROM ('2026-05-01') TO ('2026-06-01');
CREATE TABLE events_default PARTITION OF events DEFAULT;
-- a table access method whose handler is heap's writes heap's WAL
CREATE ACCESS METHOD heap_too TYPE TABLE HANDLER heap_tableam_handler;
ALTER TABLE events_jan SET ACCESS METHOD heap_too;
ALTER TABLE events ADD COLUMN unit text DEFAULT 'C';
INSERT INTO events SELECT g, date '2026-01-01' + g % 150, g % 5, g, 'F' FROM generate_series(1001, 1600) g;
SELECT flowpg.wait('per_device');
SELECT per_device_differs(), (SELECT sum(n) FROM per_device) AS counted;

-- every partition must write its rows to the WAL
CREATE UNLOGGED TABLE events_jun PARTITION OF events FOR VALUES FROM ('2026-06-01') TO ('2026-07-01');
CREATE UNLOGGED TABLE events_mar_2 PARTITION OF events_mar FOR VALUES WITH (MODULUS 4, REMAINDER 3);
ALTER TABLE events_apr SET UNLOGGED;
ALTER TABLE events_mar_0 SET UNLOGGED;
CREATE UNLOGGED TABLE events_jul (LIKE events);
ALTER TABLE events DETACH PARTITION events_default;
ALTER TABLE events ATTACH PARTITION events_jul FOR VALUES FROM ('2026-07-01') TO ('2026-08-01');
CREATE TABLE events_aug (LIKE events) PARTITION BY RANGE (ts);
CREATE UNLOGGED TABLE events_aug_1 PARTITION OF events_aug FOR VALUES FROM ('2026-08-01') TO ('2026-08-10');
ALTER TABLE events ATTACH PARTITION events_aug FOR VALUES FROM ('2026-08-01') TO ('2026-09-01');
CREATE EXTENSION IF NOT EXISTS file_fdw;
CREATE SERVER IF NOT EXISTS files FOREIGN DATA WRAPPER file_fdw;
CREATE FOREIGN TABLE events_sep PARTITION OF events FOR VALUES FROM ('2026-09-01') TO ('2026-10-01')
  SERVER files OPTIONS (filename '/dev/null');
CREATE FOREIGN TABLE events_oct (id bigint, ts date NOT NULL, device int, reading numeric, unit text)
  SERVER files OPTIONS (filename '/dev/null');
ALTER TABLE events ATTACH PARTITION events_oct FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
-- other tables may do as they like
ALTER TABLE events_default SET UNLOGGED;
DROP TABLE events_jul, events_aug, events_default;
DROP FOREIGN TABLE events_oct;

-- a table attached with rows in it: they were not inserted into the
-- source, so they are not counted (a warning says so)
CREATE TABLE events_nov (LIKE events);
INSERT INTO events_nov VALUES (-1, '2026-11-02', 1, 5, 'C');
ALTER TABLE events ATTACH PARTITION events_nov FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
INSERT INTO events_nov VALUES (2001, '2026-11-03', 1, 5, 'C');
SELECT flowpg.wait('per_device');
SELECT per_device_differs(), (SELECT sum(n) FROM per_device) AS counted;

-- TRUNCATE of the source (all its partitions) is one ignored truncate;
-- an UPDATE that moves a row to another partition is decoded as a delete
-- and an insert: the new row counts, as an insert would
TRUNCATE events_nov;
INSERT INTO events VALUES (3001, '2026-01-20', 9, 10, 'C');
UPDATE events SET ts = '2026-02-20' WHERE id = 3001;
TRUNCATE events;
SELECT flowpg.wait('per_device');
SELECT device, n, total FROM per_device WHERE device = 9;
SELECT events, ignored_updates, ignored_deletes, ignored_truncates
  FROM flowpg.streams WHERE name = 'public.per_device';

-- detaching or dropping a partition (retention) leaves its rows counted;
-- flowpg.rebuild_stream computes the stream again over the rows there are
INSERT INTO events SELECT g, date '2026-01-01' + g % 150, g % 5, g, 'C' FROM generate_series(4001, 4300) g;
ALTER TABLE events DETACH PARTITION events_jan;
DROP TABLE events_feb;
SELECT flowpg.wait('per_device');
SELECT sum(n) AS counted FROM per_device;
SELECT flowpg.rebuild_stream('per_device');
SELECT flowpg.wait('per_device');
SELECT per_device_differs(), (SELECT sum(n) FROM per_device) AS counted,
       (SELECT count(*) FROM events) AS rows;

-- within one transaction, a row counts if its table is a partition of
-- the source when the row is written
CREATE TABLE moves (k int, v int) PARTITION BY RANGE (k);
CREATE TABLE moves_a PARTITION OF moves FOR VALUES FROM (0) TO (10);
SELECT flowpg.create_stream('moves_counts', 'SELECT k, count(*) AS n, sum(v) AS s FROM moves GROUP BY k');
BEGIN;
CREATE TABLE moves_b PARTITION OF moves FOR VALUES FROM (10) TO (20);
INSERT INTO moves VALUES (11, 1), (1, 1);
CREATE TABLE moves_c (v int, k int);
INSERT INTO moves_c VALUES (100, 21);    -- before the attach: not counted
ALTER TABLE moves ATTACH PARTITION moves_c FOR VALUES FROM (20) TO (30);
INSERT INTO moves VALUES (22, 1);
ALTER TABLE moves DETACH PARTITION moves_a;
INSERT INTO moves_a VALUES (2, 1000);    -- after the detach: not counted
INSERT INTO moves VALUES (12, 1);
COMMIT;
SELECT flowpg.wait('moves_counts');
TABLE moves_counts ORDER BY k;
SELECT flowpg.drop_stream('moves_counts');
DROP TABLE moves, moves_a;

SELECT flowpg.drop_stream('per_device');
DROP FUNCTION per_device_differs();
DROP VIEW per_device_batch;
DROP TABLE events, events_jan;
DROP ACCESS METHOD heap_too;

-- A stream decodes the heap's WAL records: its source, and every
-- partition of it, must be a heap table.  other_am (test/modules) stores
-- rows as heap does through a copy of heap's routine: to PostgreSQL and
-- to flowpg it is another access method.  heap_too has heap's handler:
-- it is heap.
CREATE FUNCTION other_am_handler(internal) RETURNS table_am_handler
  AS 'other_am' LANGUAGE C;
CREATE ACCESS METHOD other_am TYPE TABLE HANDLER other_am_handler;
CREATE ACCESS METHOD heap_too TYPE TABLE HANDLER heap_tableam_handler;

CREATE TABLE other_src (k int) USING other_am;
SELECT flowpg.create_stream('other_counts', 'SELECT k, count(*) FROM other_src GROUP BY k');

CREATE TABLE plain_src (k int) USING heap_too;
SELECT flowpg.create_stream('plain_counts', 'SELECT k, count(*) AS n FROM plain_src GROUP BY k');
INSERT INTO plain_src SELECT g % 2 FROM generate_series(1, 10) g;
SELECT flowpg.wait('plain_counts');
TABLE plain_counts ORDER BY k;
ALTER TABLE plain_src SET ACCESS METHOD other_am;
ALTER TABLE plain_src SET ACCESS METHOD heap;

-- partitions
CREATE TABLE parted_src (k int) PARTITION BY RANGE (k);
CREATE TABLE parted_src_1 PARTITION OF parted_src FOR VALUES FROM (0) TO (10);
CREATE TABLE parted_src_2 PARTITION OF parted_src FOR VALUES FROM (10) TO (20) USING other_am;
SELECT flowpg.create_stream('parted_counts', 'SELECT count(*) AS n FROM parted_src');
DROP TABLE parted_src_2;
SELECT flowpg.create_stream('parted_counts', 'SELECT count(*) AS n FROM parted_src');
CREATE TABLE parted_src_2 PARTITION OF parted_src FOR VALUES FROM (10) TO (20) USING other_am;
SET default_table_access_method = other_am;
CREATE TABLE parted_src_2 PARTITION OF parted_src FOR VALUES FROM (10) TO (20);
RESET default_table_access_method;
CREATE TABLE parted_src_3 (k int) USING other_am;
ALTER TABLE parted_src ATTACH PARTITION parted_src_3 FOR VALUES FROM (20) TO (30);
ALTER TABLE parted_src_1 SET ACCESS METHOD other_am;
CREATE TABLE parted_src_4 PARTITION OF parted_src FOR VALUES FROM (30) TO (40) USING heap_too;
INSERT INTO parted_src VALUES (1), (35);
SELECT flowpg.wait('parted_counts');
TABLE parted_counts;

-- other tables may use any access method
ALTER TABLE parted_src_3 SET ACCESS METHOD heap;

SELECT flowpg.drop_stream('plain_counts');
SELECT flowpg.drop_stream('parted_counts');
DROP TABLE other_src, plain_src, parted_src, parted_src_3;
DROP ACCESS METHOD other_am;
DROP ACCESS METHOD heap_too;
DROP FUNCTION other_am_handler(internal);

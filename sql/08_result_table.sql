-- Checkpoints update a key's result row where they last wrote it (by its
-- TID), checking that the row there still holds that key: the result
-- table may have been rewritten (VACUUM FULL, CLUSTER) or edited by hand
-- meanwhile, and then the row is found by its key again.
CREATE TABLE rt (k numeric, v int);
SELECT flowpg.create_stream('rts', 'SELECT k, count(*) AS n, sum(v) AS s FROM rt GROUP BY k');
INSERT INTO rt SELECT g % 10, g FROM generate_series(1, 100) g;
INSERT INTO rt VALUES (NULL, 1), (NULL, 2);
SELECT oracle('rts');
-- rows written by TID
INSERT INTO rt SELECT g % 10, 1 FROM generate_series(1, 20) g;
INSERT INTO rt VALUES (NULL, 3);
SELECT oracle('rts');
-- delete half the rows by hand, then compact the table: the TIDs kept for
-- keys 0..4 now point at rows of other keys
DELETE FROM rts WHERE k < 5;
VACUUM FULL rts;
INSERT INTO rt SELECT g % 10, 1 FROM generate_series(1, 20) g;
INSERT INTO rt VALUES (NULL, 4), (1.00, 5);
SELECT oracle('rts');
TABLE rts ORDER BY k NULLS FIRST;
-- CLUSTER moves every row again
CREATE INDEX rts_n ON rts (n DESC);
CLUSTER rts USING rts_n;
INSERT INTO rt SELECT g % 12, 1 FROM generate_series(1, 24) g;
SELECT oracle('rts');
SELECT count(*) AS rows, count(DISTINCT k) AS keys FROM rts;
SELECT flowpg.drop_stream('rts');
DROP TABLE rt;
-- A checkpoint prunes the pages of the rows it updates by TID, as an
-- update through an index would: the versions earlier checkpoints left
-- behind make room, each update stays on its page (HOT), and the table
-- keeps its size however often its keys change (autovacuum is off here,
-- so nothing else cleans it).
CREATE TABLE hs (k int, v int);
SELECT flowpg.create_stream('hot', 'SELECT k, count(*) AS n FROM hs GROUP BY k');
ALTER TABLE hot SET (autovacuum_enabled = false);
CREATE PROCEDURE hot_rounds(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO hs SELECT g, i FROM generate_series(1, 300) g;
        COMMIT;
        PERFORM flowpg.checkpoint('hot');
        COMMIT;
    END LOOP;
END $$;
CALL hot_rounds(30);
SELECT oracle('hot');
SELECT count(*) AS rows, pg_relation_size('hot') <= 6 * 8192 AS kept_its_size
  FROM hot;
SELECT flowpg.drop_stream('hot');
DROP PROCEDURE hot_rounds;
DROP TABLE hs;

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
-- a row inserted by hand for a key the stream has not met yet: the
-- checkpoint inserts the rows of its new keys (42 and 43), meets that row
-- on the unique index, takes the insert back and upserts them instead
INSERT INTO rts VALUES (42, 1000, 1000);
INSERT INTO rt VALUES (42, 1), (43, 2);
SELECT oracle('rts');
SELECT * FROM rts WHERE k >= 42 ORDER BY k;
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
-- When a page has no room left for a row's new version, the update moves
-- it to another page and gives it an index entry, as an UPDATE does: with
-- three changed rows per page (too few for the checkpoint to prune) the
-- pages fill within some twenty checkpoints.  The index must then hold
-- exactly the table's rows (amcheck), and find every key.
CREATE EXTENSION amcheck;
CREATE TABLE cs (k int, v int);
SELECT flowpg.create_stream('cold', 'SELECT k, count(*) AS n, sum(v) AS s FROM cs GROUP BY k');
ALTER TABLE cold SET (autovacuum_enabled = false);
INSERT INTO cs SELECT g, 0 FROM generate_series(1, 1000) g;
SELECT flowpg.wait('cold');
CREATE PROCEDURE cold_rounds(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO cs SELECT g, i FROM generate_series(29, 1000, 29) g;
        COMMIT;
        PERFORM flowpg.checkpoint('cold');
        COMMIT;
    END LOOP;
END $$;
CALL cold_rounds(60);
SELECT oracle('cold');
-- the worker reports what it wrote to the statistics, as a backend does
-- (autovacuum goes by them): 60 rounds of 34 keys
DO $$
BEGIN
    FOR i IN 1 .. 300 LOOP
        PERFORM pg_stat_clear_snapshot();
        EXIT WHEN (SELECT n_tup_upd FROM pg_stat_user_tables
                    WHERE relid = 'cold'::regclass) >= 2040;
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT n_tup_ins, n_tup_upd, n_tup_upd > n_tup_hot_upd AS some_updates_left_their_page
  FROM pg_stat_user_tables WHERE relid = 'cold'::regclass;
SELECT bt_index_check(indexrelid, true) FROM pg_index WHERE indrelid = 'cold'::regclass;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) AS keys_found_through_the_index
  FROM generate_series(1, 1000) g WHERE EXISTS (SELECT FROM cold WHERE k = g);
RESET enable_seqscan;
RESET enable_bitmapscan;
-- a trigger on the result table fires on the checkpoints' updates
CREATE TABLE cold_log (k int, n bigint);
CREATE FUNCTION cold_logged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cold_log VALUES (NEW.k, NEW.n);
    RETURN NEW;
END $$;
CREATE TRIGGER cold_logged AFTER UPDATE ON cold FOR EACH ROW EXECUTE FUNCTION cold_logged();
INSERT INTO cs VALUES (1, 1), (2, 2), (2, 3);
SELECT oracle('cold');
TABLE cold_log ORDER BY k;
SELECT flowpg.drop_stream('cold');
DROP PROCEDURE cold_rounds;
DROP FUNCTION cold_logged() CASCADE;
DROP TABLE cs, cold_log;
DROP EXTENSION amcheck;

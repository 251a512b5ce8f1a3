-- Collations of keys and of the result table's unique index (ICU's
-- nondeterministic collations: a server built without ICU skips this
-- file, with its own expected output, 12_collations_1.out).
SELECT EXISTS (SELECT FROM pg_catalog.pg_collation WHERE collprovider = 'i') AS has_icu \gset
\if :has_icu
\else
\echo 'this server has no ICU: skipped'
\quit
\endif

-- The unique index must compare keys as the stream does: a unique index
-- with a collation that ignores case over a text key made 'abc' and 'ABC'
-- one row's, and a checkpoint's upsert (ON CONFLICT on the key columns,
-- which took any unique index on them) wrote 'ABC''s count into 'abc''s
-- row, silently.  Beside the key index, such an index now refuses the
-- row as any constraint does (the worker stops); in its stead, it is no
-- key index, and dropping the key index beside it warns.
CREATE COLLATION nocase (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE words (w text);
SELECT flowpg.create_stream('word_counts', 'SELECT w, count(*) AS n FROM words GROUP BY w');
INSERT INTO words VALUES ('abc');
SELECT oracle('word_counts');
CREATE UNIQUE INDEX word_counts_nocase ON word_counts (w COLLATE nocase) NULLS NOT DISTINCT;
DROP INDEX word_counts_w_idx;
INSERT INTO words VALUES ('ABC');
SELECT try($$SELECT flowpg.wait('word_counts', '10 s')$$);
SELECT status, last_error FROM flowpg.streams WHERE name = 'public.word_counts';
CREATE UNIQUE INDEX ON word_counts (w) NULLS NOT DISTINCT;
DO $$
BEGIN
    FOR i IN 1 .. 1200 LOOP
        EXIT WHEN (SELECT last_error LIKE 'duplicate key%' FROM flowpg.streams
                    WHERE name = 'public.word_counts');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT status, last_error FROM flowpg.streams WHERE name = 'public.word_counts';
TABLE word_counts;
DROP INDEX word_counts_nocase;
DO $$
BEGIN
    FOR i IN 1 .. 1200 LOOP
        EXIT WHEN (SELECT status = 'running' FROM flowpg.streams WHERE name = 'public.word_counts');
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT oracle('word_counts');
SELECT * FROM word_counts ORDER BY w COLLATE "C";
SELECT flowpg.drop_stream('word_counts');
DROP TABLE words;
DROP COLLATION nocase;

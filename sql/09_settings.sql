-- A stream evaluates its query with the settings of the session that
-- created it (TimeZone, DateStyle, extra_float_digits, lc_time,
-- search_path, ...), whatever its worker's own defaults are: its results
-- equal its query run in that session, also after a restart under other
-- defaults.
CREATE TABLE readings_tz (ts timestamptz, v float8);
SET TimeZone = 'Asia/Kolkata';
SET DateStyle = 'SQL, DMY';
SET extra_float_digits = 0;
SELECT flowpg.create_stream('daily', $$
    SELECT date_trunc('day', ts) AS day, ts::date::text AS label, count(*) AS n,
           max(v)::text AS top
      FROM readings_tz GROUP BY 1, 2 $$);
SELECT s FROM flowpg.streams, unnest(settings) s
 WHERE name = 'public.daily' AND s ~ '^(TimeZone|DateStyle|extra_float_digits)=';
RESET TimeZone;
RESET DateStyle;
RESET extra_float_digits;

-- around midnight in Kolkata (18:30 UTC)
INSERT INTO readings_tz
    SELECT timestamptz '2026-01-01 18:00:00+00' + g * interval '10 min', g / 3.0
      FROM generate_series(0, 11) g;
SELECT flowpg.wait('daily');

-- a worker that starts again under other defaults keeps the stream's
ALTER ROLE CURRENT_USER SET TimeZone = 'America/Sao_Paulo';
ALTER ROLE CURRENT_USER SET DateStyle = 'German';
SELECT pg_terminate_backend(pid) AS restarted FROM flowpg.streams WHERE name = 'public.daily';
INSERT INTO readings_tz
    SELECT timestamptz '2026-01-02 18:00:00+00' + g * interval '10 min', g / 7.0
      FROM generate_series(0, 11) g;
SELECT flowpg.wait('daily');
ALTER ROLE CURRENT_USER RESET TimeZone;
ALTER ROLE CURRENT_USER RESET DateStyle;

-- in the creating session's settings the query run as a batch equals the
-- stream, and so does flowpg.live
SET TimeZone = 'Asia/Kolkata';
SET DateStyle = 'SQL, DMY';
SET extra_float_digits = 0;
SELECT oracle('daily');
TABLE daily ORDER BY day;
SELECT count(*) AS live_differs
  FROM ((TABLE daily EXCEPT ALL SELECT * FROM flowpg.live(NULL::daily))
        UNION ALL
        (SELECT * FROM flowpg.live(NULL::daily) EXCEPT ALL TABLE daily)) d;
RESET TimeZone;
RESET DateStyle;
RESET extra_float_digits;

-- in this session's (PST8PDT, ISO) the same query gives other days
SELECT count(*) > 0 AS differs
  FROM ((SELECT date_trunc('day', ts) AS day, ts::date::text AS label, count(*) AS n,
                max(v)::text AS top
           FROM readings_tz GROUP BY 1, 2) EXCEPT ALL TABLE daily) d;

SELECT flowpg.drop_stream('daily');
DROP TABLE readings_tz;

-- and the settings that change how values are read and written out:
-- timezone_abbreviations (IST is India's time, not Israel's),
-- array_nulls ({NULL} holds the string NULL) and quote_all_identifiers
CREATE TABLE read_src (t text);
SET timezone_abbreviations = 'India';
SET TimeZone = 'UTC';
SET array_nulls = off;
SET quote_all_identifiers = on;
SELECT flowpg.create_stream('read_as', $$
    SELECT CASE WHEN t NOT LIKE '{%' THEN t::timestamptz END AS ts,
           CASE WHEN t LIKE '{%' THEN (t::text[])[1] IS NULL END AS null_element,
           quote_ident('read_src') AS source, count(*) AS n
      FROM read_src GROUP BY 1, 2, 3 $$);
RESET timezone_abbreviations;
RESET TimeZone;
RESET array_nulls;
RESET quote_all_identifiers;
SELECT s FROM flowpg.streams, unnest(settings) s
 WHERE name = 'public.read_as'
   AND s ~ '^(timezone_abbreviations|array_nulls|quote_all_identifiers)=';
INSERT INTO read_src VALUES ('2024-01-01 12:00 IST'), ('2024-01-01 06:30 UTC'),
    ('2024-01-01 10:00 UTC'), ('{NULL}'), ('{"NULL"}');
SELECT flowpg.wait('read_as');
SET timezone_abbreviations = 'India';
SET TimeZone = 'UTC';
SET array_nulls = off;
SET quote_all_identifiers = on;
TABLE read_as ORDER BY ts, null_element;
SELECT oracle('read_as');
RESET timezone_abbreviations;
RESET TimeZone;
RESET array_nulls;
RESET quote_all_identifiers;
SELECT flowpg.drop_stream('read_as');
DROP TABLE read_src;

-- rebuilt from its source table (flowpg.rebuild_stream, and so after a
-- pg_restore or on a copy of the cluster), a stream is compiled with its
-- search_path too: a SQL function that PostgreSQL inlines, whose body
-- names a function of another schema unqualified, and an immutable
-- function that PostgreSQL evaluates once, when it compiles the query
CREATE SCHEMA flowpg_helpers;
CREATE FUNCTION flowpg_helpers.tenfold(int) RETURNS int IMMUTABLE LANGUAGE sql
    AS 'SELECT $1 * 10';
SET search_path = flowpg_helpers, public;
CREATE FUNCTION public.scaled(int) RETURNS int IMMUTABLE LANGUAGE sql
    AS 'SELECT tenfold($1) + 1';
CREATE FUNCTION public.path_seen() RETURNS text IMMUTABLE LANGUAGE plpgsql
    AS $$BEGIN RETURN current_setting('search_path'); END$$;
CREATE TABLE public.path_src (k int);
SELECT flowpg.create_stream('public.by_scaled', $$
    SELECT scaled(k) AS s, path_seen() AS p, count(*) AS n FROM path_src GROUP BY 1, 2 $$);
RESET search_path;
INSERT INTO path_src SELECT g % 3 FROM generate_series(1, 30) g;
SELECT flowpg.wait('by_scaled');
SELECT flowpg.rebuild_stream('by_scaled');
INSERT INTO path_src VALUES (5);
SELECT flowpg.wait('by_scaled');
TABLE by_scaled ORDER BY s;
SET search_path = flowpg_helpers, public;
SELECT oracle('by_scaled');
RESET search_path;
SELECT flowpg.drop_stream('by_scaled');
DROP TABLE path_src;
DROP FUNCTION scaled(int), path_seen();
DROP SCHEMA flowpg_helpers CASCADE;

-- a stream's definition is written and read back with fixed settings (as
-- pg_dump writes and reads a view): its constants mean what they meant
-- when it was created, whatever the settings of the session that created
-- it and of the process that rebuilds it.  Before, the timestamp was
-- written as '01/01/2026 00:00:00 IST' (read back as Israel's time), the
-- float as 0.3, and 'x\y' was read as 'xy' by a rebuild whose role had
-- standard_conforming_strings off.
CREATE TABLE consts (ts timestamptz, f float8, t text);
SET TimeZone = 'Asia/Kolkata';
SET DateStyle = 'SQL, DMY';
SET extra_float_digits = 0;
SELECT flowpg.create_stream('by_consts', $$
    SELECT t, count(*) FILTER (WHERE ts >= '2026-01-01 00:00+05:30') AS late,
           count(*) FILTER (WHERE f = '0.30000000000000004') AS sums,
           count(*) FILTER (WHERE t = 'x\y') AS slashed, count(*) AS n
      FROM consts GROUP BY t $$);
RESET TimeZone;
RESET DateStyle;
RESET extra_float_digits;
SELECT definition FROM flowpg.streams WHERE name = 'public.by_consts';
INSERT INTO consts
    SELECT '2026-01-01 00:00+05:30'::timestamptz + g * interval '30 min',
           0.1::float8 + 0.2::float8, CASE WHEN g % 2 = 0 THEN 'x\y' ELSE 'xy' END
      FROM generate_series(-10, 10) g;
INSERT INTO consts VALUES (NULL, 0.3, 'xy');
SELECT flowpg.wait('by_consts');
ALTER ROLE CURRENT_USER SET standard_conforming_strings = off;
SELECT flowpg.rebuild_stream('by_consts');
SELECT flowpg.wait('by_consts');
ALTER ROLE CURRENT_USER RESET standard_conforming_strings;
TABLE by_consts ORDER BY t;
SELECT oracle('by_consts');
SELECT flowpg.drop_stream('by_consts');
DROP TABLE consts;

-- whatever the owner's defaults, flowpg's processes keep the settings they
-- need: exit_on_error off (an error became FATAL, which skipped its
-- report: the stream restarted in a loop and flowpg.wait timed out, with
-- no error shown), synchronous_commit local (a forced checkpoint waited
-- forever for a synchronous standby that was not there),
-- session_replication_role origin (the result table's triggers did not
-- fire)
SET synchronous_commit = local;
ALTER SYSTEM SET synchronous_standby_names = 'nowhere';
SELECT pg_reload_conf();
SELECT pg_sleep(1);
ALTER ROLE CURRENT_USER SET exit_on_error = on;
ALTER ROLE CURRENT_USER SET session_replication_role = replica;
CREATE TABLE set_src (k int, v int);
CREATE TABLE set_log (k int);
SELECT flowpg.create_stream('set_sums', 'SELECT k, sum(10 / v) AS s FROM set_src GROUP BY k');
CREATE FUNCTION set_logged() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO set_log VALUES (NEW.k);
    RETURN NULL;
END $$;
CREATE TRIGGER set_logged AFTER INSERT ON set_sums
    FOR EACH ROW EXECUTE FUNCTION set_logged();
INSERT INTO set_src VALUES (1, 5);
SELECT flowpg.checkpoint('set_sums') > 0 AS checkpointed;
TABLE set_sums;
TABLE set_log;
INSERT INTO set_src VALUES (2, 0);
SELECT flowpg.wait('set_sums');
ALTER ROLE CURRENT_USER RESET exit_on_error;
ALTER ROLE CURRENT_USER RESET session_replication_role;
ALTER SYSTEM RESET synchronous_standby_names;
SELECT pg_reload_conf();
RESET synchronous_commit;
SELECT flowpg.drop_stream('set_sums');
DROP TABLE set_src, set_log;
DROP FUNCTION set_logged();

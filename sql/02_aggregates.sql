-- Aggregates: built-in and user-defined, with combine functions; keys of
-- many types, NULL keys, FILTER, and expressions over keys and aggregates.
-- Each stream is checked against its query run as a batch.
CREATE TABLE m (
    k text, i int, b bigint, s smallint, n numeric, f float8, r real,
    ok bool, bits int, ts timestamptz, d interval, c text COLLATE "C"
);
CREATE AGGREGATE my_sum (int) (
    sfunc = int4pl, stype = int, combinefunc = int4pl, initcond = '0'
);

SELECT flowpg.create_stream('ints', $$
    SELECT k, count(*) AS c, count(i) AS ci, sum(i) AS si, sum(b) AS sb,
           sum(s) AS ss, sum(n) AS sn, avg(i) AS ai, avg(b) AS ab, avg(s) AS avs,
           avg(n) AS an, min(i) AS mi, max(b) AS mb, min(n) AS mn, max(n) AS xn,
           my_sum(i) AS mysum
      FROM m GROUP BY k $$);
SELECT flowpg.create_stream('floats', $$
    SELECT i % 3 AS bucket, sum(f) AS sf, avg(f) AS af, sum(r) AS sr, avg(r) AS ar,
           min(f) AS mf, max(r) AS mr,
           round(stddev(f)::numeric, 9) AS sdf, round(var_pop(f)::numeric, 9) AS vpf,
           round(corr(f, i)::numeric, 9) AS cor, round(regr_slope(f, i)::numeric, 9) AS slope,
           round(covar_samp(f, i)::numeric, 9) AS cov
      FROM m GROUP BY i % 3 $$);
SELECT flowpg.create_stream('stats', $$
    SELECT lower(k) AS lk, stddev(n) AS sdn, stddev_pop(i) AS sdpi,
           stddev_samp(b) AS sdsb, variance(n) AS vn, var_pop(b) AS vpb,
           var_samp(i) AS vsi
      FROM m GROUP BY lower(k) $$);
SELECT flowpg.create_stream('logic', $$
    SELECT ok, bool_and(i > 0) AS all_pos, bool_or(i > 50) AS any_big,
           every(n IS NOT NULL) AS all_n, bit_and(bits) AS band, bit_or(bits) AS bor,
           bit_xor(bits) AS bxor
      FROM m GROUP BY ok $$);
SELECT flowpg.create_stream('misc', $$
    SELECT k, i % 2 AS odd,
           count(*) FILTER (WHERE ok) AS ok_rows,
           sum(n) FILTER (WHERE n > 10) AS big_sum,
           max(c) AS max_c, min(ts) AS first_ts, max(ts) AS last_ts,
           sum(d) AS total_d, avg(d) AS avg_d,
           sum(i) * 2 + count(*) AS formula, k || '/' || (i % 2) AS label,
           round(avg(n), 2) AS avg_n2
      FROM m WHERE k IS DISTINCT FROM 'skip' GROUP BY k, i % 2 $$);
SELECT flowpg.create_stream('global', $$
    SELECT count(*) AS c, sum(n) AS sn, max(c) AS mc, avg(i) AS ai FROM m $$);
TABLE global;

INSERT INTO m
SELECT (ARRAY['a', 'B', 'b', NULL, 'skip'])[1 + g % 5],
       CASE WHEN g % 11 = 0 THEN NULL ELSE g - 40 END,
       g * 1000000000::bigint, (g % 300)::smallint,
       CASE WHEN g % 13 = 0 THEN NULL ELSE g / 7.0 END,
       g * 0.25, (g % 17) * 0.5, g % 4 <> 0, g * 37 % 1024,
       '2026-01-01'::timestamptz + g * interval '1 hour',
       g * interval '90 seconds', chr(65 + g % 26)
  FROM generate_series(1, 400) g;
INSERT INTO m (k) VALUES ('a'), (NULL);
INSERT INTO m (k, i, n, c) VALUES ('B', 5, 1e20, 'zz'), ('b', -5, -1e-20, '');

SELECT oracle('ints');
SELECT oracle('floats');
SELECT oracle('stats');
SELECT oracle('logic');
SELECT oracle('misc');
SELECT oracle('global');
TABLE global;
SELECT k, c, si, sn, mysum FROM ints ORDER BY k;

-- more rows into the same keys, in several transactions
INSERT INTO m (k, i, b, n, f, ok, bits) SELECT 'a', g, g, g, g, true, g FROM generate_series(1, 50) g;
INSERT INTO m (k, i, b, n, f, ok, bits) SELECT 'b', -g, -g, -g, -g, false, g FROM generate_series(1, 50) g;
SELECT oracle('ints');
SELECT oracle('floats');
SELECT oracle('stats');
SELECT oracle('logic');
SELECT oracle('misc');
SELECT oracle('global');

-- keys equal for GROUP BY but not byte for byte make one group
CREATE TABLE amounts (amount numeric, label text COLLATE "C");
SELECT flowpg.create_stream('by_amount', 'SELECT amount, count(*) AS n FROM amounts GROUP BY amount');
INSERT INTO amounts VALUES (1.0, 'a'), (1.00, 'b'), (1, 'c'), (-0.0, 'd'), (0, 'e'), (NULL, 'f');
INSERT INTO amounts VALUES (1.000, 'g');
SELECT oracle('by_amount');
SELECT n FROM by_amount ORDER BY amount;
SELECT flowpg.drop_stream('by_amount');
DROP TABLE amounts;

-- values stored out of line (TOAST), as keys and as aggregate arguments:
-- random text does not compress, so these rows carry TOAST pointers that
-- decoding resolves before the operators see them
CREATE TABLE docs (tag text, body text);
SELECT flowpg.create_stream('by_tag', $$
    SELECT tag, count(*) AS n, sum(length(body)) AS len, max(body) AS top
      FROM docs GROUP BY tag $$);
INSERT INTO docs
SELECT CASE WHEN g % 2 = 0 THEN 'short'
            ELSE (SELECT string_agg(md5(h::text), '') FROM generate_series(1, 40) h) END,
       (SELECT string_agg(md5(random()::text || g || h), '') FROM generate_series(1, 200) h)
  FROM generate_series(1, 20) g;
SELECT count(*) AS out_of_line FROM docs WHERE pg_column_size(body) > 4000;
SELECT oracle('by_tag');
SELECT length(tag), n, len FROM by_tag ORDER BY 1;
SELECT flowpg.drop_stream('by_tag');
DROP TABLE docs;

-- one by-value key, compared and hashed by its bits: smallint, bigint,
-- date and boolean keys, negative ones, NULL, and an int key made by a
-- function whose result is not sign-extended (hashtext), met again after
-- its state was stored
CREATE TABLE bv (t text, s smallint, b bigint, d date, ok bool, v int);
SELECT flowpg.create_stream('by_hash', 'SELECT hashtext(t) AS h, count(*) AS n, sum(v) AS sv FROM bv GROUP BY hashtext(t)');
SELECT flowpg.create_stream('by_small', 'SELECT s, count(*) AS n, sum(v) AS sv FROM bv GROUP BY s');
SELECT flowpg.create_stream('by_big', 'SELECT b, count(*) AS n, sum(v) AS sv FROM bv GROUP BY b');
SELECT flowpg.create_stream('by_day', 'SELECT d, count(*) AS n FROM bv GROUP BY d');
SELECT flowpg.create_stream('by_ok', 'SELECT ok, count(*) AS n FROM bv GROUP BY ok');
INSERT INTO bv SELECT 'k' || g % 50, (g % 7 - 3)::smallint, (g % 9 - 4) * 4000000000,
                      '2026-01-01'::date + (g % 5 - 2), NULLIF(g % 3, 2) = 1, g
  FROM generate_series(1, 500) g;
INSERT INTO bv (t, v) VALUES (NULL, 1);
-- bigint keys whose low 32 bits are the same, or 0 without being 0 (the
-- index compares such keys by their hash and low bits)
INSERT INTO bv (b, v) SELECT b, 1 FROM unnest(ARRAY[1, 4294967297, 8589934593, 4294967296, -4294967296, 0]) b;
SELECT flowpg.wait(name) FROM flowpg.streams WHERE source = 'bv'::regclass;
INSERT INTO bv SELECT 'k' || g % 50, (g % 7 - 3)::smallint, (g % 9 - 4) * 4000000000,
                      '2026-01-01'::date + (g % 5 - 2), NULLIF(g % 3, 2) = 1, g
  FROM generate_series(1, 500) g;
INSERT INTO bv (b, v) SELECT b, 2 FROM unnest(ARRAY[4294967297, 0, -4294967296, 4294967296, 1, 8589934593]) b;
SELECT oracle('by_hash');
SELECT count(*) FILTER (WHERE h < 0) > 0 AS negative_keys FROM by_hash;
SELECT oracle('by_small');
SELECT oracle('by_big');
SELECT oracle('by_day');
SELECT oracle('by_ok');
SELECT flowpg.drop_stream(name) FROM flowpg.streams WHERE source = 'bv'::regclass;
DROP TABLE bv;

-- functions written in SQL and PL/pgSQL: in WHERE and GROUP BY, and as
-- the transition, combine and final functions of user-defined aggregates,
-- in a plan with internal states (sum of numeric: the batch is combined
-- into the state) and in one without
CREATE FUNCTION twice(int) RETURNS int IMMUTABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN $1 * 2; END';
CREATE FUNCTION add_sql(int, int) RETURNS int IMMUTABLE LANGUAGE sql
    AS 'SELECT $1 + $2';
CREATE FUNCTION add_pl(numeric, numeric) RETURNS numeric IMMUTABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN coalesce($1, 0) + coalesce($2, 0); END';
CREATE FUNCTION half_pl(numeric) RETURNS numeric IMMUTABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN $1 / 2; END';
CREATE AGGREGATE sql_sum (int) (
    sfunc = add_sql, stype = int, combinefunc = add_sql, initcond = '0'
);
CREATE AGGREGATE pl_half_sum (numeric) (
    sfunc = add_pl, stype = numeric, combinefunc = add_pl, finalfunc = half_pl
);
CREATE FUNCTION positive_pl(int) RETURNS bool IMMUTABLE LANGUAGE plpgsql
    AS 'BEGIN RETURN (SELECT $1 > 0); END';
CREATE DOMAIN positive AS int CHECK (positive_pl(VALUE));
CREATE TABLE pm (k text, i int, n numeric);
SELECT flowpg.create_stream('pl_domain', $$
    SELECT k, sum(i::positive) AS s FROM pm WHERE i > 0 GROUP BY k $$);
SELECT flowpg.create_stream('pl_internal', $$
    SELECT twice(i % 4) AS t, sql_sum(i) AS ss, pl_half_sum(n) AS phs, sum(n) AS sn
      FROM pm WHERE twice(i) > 0 GROUP BY twice(i % 4) $$);
SELECT flowpg.create_stream('pl_direct', $$
    SELECT k || '!' AS k, sql_sum(i) AS ss, pl_half_sum(n) AS phs FROM pm GROUP BY k || '!' $$);
INSERT INTO pm SELECT 'pl' || g % 3, g, g / 3.0 FROM generate_series(1, 300) g;
INSERT INTO pm SELECT 'pl', g, NULL FROM generate_series(-5, 10) g;
SELECT oracle('pl_internal');
SELECT oracle('pl_direct');
SELECT oracle('pl_domain');
SELECT * FROM pl_internal ORDER BY t;
SELECT flowpg.drop_stream('pl_internal');
SELECT flowpg.drop_stream('pl_direct');
SELECT flowpg.drop_stream('pl_domain');
DROP TABLE pm;
DROP DOMAIN positive;
DROP FUNCTION positive_pl(int);
DROP AGGREGATE sql_sum(int);
DROP AGGREGATE pl_half_sum(numeric);
DROP FUNCTION twice(int), add_sql(int, int), add_pl(numeric, numeric), half_pl(numeric);

-- a strict transition function with no initial value: the first row
-- becomes the state; once the function returns NULL, the state stays
-- NULL (a strict function is not called with it).  Stored, that NULL
-- looked like "no row yet", and the next transaction's row became the
-- state again (30 here, where the batch has NULL).  (In a plan with
-- internal states, partial states are combined, and combining skips NULL
-- ones, as PostgreSQL's parallel aggregation does: see README.)
CREATE FUNCTION same_int(int, int) RETURNS int STRICT IMMUTABLE LANGUAGE sql
    AS 'SELECT CASE WHEN $1 = $2 THEN $1 END';
CREATE AGGREGATE same_value (int) (sfunc = same_int, stype = int, combinefunc = same_int);
CREATE TABLE sv (k int, v int, n int8);
SELECT flowpg.create_stream('sv_direct', 'SELECT k, same_value(v) AS s FROM sv GROUP BY k');
-- ... and a combined state is without a value until a partial state has
-- one: sum(int4) of a key's first rows, all NULL, is NULL (its transition
-- function returned it), and the key's sum stayed NULL for good when that
-- was taken for a NULL to keep
SELECT flowpg.create_stream('sv_internal', 'SELECT k, sum(v) AS s, sum(v::int2) AS s2, avg(n) AS n FROM sv GROUP BY k');
INSERT INTO sv VALUES (1, 10, 1), (1, 20, 1), (2, 5, 1), (4, NULL, 1);
SELECT oracle('sv_direct');
SELECT oracle('sv_internal');
INSERT INTO sv VALUES (1, 30, 1), (2, 5, 1), (3, 7, 1), (4, NULL, 2);
SELECT oracle('sv_direct');
SELECT oracle('sv_internal');
SELECT pg_terminate_backend(pid) AS restarted FROM flowpg.streams WHERE name IN ('public.sv_direct', 'public.sv_internal');
INSERT INTO sv VALUES (1, 40, 1), (3, 7, 1), (4, 8, 3);
SELECT oracle('sv_direct');
SELECT oracle('sv_internal');
SELECT * FROM sv_direct ORDER BY k;
SELECT * FROM flowpg.live(NULL::sv_internal) ORDER BY k;
SELECT flowpg.drop_stream('sv_direct');
SELECT flowpg.drop_stream('sv_internal');
DROP TABLE sv;
DROP AGGREGATE same_value(int);
DROP FUNCTION same_int(int, int);

SELECT flowpg.drop_stream(name) FROM flowpg.streams WHERE source = 'm'::regclass;
DROP TABLE m;
DROP AGGREGATE my_sum(int);

-- every aggregate of PostgreSQL's with a combine function, each once,
-- read from the catalog: over a column of its argument type (a second
-- double precision argument takes a real column), NULLs included; the
-- aggregates with internal states in one stream (partial states
-- serialized and combined), the others in another (transition values
-- advanced in place): both equal the batch, across batches, checkpoints
-- and restarts.  Results in floating point are compared as real: the
-- batch scan reads some narrow rows of the later INSERTs where the first
-- left room, before rows inserted earlier, and float arithmetic depends
-- on the order (see README, "Floating point")
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE every_agg (
    g int, i2 int2, i4 int4, i8 int8, o oid, f4 real, f8 float8, n numeric,
    d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
    m money, tx text, ch char(3), arr int[], ti tid, e mood, ip inet,
    lsn pg_lsn, x8 xid8, b bool, bt bit(8), r int4range, mr int4multirange
);
CREATE TABLE every_agg_col (t regtype PRIMARY KEY, col name);
INSERT INTO every_agg_col VALUES
    ('int2', 'i2'), ('int4', 'i4'), ('int8', 'i8'), ('oid', 'o'), ('float4', 'f4'),
    ('float8', 'f8'), ('numeric', 'n'), ('date', 'd'), ('time', 'tm'), ('timetz', 'ttz'),
    ('timestamp', 'ts'), ('timestamptz', 'tstz'), ('interval', 'iv'), ('money', 'm'),
    ('text', 'tx'), ('bpchar', 'ch'), ('anyarray', 'arr'), ('tid', 'ti'), ('anyenum', 'e'),
    ('inet', 'ip'), ('pg_lsn', 'lsn'), ('xid8', 'x8'), ('bool', 'b'), ('bit', 'bt'),
    ('anyrange', 'r'), ('anymultirange', 'mr'), ('"any"', 'tx');
CREATE FUNCTION every_agg_query(internal_states bool) RETURNS text LANGUAGE sql AS $$
    SELECT 'SELECT g, ' || string_agg(format('%s AS a%s', call, i), ', ' ORDER BY i)
           || ' FROM every_agg GROUP BY g'
      FROM (SELECT row_number() OVER (ORDER BY a.aggfnoid) AS i,
                   format(CASE WHEN p.prorettype IN ('float4'::regtype, 'float8'::regtype)
                               THEN '%I.%I(%s)::float4' ELSE '%I.%I(%s)' END,
                          pn.nspname, p.proname,
                          CASE WHEN p.pronargs = 0 THEN '*'
                               ELSE (SELECT string_agg(CASE WHEN x.i = 2 AND x.t = 'float8'::regtype
                                                            THEN 'f4' ELSE c.col END, ', ' ORDER BY x.i)
                                       FROM unnest(p.proargtypes::regtype[]) WITH ORDINALITY x(t, i)
                                       LEFT JOIN every_agg_col c ON c.t = x.t) END) AS call
              FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid
              JOIN pg_namespace pn ON pn.oid = p.pronamespace
             WHERE a.aggkind = 'n' AND a.aggcombinefn <> 0 AND pn.nspname = 'pg_catalog'
               AND (a.aggtranstype = 'internal'::regtype) = internal_states) calls $$;
-- every argument type has its column
SELECT DISTINCT t FROM pg_aggregate a JOIN pg_proc p ON p.oid = a.aggfnoid,
       unnest(p.proargtypes::regtype[]) t
 WHERE a.aggkind = 'n' AND a.aggcombinefn <> 0
   AND t NOT IN (SELECT t FROM every_agg_col);
SELECT flowpg.create_stream('every_direct', every_agg_query(false));
SELECT flowpg.create_stream('every_internal', every_agg_query(true));
-- the number of aggregates each stream computes
SELECT result, (SELECT count(*) - 1 FROM pg_attribute
                 WHERE attrelid = result AND attnum > 0 AND NOT attisdropped) AS aggregates
  FROM flowpg.streams WHERE name LIKE 'public.every_%' ORDER BY 1;
INSERT INTO every_agg
SELECT g % 5,
       nullif(g * 7 % 2001 - 1000, 0), nullif(g * 7919 % 2000001 - 1000000, 3),
       (g * 104729)::int8 * 1000003 % 9000000000000000, (g * 2654435761 % 4294967296)::oid,
       nullif(g * 13 % 400, 7) / 4.0, (g * 31 % 40001 - 20000) / 8.0,
       nullif(round((g * 1.618034)::numeric, g % 6), 5),
       '2020-01-01'::date + g * 37 % 3000, '00:00'::time + g * interval '97 s',
       ('00:00'::time + g * interval '131 s')::timetz,
       '2020-01-01'::timestamp + g * interval '7 h 3 min',
       '2020-01-01'::timestamptz + g * interval '5 h 1 s',
       g * interval '3 h 7 min' - interval '20 days', (g * 1.37)::numeric(10, 2)::money,
       nullif(md5(g::text), md5('11')), substr(md5(g::text), 1, g % 4)::char(3),
       CASE WHEN g % 9 <> 0 THEN ARRAY[g % 10, g * 3 % 10] END,
       format('(%s,%s)', g * 17 % 1000, g % 100)::tid,
       (ARRAY['sad', 'ok', 'happy', NULL])[1 + g % 4]::mood,
       format('10.%s.%s.0/%s', g % 255, g * 3 % 255, 16 + g % 16)::inet,
       format('%s/%s', to_hex(g % 100), to_hex(g * 7919 % 100000000))::pg_lsn,
       (g * 104729 % 1000000000000)::text::xid8,
       CASE WHEN g % 7 <> 0 THEN g % 10 <> 0 END, (g * 37 % 256)::bit(8),
       int4range(-(g * 3 % 1000), g * 7 % 1000 + 1000),
       int4multirange(int4range(-(g * 11 % 1000), g * 13 % 1000 + 1000))
  FROM generate_series(1, 400) g;
SELECT oracle('every_direct');
SELECT oracle('every_internal');
-- the workers start again from their last checkpoint (the states read
-- back from flowpg.state), then more rows into the same keys, in several
-- transactions
SELECT count(pg_terminate_backend(pid)) AS restarted
  FROM flowpg.streams WHERE name LIKE 'public.every_%';
INSERT INTO every_agg (g, i2, i4, i8, f4, f8, n, b, bt, tx, e)
SELECT g % 5, g, -g, g, g, -g / 4.0, g / 3.0, g % 3 = 0, g::bit(8), 'x' || g, 'happy'
  FROM generate_series(1, 50) g;
INSERT INTO every_agg (g) VALUES (1), (NULL);
SELECT oracle('every_direct');
SELECT oracle('every_internal');
SELECT flowpg.drop_stream('every_direct');
SELECT flowpg.drop_stream('every_internal');
DROP TABLE every_agg, every_agg_col;
DROP FUNCTION every_agg_query(bool);
DROP TYPE mood;

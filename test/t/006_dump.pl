# pg_dump and pg_restore of a database with streams: the definitions come
# back (flowpg.stream is an extension configuration table), each restored
# stream is rebuilt from its source table's rows and runs again, and its
# results are exact: its query over every row of the restored source.
# Both a custom-format dump restored with pg_restore --jobs 2 and a plain
# SQL dump fed to psql; the original database keeps running meanwhile.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $node = new_node('dump');
$node->safe_psql('postgres', q{
	CREATE ROLE flowpg_dana LOGIN;
	CREATE SCHEMA app;
	CREATE TABLE app.clicks (id bigserial, campaign int, cost numeric, note text);
	GRANT USAGE ON SCHEMA app TO flowpg_dana;
	GRANT SELECT, INSERT ON app.clicks TO flowpg_dana;
	GRANT USAGE, CREATE ON SCHEMA public TO flowpg_dana;
});
my %streams = (
	'app.spend' => q{SELECT campaign, count(*) AS clicks, sum(cost) AS spend,
	                        avg(cost) AS avg_cost
	                   FROM app.clicks WHERE cost > 0 GROUP BY campaign},
	'public.total' => q{SELECT count(*) AS n, max(id) AS last_id FROM app.clicks},
);
# created with a search_path that a restore does not have; one owned by
# an ordinary role
$node->safe_psql('postgres', q{
	SET search_path = app;
	SELECT flowpg.create_stream('spend', 'SELECT campaign, count(*) AS clicks, sum(cost) AS spend, avg(cost) AS avg_cost FROM clicks WHERE cost > 0 GROUP BY campaign');
});
$node->safe_psql('postgres', q{
	SET ROLE flowpg_dana;
	SELECT flowpg.create_stream('public.total', 'SELECT count(*) AS n, max(id) AS last_id FROM app.clicks');
});

my $dir = PostgreSQL::Test::Utils::tempdir;
my @scripts = write_scripts($dir,
	'single.sql@10' => q{\set c random(1, 40)
INSERT INTO app.clicks (campaign, cost) VALUES (:c, :c % 5);
},
	'multi.sql@2' => q{INSERT INTO app.clicks (campaign, cost, note)
SELECT g % 30, g % 4, 'multi' FROM generate_series(1, 50) g;
});
my $load = start_load($node, 5, 2, @scripts);
sleep 2;
$node->safe_psql('postgres', "SELECT flowpg.savepoint('app.spend', 'kept')");
stop_load($load);
oracle_ok($node, $_, $streams{$_}, 'before the dump') for sort keys %streams;

# A custom-format dump taken while writes go on, restored with two jobs.
my $dump = "$dir/db.dump";
$load = start_load($node, 4, 1, @scripts);
sleep 1;
command_ok([ 'pg_dump', '-h', $node->host, '-p', $node->port, '-Fc',
	'-f', $dump, 'postgres' ], 'pg_dump of a database with running streams');
stop_load($load);
$node->safe_psql('postgres', 'CREATE DATABASE restored');
command_ok([ 'pg_restore', '-h', $node->host, '-p', $node->port,
	'--jobs', '2', '-d', 'restored', $dump ], 'pg_restore --jobs 2');

is($node->safe_psql('restored',
	"SELECT string_agg(name || ' ' || owner, ', ' ORDER BY name) FROM flowpg.streams"),
	'app.spend postgres, public.total flowpg_dana',
	'the stream definitions and owners came back');
oracle_ok($node, $_, $streams{$_}, 'restored with pg_restore', 'restored')
  for sort keys %streams;
is($node->safe_psql('restored',
	"SELECT count(*) FROM flowpg.streams WHERE status = 'running'"), 2,
	'the restored streams run');
is($node->safe_psql('restored', 'SELECT count(*) FROM flowpg.savepoints'), 0,
	'savepoints do not come back (they keep WAL of the old database)');
# a restored stream runs as its owner: without the owner's SELECT on the
# source it stops, until the privilege is back
$node->safe_psql('restored', q{
	REVOKE SELECT ON app.clicks FROM flowpg_dana;
	INSERT INTO app.clicks (campaign, cost) VALUES (1, 1);
});
ok($node->poll_query_until('restored', q{SELECT last_error LIKE '%permission denied for table clicks%'
	FROM flowpg.streams WHERE name = 'public.total'}),
	'a restored stream runs as its owner');
$node->safe_psql('restored', 'GRANT SELECT ON app.clicks TO flowpg_dana');

# the restored streams go on with new rows, and so do the original ones
$load = start_load($node, 3, 2, @scripts);
$node->safe_psql('restored', q{INSERT INTO app.clicks (campaign, cost)
	SELECT g % 17, g % 3 FROM generate_series(1, 2000) g});
stop_load($load);
oracle_ok($node, $_, $streams{$_}, 'restored streams after more rows', 'restored')
  for sort keys %streams;
oracle_ok($node, $_, $streams{$_}, 'the original database meanwhile')
  for sort keys %streams;

# pg_restore --no-owner: the restoring role owns the tables, and so the
# streams (the dumped owner's oid means nothing, on another server the
# role may not exist at all)
$node->safe_psql('postgres', 'CREATE DATABASE noowner');
command_ok([ 'pg_restore', '-h', $node->host, '-p', $node->port,
	'--no-owner', '-d', 'noowner', $dump ], 'pg_restore --no-owner');
is($node->safe_psql('noowner',
	"SELECT string_agg(name || ' ' || owner, ', ' ORDER BY name) FROM flowpg.streams"),
	'app.spend postgres, public.total postgres',
	'with --no-owner the restoring role owns the restored streams');
oracle_ok($node, $_, $streams{$_}, 'restored with --no-owner', 'noowner')
  for sort keys %streams;
$node->safe_psql('noowner', 'DROP EXTENSION flowpg CASCADE');
$node->safe_psql('postgres', 'DROP DATABASE noowner WITH (FORCE)');

# pg_restore --clean --single-transaction over the database with running
# streams: it drops flowpg (and with it the result tables) and creates it
# again in one transaction.  The old streams' workers and slots must go
# (they kept running on the dropped tables, and the restored streams were
# never rebuilt), and the restored ones be rebuilt from the restored rows.
my $before = $node->safe_psql('restored', q{SELECT string_agg(pid::text, ',')
	FROM pg_stat_activity WHERE backend_type = 'flowpg worker' AND datname = 'restored'});
command_ok([ 'pg_restore', '-h', $node->host, '-p', $node->port, '--clean',
	'--if-exists', '--single-transaction', '-d', 'restored', $dump ],
	'pg_restore --clean --single-transaction over running streams');
oracle_ok($node, $_, $streams{$_}, 'restored again over itself', 'restored')
  for sort keys %streams;
is($node->safe_psql('restored', qq{
	SELECT count(*) FILTER (WHERE pid <> ALL ('{$before}'::int[])) || '/' || count(*)
	       || '/' || (SELECT count(*) FROM pg_replication_slots WHERE database = 'restored')
	  FROM pg_stat_activity
	 WHERE backend_type = 'flowpg worker' AND datname = 'restored'}),
	'2/2/2', 'the old workers are gone: two new ones, two slots');

# A plain SQL dump fed to psql, with a crash right after it: the streams
# still come back (flowpg.wait starts their rebuild again if need be).
my $plain = "$dir/db.sql";
command_ok([ 'pg_dump', '-h', $node->host, '-p', $node->port, '-Fp',
	'-f', $plain, 'postgres' ], 'plain pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE fromsql');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', 'fromsql',
	'-f', $plain ], 'the plain dump loads with psql');
crash_restart($node);
oracle_ok($node, $_, $streams{$_}, 'loaded with psql, then kill -9', 'fromsql')
  for sort keys %streams;

# DROP DATABASE stops the database's streams, whose workers are sessions
# in it and whose slots are active (PostgreSQL refused the drop while they
# ran: "used by an active logical replication slot"), as PostgreSQL stops
# autovacuum's workers there, and drops their slots.  A drop that fails
# for another reason (another session is in the database) leaves them
# running, exactly.
# (not for a drop PostgreSQL refuses at once, which restarted them all)
my $restarts = $node->safe_psql('fromsql', 'SELECT sum(restarts) FROM flowpg.streams');
my ($drc, $dout, $derr) = $node->psql('postgres', 'BEGIN; DROP DATABASE fromsql');
like($derr, qr/DROP DATABASE cannot run inside a transaction block/,
	'DROP DATABASE in a transaction block is refused');
($drc, $dout, $derr) = $node->psql('fromsql', 'DROP DATABASE fromsql');
like($derr, qr/cannot drop the currently open database/, '... and in the database itself');
is($node->safe_psql('fromsql', 'SELECT sum(restarts) FROM flowpg.streams'), $restarts,
	'... and neither stops its streams');
my $visitor = $node->background_psql('fromsql');
$visitor->query_safe('SELECT 1');
($drc, $dout, $derr) = $node->psql('postgres', 'DROP DATABASE fromsql');
like($derr, qr/database "fromsql" is being accessed by other users/,
	'DROP DATABASE with another session in it fails as without streams');
$visitor->quit;
$node->safe_psql('fromsql', q{INSERT INTO app.clicks (campaign, cost)
	SELECT g % 7, 2 FROM generate_series(1, 300) g});
oracle_ok($node, $_, $streams{$_}, 'after a DROP DATABASE that failed', 'fromsql')
  for sort keys %streams;
my $fromsql_oid = $node->safe_psql('postgres', q{SELECT oid FROM pg_database WHERE datname = 'fromsql'});
($drc, $dout, $derr) = $node->psql('postgres', 'DROP DATABASE fromsql');
is($drc, 0, 'DROP DATABASE of a database whose streams run');
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 0 FROM pg_replication_origin
	WHERE roname LIKE 'flowpg\\_${fromsql_oid}\\_%'}),
	'its streams\' replication origins are dropped');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_replication_slots
	WHERE slot_name LIKE 'flowpg%' AND database IS DISTINCT FROM 'postgres'
	  AND database IS DISTINCT FROM 'restored'}), 0, 'its slots are gone');
$node->safe_psql('restored', q{INSERT INTO app.clicks (campaign, cost)
	SELECT g % 7, 1 FROM generate_series(1, 500) g});
oracle_ok($node, $_, $streams{$_}, 'after another database was dropped', 'restored')
  for sort keys %streams;
$node->safe_psql('postgres', q{SELECT flowpg.create_stream('after_drop',
	'SELECT campaign, count(*) AS n FROM app.clicks GROUP BY campaign')});
$node->safe_psql('postgres', 'INSERT INTO app.clicks (campaign, cost) VALUES (1, 1)');
wait_stream($node, 'after_drop');
pass('a new stream starts after another database was dropped');

# Renames: the source table, its schema, a column and a function the
# query uses are renamed after the stream was created.  The stream runs on,
# its definition (what the dump carries) names them as they are now, and
# the restored stream is rebuilt from it.
$node->safe_psql('postgres', q{
	CREATE SCHEMA shop;
	CREATE TABLE shop.orders (id bigserial, item int, qty int);
	CREATE FUNCTION shop.weight(q int) RETURNS int LANGUAGE plpgsql IMMUTABLE
	    AS $$ BEGIN RETURN q * 2; END $$;
	SELECT flowpg.create_stream('public.order_totals',
	    'SELECT item, count(*) AS n, sum(shop.weight(qty)) AS weight FROM shop.orders GROUP BY item');
	INSERT INTO shop.orders (item, qty) SELECT g % 9, g FROM generate_series(1, 300) g;
	ALTER TABLE shop.orders RENAME TO purchases;
	ALTER TABLE shop.purchases RENAME COLUMN qty TO quantity;
	ALTER FUNCTION shop.weight(int) RENAME TO heft;
	ALTER SCHEMA shop RENAME TO store;
	INSERT INTO store.purchases (item, quantity) SELECT g % 11, g FROM generate_series(1, 300) g;
});
my $renamed = q{SELECT item, count(*) AS n, sum(store.heft(quantity)) AS weight
                  FROM store.purchases GROUP BY item};
oracle_ok($node, 'order_totals', $renamed, 'after renames');
like($node->safe_psql('postgres',
	"SELECT definition FROM flowpg.streams WHERE name = 'public.order_totals'"),
	qr/store\.heft\(quantity\).*FROM store\.purchases/s,
	'the definition names the renamed objects');
command_ok([ 'pg_dump', '-h', $node->host, '-p', $node->port, '-Fc',
	'-f', "$dir/renamed.dump", 'postgres' ], 'pg_dump after renames');
$node->safe_psql('postgres', 'CREATE DATABASE renamed');
command_ok([ 'pg_restore', '-h', $node->host, '-p', $node->port,
	'-d', 'renamed', "$dir/renamed.dump" ], 'pg_restore after renames');
oracle_ok($node, 'order_totals', $renamed, 'restored after renames', 'renamed');
$node->safe_psql('renamed', q{INSERT INTO store.purchases (item, quantity)
	SELECT g % 5, g FROM generate_series(1, 100) g});
oracle_ok($node, 'order_totals', $renamed, 'restored after renames, more rows', 'renamed');

# A rebuild that fails says why, and is tried again: a stream row loaded by
# hand (as a restore does) whose owner may not read the source yet.
$node->safe_psql('postgres', q{
	CREATE ROLE flowpg_erin LOGIN;
	CREATE DATABASE byhand;
	CREATE DATABASE dropped;
});
my $byhand = q{
	CREATE EXTENSION flowpg;
	CREATE TABLE src (k int);
	INSERT INTO src SELECT g % 5 FROM generate_series(1, 100) g;
	CREATE TABLE res (k int, n bigint);
	CREATE UNIQUE INDEX ON res (k) NULLS NOT DISTINCT;
	ALTER TABLE res OWNER TO flowpg_erin;
	INSERT INTO flowpg.stream (id, name, result, source, owner, query, definition, plan)
	VALUES (1, 'public.res', 'res', 'src', 0,
	        'SELECT k, count(*) AS n FROM src GROUP BY k',
	        'SELECT k, count(*) AS n FROM public.src GROUP BY k', '');
};
$node->safe_psql($_, $byhand) for qw(byhand dropped);
is($node->safe_psql('byhand', 'SELECT owner FROM flowpg.streams'), 'flowpg_erin',
	'a stream inserted by hand belongs to the owner of its result table');
ok($node->poll_query_until('byhand', q{SELECT status = 'failed'
	AND last_error = 'permission denied for table src' FROM flowpg.streams}),
	'a rebuild that fails shows as failed, with its error');
my ($wrc, $wout, $werr) = $node->psql('byhand', "SELECT flowpg.wait('res', '120 s')");
like($werr, qr/stream "public.res" could not be rebuilt from its source table.*permission denied for table src/s,
	'flowpg.wait says why the rebuild failed');
$node->safe_psql('byhand', 'GRANT SELECT ON src TO flowpg_erin');
ok($node->poll_query_until('byhand',
	q{SELECT status = 'running' FROM flowpg.streams}),
	'once the cause is fixed, the rebuild is tried again by itself');
$node->safe_psql('byhand', 'INSERT INTO src VALUES (1), (8)');
oracle_ok($node, 'res', 'SELECT k, count(*) AS n FROM src GROUP BY k',
	'rebuilt after a failure', 'byhand');

# A restored stream not rebuilt yet when the server stops is found again
# when it starts (each database is scanned for such streams): nothing
# needs to call flowpg.wait on it.
$node->safe_psql('postgres', 'CREATE DATABASE aftercrash');
$node->safe_psql('aftercrash', $byhand);
$node->poll_query_until('aftercrash', q{SELECT status = 'failed' FROM flowpg.streams})
  or die 'the rebuild in database aftercrash did not fail';
crash_restart($node);
$node->safe_psql('aftercrash', 'GRANT SELECT ON src TO flowpg_erin');
ok($node->poll_query_until('aftercrash',
	q{SELECT status = 'running' FROM flowpg.streams}),
	'after kill -9, a restored stream not rebuilt yet is rebuilt by itself');
oracle_ok($node, 'res', 'SELECT k, count(*) AS n FROM src GROUP BY k',
	'rebuilt after a restart', 'aftercrash');

# the owner of a stream in another database cannot be dropped (it owns the
# result table there)
my ($drop_rc, $drop_out, $drop_err) = $node->psql('postgres', 'DROP ROLE flowpg_erin');
like($drop_err, qr/role "flowpg_erin" cannot be dropped because some objects depend on it.*in database byhand/s,
	'DROP ROLE of the owner of a stream in another database is refused');

# A database dropped while one of its restored streams keeps failing: flowpg
# stops trying to rebuild it (no process starts for it any more).
$node->poll_query_until('dropped', q{SELECT status = 'failed' FROM flowpg.streams})
  or die 'the rebuild in database dropped did not fail';
$node->safe_psql('postgres', 'DROP DATABASE dropped WITH (FORCE)');
my $offset = -s $node->logfile;
sleep 5;
my $after = slurp_file($node->logfile, $offset);
unlike($after, qr/flowpg adopt|database \d+ does not exist/,
	'no rebuild is tried for a dropped database');
$node->safe_psql('byhand', 'INSERT INTO src VALUES (2)');
oracle_ok($node, 'res', 'SELECT k, count(*) AS n FROM src GROUP BY k',
	'after another database was dropped', 'byhand');
# A database dropped with streams that had no slot left (failed for good)
# left their replication origins, until new streams could not start; the
# databases are scanned after a DROP DATABASE, and the scan drops the
# origins of databases that are gone (here one made by hand, named as a
# stream's of a database that does not exist).
$node->safe_psql('postgres', q{SELECT pg_replication_origin_create('flowpg_4000000000_1')});
$node->safe_psql('postgres', 'CREATE DATABASE scratch');
$node->safe_psql('postgres', 'DROP DATABASE scratch');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_replication_origin WHERE roname = 'flowpg_4000000000_1'}),
	'the replication origin of a stream of a dropped database is dropped');
ok($node->safe_psql('byhand', q{SELECT count(*) = 1 FROM pg_replication_origin
	WHERE roname = 'flowpg_' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '_' ||
	(SELECT id FROM flowpg.streams WHERE name = 'public.res')}) eq 't',
	'... and not the origin of a stream whose database exists');

# ALTER DATABASE ... RENAME TO needs the database to have no sessions:
# flowpg stops its streams' workers for it (they made PostgreSQL wait 5 s
# and fail), and the streams go on afterwards, exactly, under the new name.
my ($arc, $aout, $aerr) = $node->psql('postgres',
	'ALTER DATABASE byhand RENAME TO moved', timeout => 60);
is($arc, 0, 'a database whose stream runs can be renamed') or diag $aerr;
$node->safe_psql('moved', 'INSERT INTO src VALUES (3), (3)');
oracle_ok($node, 'res', 'SELECT k, count(*) AS n FROM src GROUP BY k',
	'after the rename of its database', 'moved');
# ALTER DATABASE ... SET TABLESPACE is refused while the database has
# streams: WAL written before the move names the tables by their old
# tablespace, which decoding can no longer map, and a stream with any of
# it to decode (rows applied since its last confirmed checkpoint, here
# rows not checkpointed yet) failed at every start after the move.
my $ts = $node->basedir . '/ts';
mkdir $ts or die "mkdir $ts: $!";
$node->safe_psql('postgres', "CREATE TABLESPACE elsewhere LOCATION '$ts'");
$node->safe_psql('moved', q{SELECT flowpg.set_checkpoint_interval('res', '1 hour')});
$node->safe_psql('moved', 'INSERT INTO src VALUES (4)');
($arc, $aout, $aerr) = $node->psql('postgres',
	'ALTER DATABASE moved SET TABLESPACE elsewhere', timeout => 60,
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($arc, 0, 'a database with streams cannot be moved to another tablespace');
like($aerr, qr/0A000: cannot move database "moved" to another tablespace while it has flowpg streams/,
	'... with a clear error');
$node->safe_psql('moved', 'INSERT INTO src VALUES (5)');
oracle_ok($node, 'res', 'SELECT k, count(*) AS n FROM src GROUP BY k',
	'after a refused move of its database', 'moved');
crash_restart($node);
$node->safe_psql('moved', 'INSERT INTO src VALUES (6)');
oracle_ok($node, 'res', 'SELECT k, count(*) AS n FROM src GROUP BY k',
	'after a crash after the refused move', 'moved');

$node->stop;

# A stream that had failed for good where it was dumped (it kept more WAL
# than flowpg.max_retained_wal, paused; its slots went) is rebuilt where
# it is restored, as the others are: its recorded failure came with its
# row, and it stayed failed, though a restore rebuilds it from its source
# table anyway.  (A node of its own: the small limit is the server's.)
my $solo = new_node('dump_stale');
$solo->safe_psql('postgres', q{
	CREATE TABLE src (k int);
	INSERT INTO src SELECT g % 3 FROM generate_series(1, 30) g;
	SELECT flowpg.create_stream('held', 'SELECT k, count(*) AS n FROM src GROUP BY k');
});
wait_stream($solo, 'held');
$solo->safe_psql('postgres', q{
	SELECT flowpg.pause_stream('held');
	ALTER SYSTEM SET flowpg.max_retained_wal = '1MB';
	SELECT pg_reload_conf();
	INSERT INTO src SELECT g % 5 FROM generate_series(1, 50000) g;
});
ok($solo->poll_query_until('postgres',
		q{SELECT stale FROM flowpg.streams WHERE name = 'public.held'}),
	'a paused stream past flowpg.max_retained_wal fails for good');
$solo->safe_psql('postgres', q{
	ALTER SYSTEM RESET flowpg.max_retained_wal;
	SELECT pg_reload_conf();
});
command_ok([ 'pg_dump', '-h', $solo->host, '-p', $solo->port, '-Fc',
	'-f', "$dir/stale.dump", 'postgres' ], 'pg_dump of a database with a stream failed for good');
$solo->safe_psql('postgres', 'CREATE DATABASE back');
command_ok([ 'pg_restore', '-h', $solo->host, '-p', $solo->port,
	'-d', 'back', "$dir/stale.dump" ], 'pg_restore of it');
ok($solo->poll_query_until('back', q{SELECT status = 'paused' AND NOT stale AND pid IS NOT NULL
		FROM flowpg.streams WHERE name = 'public.held'}),
	'restored from a dump taken when it had failed for good, it is rebuilt, paused as it was dumped');
$solo->safe_psql('back', q{SELECT flowpg.resume_stream('held')});
$solo->safe_psql('back', 'INSERT INTO src VALUES (7)');
oracle_ok($solo, 'held', 'SELECT k, count(*) AS n FROM src GROUP BY k',
	'restored when it had failed for good, then resumed', 'back');
is($solo->safe_psql('postgres', q{SELECT stale FROM flowpg.streams WHERE name = 'public.held'}),
	't', 'the original stays failed for good');
$solo->stop;
done_testing();

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
is($node->safe_psql('restored', q{SELECT usename FROM pg_stat_activity
	WHERE backend_type = 'flowpg worker' AND application_name = 'public.total'
	  AND datname = 'restored'}),
	'flowpg_dana', 'a restored stream runs as its owner');

# the restored streams go on with new rows, and so do the original ones
$load = start_load($node, 3, 2, @scripts);
$node->safe_psql('restored', q{INSERT INTO app.clicks (campaign, cost)
	SELECT g % 17, g % 3 FROM generate_series(1, 2000) g});
stop_load($load);
oracle_ok($node, $_, $streams{$_}, 'restored streams after more rows', 'restored')
  for sort keys %streams;
oracle_ok($node, $_, $streams{$_}, 'the original database meanwhile')
  for sort keys %streams;

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

# DROP DATABASE is refused while the database has running streams (their
# slots are active).  When a worker is down at that moment (here, stopped
# by pg_terminate_backend and not restarted yet), DROP DATABASE ... WITH
# (FORCE) goes through and drops the slots: flowpg forgets those streams
# and the others go on.
my ($drc, $dout, $derr) = $node->psql('postgres', 'DROP DATABASE fromsql');
like($derr, qr/is used by an active logical replication slot/,
	'DROP DATABASE is refused while streams run in it');
my $dropped = 0;
for (1 .. 20)
{
	my ($rc) = $node->psql('postgres', q{
		SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		 WHERE backend_type = 'flowpg worker' AND datname = 'fromsql';
		SELECT pg_sleep(0.2);
		DROP DATABASE fromsql WITH (FORCE);});
	if ($rc == 0) { $dropped = 1; last; }
	sleep 1;
}
ok($dropped, 'DROP DATABASE WITH (FORCE) while its workers are down');
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

$node->stop;
done_testing();

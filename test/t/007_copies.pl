# Copies of a cluster whose streams run: a base backup recovered to a
# restore point (PITR), a physical standby promoted after the primary is
# killed (failover), then pg_upgrade of that server to a new one, then
# CREATE DATABASE ... TEMPLATE of its database.  PostgreSQL 15
# copies no logical replication slot to any of them, so each stream is
# found without its slot on a system, timeline or database other than the
# one it was made in, and is rebuilt from its source table by itself, as a
# restored dump is.  The oracle after each: the result table equals the
# stream's query run as a batch over the source table.
use strict;
use warnings;

use Cwd;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my %streams = (
	spend => q{SELECT campaign, count(*) AS clicks, sum(cost) AS spend
	             FROM clicks GROUP BY campaign},
	total => q{SELECT count(*) AS n, sum(cost) AS s FROM clicks WHERE cost > 1},
);
sub oracle_all
{
	my ($node, $label, $db) = @_;
	oracle_ok($node, $_, $streams{$_}, $label, $db) for sort keys %streams;
	return;
}

my $primary = new_node('primary', has_archiving => 1);
$primary->safe_psql('postgres',
	'CREATE TABLE clicks (id bigserial, campaign int, cost numeric)');
for my $name (sort keys %streams)
{
	$primary->safe_psql('postgres',
		"SELECT flowpg.create_stream('$name', \$q\$$streams{$name}\$q\$)");
}
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

my $dir = PostgreSQL::Test::Utils::tempdir;
my @scripts = click_scripts($dir);

# 1. Failover: the primary runs its streams under load, takes a savepoint,
#    and is killed; the standby, which has their catalog rows, checkpoints
#    and result tables but no slot, is promoted.
my $load = start_load($primary, 4, 2, @scripts);
sleep 2;
$primary->safe_psql('postgres', "SELECT flowpg.savepoint('spend', 'before')");
sleep 1;
stop_load($load);
oracle_all($primary, 'on the primary');

# 1a. Point-in-time recovery of the base backup to a restore point (a new
#     timeline), from the primary's WAL archive.
$primary->safe_psql('postgres', "SELECT pg_create_restore_point('pitr')");
$primary->safe_psql('postgres',
	"INSERT INTO clicks (campaign, cost) SELECT 99, g FROM generate_series(1, 1000) g");
my $walfile = $primary->safe_psql('postgres', 'SELECT pg_walfile_name(pg_current_wal_lsn())');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
$primary->poll_query_until('postgres',
	"SELECT last_archived_wal >= '$walfile' FROM pg_stat_archiver")
  or die 'the WAL was not archived';
my $pitr = PostgreSQL::Test::Cluster->new('pitr');
$pitr->init_from_backup($primary, 'base', has_restoring => 1);
$pitr->append_conf('postgresql.conf', qq{archive_mode = off
recovery_target_name = 'pitr'
recovery_target_action = 'promote'
});
$pitr->start;
$pitr->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()')
  or die 'the recovered base backup was not promoted';
oracle_all($pitr, 'a base backup recovered to a restore point');
is($pitr->safe_psql('postgres', 'SELECT count(*) FROM clicks WHERE campaign = 99'),
	0, 'without the rows written after the restore point');
$pitr->stop;
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', "SELECT string_agg(status, ',') FROM flowpg.streams"),
	'standby,standby', 'the standby has the streams, and shows them as standby');
my ($rc, $out, $err) = $standby->psql('postgres', "SELECT flowpg.wait('spend')");
like($err, qr/stream "public.spend" does not run on a standby/,
	'flowpg.wait on the standby says so');
for my $call ("flowpg.create_stream('t2', 'SELECT count(*) AS n FROM clicks')",
	"flowpg.drop_stream('spend')", "flowpg.pause_stream('spend')",
	"flowpg.rebuild_stream('spend')", "flowpg.drop_savepoint('spend', 'before')",
	"flowpg.savepoint('spend', 'on_standby')")
{
	($rc, $out, $err) = $standby->psql('postgres', "SELECT $call");
	my ($fn) = $call =~ /^(flowpg\.\w+)/;
	like($err, qr/ERROR:  cannot execute \Q$fn\E\(.*\) on a standby/,
		"$fn on the standby says streams are changed on the primary");
}
$primary->stop('immediate');
my $offset = -s $standby->logfile;
$standby->promote;
oracle_all($standby, 'after failover to the promoted standby');
ok($standby->log_contains(
		'flowpg: stream "public.spend" of database "postgres" has no replication slot here, a copy', $offset),
	'the server log says why the streams were rebuilt');
is($standby->safe_psql('postgres',
		"SELECT string_agg(status || ' ' || stale, ',') FROM flowpg.streams"),
	'running false,running false', 'they run, not stale');
is($standby->safe_psql('postgres', "SELECT count(*) FROM flowpg.savepoints"),
	0, 'savepoints belong to the old server and do not come back');
$load = start_load($standby, 3, 2, @scripts);
sleep 2;
crash_restart($standby);
stop_load($load);
oracle_all($standby, 'the promoted server, under load and kill -9');

# 2. pg_upgrade of that server into a new cluster (same major version:
#    the new cluster has a system identifier of its own).
my $new = PostgreSQL::Test::Cluster->new('upgraded');
$new->init(allows_streaming => 'logical');
$new->append_conf('postgresql.conf', slurp_file($ENV{FLOWPG_CONF}));
my $old_origin = $standby->safe_psql('postgres',
	"SELECT string_agg(DISTINCT slot_origin, ',') FROM flowpg.stream");
$standby->stop;
my $bindir = $standby->config_data('--bindir');
my $cwd = getcwd();
chdir $dir or die "cannot chdir to $dir: $!";
command_ok(
	[
		'pg_upgrade', '--no-sync',
		'-d', $standby->data_dir, '-D', $new->data_dir,
		'-b', $bindir, '-B', $bindir,
		'-s', $new->host, '-p', $standby->port, '-P', $new->port
	],
	'pg_upgrade of a cluster whose streams run');
chdir $cwd;
$offset = -s $new->logfile // 0;
$new->start;
oracle_all($new, 'after pg_upgrade');
ok($new->log_contains('flowpg: stream "public.total" rebuilt from', $offset),
	'rebuilt from the source table when the upgraded server starts');
isnt($new->safe_psql('postgres',
		"SELECT string_agg(DISTINCT slot_origin, ',') FROM flowpg.stream"),
	$old_origin, 'their slots are the new system\'s');
$new->safe_psql('postgres',
	"INSERT INTO clicks (campaign, cost) SELECT g % 7, g FROM generate_series(1, 1000) g");
crash_restart($new);
oracle_all($new, 'the upgraded server, after kill -9');

# 3. CREATE DATABASE ... TEMPLATE a database whose streams run: PostgreSQL
#    wants the template without sessions, so its workers stop for the copy;
#    the copy's streams are rebuilt in the copy, and each database's
#    streams follow their own source table from then on.
$load = start_load($new, 3, 2, @scripts);
sleep 1;
stop_load($load);
$new->safe_psql('postgres', 'CREATE DATABASE copied TEMPLATE postgres');
oracle_all($new, 'the copy', 'copied');
$new->safe_psql('copied',
	"INSERT INTO clicks (campaign, cost) SELECT g % 3, g FROM generate_series(1, 500) g");
$new->safe_psql('postgres',
	"INSERT INTO clicks (campaign, cost) SELECT g % 9, g FROM generate_series(1, 700) g");
oracle_all($new, 'the copy, after rows only it got', 'copied');
oracle_all($new, 'its template, after rows only it got');
is($new->safe_psql('copied',
		"SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%' "
		  . "AND database = current_database()"),
	2, 'the copy\'s streams have slots of their own');
# The copy's sequences come with the values they had cached, which no WAL
# says were given (PostgreSQL 15's WAL_LOG strategy): after a crash the
# copy's checkpoint id sequence went back, and its checkpoints reused ids
# (failing on duplicate keys, or looking older than the newest, which lost
# committed rows).
$new->safe_psql('postgres', 'CREATE DATABASE tmpl');
$new->safe_psql('tmpl', q{
	CREATE EXTENSION flowpg;
	CREATE TABLE ev (k int, v int);
	SELECT flowpg.create_stream('g', 'SELECT count(*) AS n, sum(v) AS sv FROM ev');
});
$new->safe_psql('tmpl', 'INSERT INTO ev VALUES (1, 1)');
wait_stream($new, 'g', undef, 'tmpl');
$new->safe_psql('postgres', 'CREATE DATABASE tmpl_copy TEMPLATE tmpl');
wait_stream($new, 'g', undef, 'tmpl_copy');
for my $round (1 .. 15)
{
	$new->safe_psql('tmpl_copy', "INSERT INTO ev VALUES ($round, 1)");
	$new->safe_psql('tmpl_copy', "SELECT flowpg.checkpoint('g')");
}
crash_restart($new);
my $failures = 0;
for my $round (1 .. 4)
{
	$new->safe_psql('tmpl_copy', 'INSERT INTO ev VALUES (100, 1000)');
	my ($rc) = $new->psql('tmpl_copy', "SELECT flowpg.checkpoint('g')");
	$failures++ if $rc != 0;
}
is($failures, 0, 'checkpoints of a copy after a crash do not fail');
oracle_ok($new, 'g', 'SELECT count(*) AS n, sum(v) AS sv FROM ev', 'a copy after a crash', 'tmpl_copy');

$new->stop;
done_testing();

# Exactly-once across failures: concurrent load from several sessions
# (single-row and multi-row INSERTs, COPY, rolled-back transactions, writes
# to an unrelated table) while the worker is killed (SIGKILL and SIGTERM)
# and the postmaster is killed with SIGKILL, several times; writes go on
# between crashes.  After each round every stream's result table must
# equal its query run as a batch over the source table.  Then a clean
# restart keeps every stream, its results and its position.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $node = new_node('recovery');
$node->safe_psql('postgres', q{
	CREATE TABLE clicks (id bigserial, ts timestamptz DEFAULT now(),
	                     campaign int, region text, cost numeric, ok bool);
	CREATE TABLE other (x int);
});

my %streams = (
	spend => q{SELECT campaign, count(*) AS clicks, sum(cost) AS spend,
	                  avg(cost) AS avg_cost, min(cost) AS min_cost,
	                  max(cost) AS max_cost
	             FROM clicks WHERE cost > 0 GROUP BY campaign},
	by_region => q{SELECT region, campaign % 3 AS bucket,
	                      count(*) FILTER (WHERE ok) AS good,
	                      sum((cost * 100)::float8) AS cents_f,
	                      var_samp(cost) AS var, bool_and(ok) AS all_ok
	                 FROM clicks GROUP BY region, campaign % 3},
	total => q{SELECT count(*) AS n, sum(cost) AS s, max(id) AS last_id
	             FROM clicks},
);
for my $name (sort keys %streams)
{
	$node->safe_psql('postgres',
		"SELECT flowpg.create_stream('$name', \$q\$$streams{$name}\$q\$)");
}

# The load: every kind of write a client makes.
my $dir = PostgreSQL::Test::Utils::tempdir;
my $copy_file = "$dir/copy.data";
open my $fh, '>', $copy_file or die;
print $fh join("\t", $_ % 40, 'r' . ($_ % 5), $_ % 9, ($_ % 4 ? 't' : 'f')) . "\n"
  for 1 .. 500;
close $fh;
my %scripts = (
	'single.sql@10' => q{\set c random(1, 60)
INSERT INTO clicks (campaign, region, cost, ok)
VALUES (:c, 'r' || (:c % 7), round((random() * 10)::numeric, 2), :c % 3 <> 0);
},
	'multi.sql@3' => q{INSERT INTO clicks (campaign, region, cost, ok)
SELECT g % 50, 'r' || (g % 7), round((random() * 10)::numeric, 2), g % 3 <> 0
FROM generate_series(1, 100) g;
},
	'rollback.sql@2' => q{BEGIN;
INSERT INTO clicks (campaign, region, cost, ok)
SELECT g, 'rolled back', 1000, true FROM generate_series(1, 50) g;
ROLLBACK;
},
	'copy.sql@1' => "COPY clicks (campaign, region, cost, ok) FROM '$copy_file';\n",
	'nulls.sql@1' => q{INSERT INTO clicks (campaign, region, cost, ok) VALUES (NULL, NULL, NULL, NULL);
},
	'other.sql@2' => q{INSERT INTO other SELECT generate_series(1, 10);
},
);
my @script_args = write_scripts($dir, %scripts);

sub check_all
{
	my ($label) = @_;
	oracle_ok($node, $_, $streams{$_}, $label) for sort keys %streams;
}

sub rollback_free
{
	my $n = $node->safe_psql('postgres',
		"SELECT count(*) FROM by_region WHERE region = 'rolled back'");
	is($n, '0', 'no rolled-back row reached a stream');
}

# Round 0: load without failures.
my $load = start_load($node, 4, 2, @script_args);
stop_load($load);
check_all('no failure');

# Each round: load from 3 sessions, a failure in the middle of it, then
# more load after recovery, then the oracle.
my @failures = (
	[ 'SIGKILL of the worker' => sub {
		kill 'KILL', worker_pid($node, 'spend');
		sleep 2;
	} ],
	[ 'SIGKILL of the postmaster' => sub { crash_restart($node) } ],
	[ 'SIGTERM of the worker' => sub {
		my $pid = worker_pid($node, 'by_region');
		$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
		# the launcher starts a new worker, without a server restart
		$node->poll_query_until('postgres',
			"SELECT restarts >= 1 AND pid <> $pid FROM flowpg.streams WHERE name = 'public.by_region'")
		  or die 'the terminated worker was not restarted';
		pass('the launcher restarted the terminated worker');
	} ],
	[ 'SIGKILL of the postmaster, again' => sub { crash_restart($node) } ],
	[ 'SIGKILL of the postmaster, third time' => sub { crash_restart($node) } ],
);
for my $f (@failures)
{
	my ($label, $fail) = @$f;
	$load = start_load($node, 4, 3, @script_args);
	sleep 2;
	$fail->();
	stop_load($load);
	server_back($node) or die 'server did not come back';
	$load = start_load($node, 2, 2, @script_args);
	stop_load($load);
	check_all($label);
}
rollback_free();


# A paused stream stays paused across a crash, and catches up when resumed.
$node->safe_psql('postgres', "SELECT flowpg.pause_stream('total')");
my $paused_at = $node->safe_psql('postgres', 'SELECT n FROM total');
crash_restart($node);
$load = start_load($node, 2, 2, @script_args);
stop_load($load);
is($node->safe_psql('postgres', "SELECT status FROM flowpg.streams WHERE name = 'public.total'"),
	'paused', 'a paused stream is still paused after a crash');
is($node->safe_psql('postgres', 'SELECT n FROM total'), $paused_at,
	'... and applied nothing meanwhile');
$node->safe_psql('postgres', "SELECT flowpg.resume_stream('total')");
oracle_ok($node, 'total', $streams{total}, 'resumed after a crash');

# A clean restart keeps every stream, its results and its position.
my %before = map {
	$_ => $node->safe_psql('postgres', "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM $_ t")
} keys %streams;
$node->restart;
for my $name (sort keys %streams)
{
	wait_stream($node, $name);
	is($node->safe_psql('postgres', "SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM $name t"),
		$before{$name}, "$name: same results after a clean restart");
}
$load = start_load($node, 2, 2, @script_args);
stop_load($load);
check_all('clean restart');

is($node->safe_psql('postgres', 'SELECT count(*) FROM flowpg.streams'),
	scalar(keys %streams), 'every stream survived');

$node->stop;

# A periodic checkpoint commits without waiting for its WAL to be flushed,
# and the slot is confirmed at it only once the WAL writer has flushed it.
# With the WAL writer held off, a kill -9 takes such a checkpoint back: the
# slot must still lie before it, so that its rows are decoded again.  On a
# node of its own: with 1 MB of shared buffers (the test default) a backend
# writing out a dirty buffer flushes the WAL up to it, and so does vacuum.
my $lazy = new_node('lazy', extra_conf => q{
shared_buffers = 32MB
autovacuum = off
wal_writer_delay = 10s
wal_writer_flush_after = 64MB
});
my $lz = q{SELECT k, count(*) AS n, sum(v) AS s FROM lz GROUP BY k};
$lazy->safe_psql('postgres', qq{
	CREATE TABLE lz (k int, v int);
	CREATE TABLE other (x int);
	SELECT flowpg.create_stream('lazy', \$q\$$lz\$q\$, '1 s');
});
wait_stream($lazy, 'lazy');
my $lz_id = $lazy->safe_psql('postgres', "SELECT id FROM flowpg.streams WHERE name = 'public.lazy'");
my $lz_slot = $lazy->safe_psql('postgres',
	"SELECT format('flowpg_%s_%s', oid, $lz_id) FROM pg_database WHERE datname = current_database()");
# the WAL writer flushes at once when it last flushed over wal_writer_delay
# ago: have it flush now (an asynchronous commit, which only it flushes),
# so that it waits 10 s before it flushes again
my $async = $lazy->safe_psql('postgres', q{
	BEGIN;
	SET LOCAL synchronous_commit = off;
	INSERT INTO other VALUES (1);
	SELECT pg_current_wal_insert_lsn();
	COMMIT;
});
$lazy->poll_query_until('postgres', "SELECT pg_current_wal_flush_lsn() > '$async'")
  or die 'the WAL writer did not flush';
# a checkpoint past the position before the INSERT holds its rows
my $lz_target = $lazy->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
$lazy->safe_psql('postgres', 'INSERT INTO lz SELECT g % 10, g FROM generate_series(1, 1000) g');
# only reads from here to the kill: nothing that would flush the WAL
$lazy->poll_query_until('postgres',
	"SELECT checkpoint_lsn > '$lz_target' FROM flowpg.streams WHERE name = 'public.lazy'")
  or die 'no periodic checkpoint of the rows';
is($lazy->safe_psql('postgres', qq{
	SELECT s.confirmed_flush_lsn < f.checkpoint_lsn
	  FROM pg_replication_slots s, flowpg.streams f
	 WHERE s.slot_name = '$lz_slot' AND f.name = 'public.lazy'}),
	't', 'the slot is not confirmed at a checkpoint whose commit is not flushed')
  or diag $lazy->safe_psql('postgres', qq{
	SELECT s.confirmed_flush_lsn, f.checkpoint_lsn, pg_current_wal_flush_lsn(), pg_current_wal_insert_lsn()
	  FROM pg_replication_slots s, flowpg.streams f
	 WHERE s.slot_name = '$lz_slot' AND f.name = 'public.lazy'});
my $lz_ckpt = $lazy->safe_psql('postgres', qq{
	SELECT format('id = %s AND finished_at = %L', id, finished_at) FROM flowpg.checkpoint
	 WHERE stream_id = $lz_id AND lsn > '$lz_target' ORDER BY id LIMIT 1});
crash_restart($lazy);
# (a checkpoint the restarted worker takes has another finished_at)
is($lazy->safe_psql('postgres', "SELECT count(*) FROM flowpg.checkpoint WHERE $lz_ckpt"),
	'0', 'the kill -9 took the checkpoint back');
oracle_ok($lazy, 'lazy', $lz, 'a checkpoint taken back by a crash');

# What flowpg.wait returned after is durable: the results a crash right
# after it leaves are the ones it showed.
$lazy->safe_psql('postgres', 'INSERT INTO lz SELECT g % 10, g FROM generate_series(1, 500) g');
wait_stream($lazy, 'lazy');
my $shown = $lazy->safe_psql('postgres', "SELECT md5(string_agg(t::text, ',' ORDER BY k)) FROM lazy t");
crash_restart($lazy);
is($lazy->safe_psql('postgres', "SELECT md5(string_agg(t::text, ',' ORDER BY k)) FROM lazy t"),
	$shown, 'the results flowpg.wait showed survive a kill -9 right after it');
oracle_ok($lazy, 'lazy', $lz, 'after the crash that followed flowpg.wait');
$lazy->stop;
done_testing();

# A crash loop: under continuous load, at random moments (seeded, printed,
# reproducible with FLOWPG_SEED), SIGKILL the worker, SIGTERM it, or SIGKILL
# the postmaster, 24 times in all.  At the end, and once on the way, every
# stream equals its query run as a batch.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $seed = $ENV{FLOWPG_SEED} // (time() % 100000);
srand($seed);
diag("crash loop seed: $seed (rerun with FLOWPG_SEED=$seed)");

my $node = new_node('crash_loop', extra_conf => "flowpg.checkpoint_interval = 200ms\n");
$node->safe_psql('postgres', q{
	CREATE TABLE readings (device int, temp numeric, at timestamptz DEFAULT now());
});
my %streams = (
	per_device => q{SELECT device, count(*) AS n, sum(temp) AS total, min(temp) AS low,
	                       max(temp) AS high, avg(temp) AS mean
	                  FROM readings GROUP BY device},
	hot => q{SELECT device % 10 AS bucket, count(*) FILTER (WHERE temp > 30) AS hot,
	                count(*) AS n FROM readings WHERE device IS NOT NULL GROUP BY device % 10},
	overall => q{SELECT count(*) AS n, sum(temp) AS total FROM readings},
);
for my $name (sort keys %streams)
{
	$node->safe_psql('postgres',
		"SELECT flowpg.create_stream('$name', \$q\$$streams{$name}\$q\$)");
}

my $dir = PostgreSQL::Test::Utils::tempdir;
my %scripts = (
	'one.sql@6' => q{\set d random(1, 500)
INSERT INTO readings (device, temp) VALUES (:d, round((random() * 40)::numeric, 1));
},
	'many.sql@2' => q{INSERT INTO readings (device, temp)
SELECT (random() * 500)::int, round((random() * 40)::numeric, 1) FROM generate_series(1, 50);
},
	'undo.sql@1' => q{BEGIN;
INSERT INTO readings (device, temp) SELECT g, 1000 FROM generate_series(1, 20) g;
ROLLBACK;
},
);
my @args = write_scripts($dir, %scripts);

my %kinds = (0 => 'SIGKILL worker', 1 => 'SIGTERM worker', 2 => 'SIGKILL postmaster');
my %count;
for my $round (1 .. 24)
{
	my $kind = int(rand(3));
	my @names = sort keys %streams;
	my $victim = $names[ int(rand(@names)) ];
	my $delay = 0.3 + rand(1.5);

	my $load = start_load($node, 3, 2, @args);
	select(undef, undef, undef, $delay);
	if ($kind == 2)
	{
		crash_restart($node);
	}
	else
	{
		my $pid = worker_pid($node, $victim);
		if ($kind == 0)
		{
			kill 'KILL', $pid;
		}
		else
		{
			$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
		}
	}
	stop_load($load);
	server_back($node)
	  or die 'the server did not come back';
	$count{$kind}++;
	note(sprintf('round %d: %s (%s) after %.1f s', $round, $kinds{$kind}, $victim, $delay));

	if ($round == 12)
	{
		oracle_ok($node, $_, $streams{$_}, 'after 12 failures') for sort keys %streams;
	}
}
diag(join(', ', map { "$kinds{$_}: " . ($count{$_} // 0) } sort keys %kinds));

$node->poll_query_until('postgres',
	"SELECT count(*) = 3 FROM flowpg.streams WHERE status = 'running'")
  or diag($node->safe_psql('postgres', 'SELECT name, status, last_error FROM flowpg.streams'));
oracle_ok($node, $_, $streams{$_}, 'after 24 failures') for sort keys %streams;
my $rolled_back = $node->safe_psql('postgres',
	'SELECT count(*) FROM per_device WHERE high >= 1000');
is($rolled_back, '0', 'no rolled-back row was counted');

# kill -9 of the postmaster while create_stream builds its slot's starting
# point: having waited for a running transaction to end (as creating any
# logical replication slot does), it reads the WAL up to a record that the
# WAL writer has not flushed yet (here it never will: it is stopped, then
# killed with the postmaster; and the transaction writes nothing a stream
# would checkpoint, which would flush it; nor does the checkpointer: one
# is done first, and the checkpointer stopped too, since a checkpoint
# started by the WAL the crash loop wrote would flush it).  The creating
# backend exits too (it used to poll forever for that WAL, and the server
# could not start again), and nothing of the stream is left.
$node->safe_psql('postgres', 'CHECKPOINT');
my $holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_safe('BEGIN; SELECT pg_current_xact_id()');
my $creator = $node->background_psql('postgres', on_error_stop => 0);
$creator->query_until(qr/creating/, q{\echo creating
SELECT flowpg.create_stream('late', 'SELECT count(*) AS n FROM readings');
});
my $creating = q{SELECT count(*) FROM pg_stat_activity
	WHERE query LIKE '%create_stream(''late''%' AND state = 'active'};
$node->poll_query_until('postgres', "$creating AND wait_event_type = 'Lock'", 1)
  or die 'create_stream did not wait for the open transaction';
my @flushers = split /\n/, $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity
	WHERE backend_type IN ('walwriter', 'checkpointer')});
kill 'STOP', @flushers;
$holder->query_safe('COMMIT');
$node->poll_query_until('postgres', "$creating AND wait_event_type IS DISTINCT FROM 'Lock'", 1)
  or die 'create_stream did not go on once the transaction ended';
$node->kill9;
kill 'KILL', @flushers;
crash_restart($node);
pass('the server starts again after kill -9 during create_stream');
$holder->{run}->kill_kill;
$creator->{run}->kill_kill;
is($node->safe_psql('postgres', q{SELECT count(*) FROM flowpg.streams WHERE name = 'public.late'}),
	'0', 'the stream being created is not there');
oracle_ok($node, $_, $streams{$_}, 'after kill -9 during create_stream')
  for sort keys %streams;

# A worker busy decoding a large transaction when the postmaster dies
# exits at once, or once PostgreSQL's decoder has written what it was
# spilling to disk (up to flowpg.decoding_work_mem, here 8 MB; 256 MB,
# the default, take a second or more): it went on decoding (a minute for
# 5 M rows, 10 to 20 s for these 3 M), holding the old server's shared
# memory, and no new server could start meanwhile.  (An orphan that
# exited stays a zombie where nothing reaps it.)
$node->append_conf('postgresql.conf', "flowpg.decoding_work_mem = '8MB'");
$node->reload;
$node->safe_psql('postgres', 'CREATE TABLE bulk (k int, v int)');
my $bulk = 'SELECT k % 100 AS b, count(*) AS n, sum(v) AS s FROM bulk GROUP BY k % 100';
$node->safe_psql('postgres', "SELECT flowpg.create_stream('bulk_sums', '$bulk')");
my $bulk_pid = worker_pid($node, 'bulk_sums');
$node->safe_psql('postgres', 'INSERT INTO bulk SELECT g, g FROM generate_series(1, 3000000) g');
# the worker replays the transaction's rows now, for seconds
$node->kill9;
sub running
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/stat") or return 0;
	my $stat = <$fh>;
	close $fh;
	return $stat !~ /^\d+ \(.*\) [ZX] /s;
}
my $orphaned = 1;
for (1 .. 120)
{
	$orphaned = running($bulk_pid);
	last unless $orphaned;
	select(undef, undef, undef, 0.05);
}
ok(!$orphaned, 'a worker decoding a large transaction exits within 6 s of the postmaster dying');
crash_restart($node);
oracle_ok($node, 'bulk_sums', $bulk, 'after kill -9 while the stream decoded a large transaction');

$node->stop;
done_testing();

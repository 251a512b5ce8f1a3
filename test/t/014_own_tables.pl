# flowpg's own tables rewritten (VACUUM FULL, CLUSTER) while a stream's
# worker decodes the WAL from before the rewrite.  Decoding builds the
# relcache entry of every table whose rows it reads (other streams'
# checkpoints into flowpg.state and flowpg.checkpoint among them) from the
# catalog as it was: a worker behind the rewrite wrote its next checkpoint
# into the file the rewrite had dropped, with entries in the new indexes
# pointing at nothing in the new file, and every other stream of the
# database failed for good when it decoded that write ("could not map
# filenode").  The worker writes its checkpoints itself here
# (flowpg.checkpoint_writer = off), as it does its first ones, those after
# a restore and savepoints.  After each rewrite: no stream failed, each
# equals its query run as a batch, and the rewritten table's indexes hold
# exactly its rows (amcheck).  And a REINDEX of flowpg.stream while a call
# waits for a stream's worker that is starting: the call lets go of its
# locks on flowpg.stream as it waits (under concurrent load, a REINDEX
# queued behind them kept a starting worker or writer waiting for the
# call that waited for it, until the call timed out; this sequence did
# not reproduce that stall without the change).  And a REINDEX while a
# stream's process starts: the process read flowpg.stream (locking its
# index) before the UPDATE of it it prepares (locking the table
# RowExclusive), and deadlocked (40P01) with the REINDEX, which holds the
# table and waits for the index; it now locks the table first.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $node = new_node('own_tables', extra_conf => "flowpg.checkpoint_writer = off\n");
sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
	CREATE EXTENSION amcheck;
	CREATE TABLE src (k int, v int);
});
my $query = 'SELECT k, count(*) AS n, sum(v) AS total FROM src GROUP BY k';
sql("SELECT flowpg.create_stream('$_', '$query')") for qw(ahead behind);
sql('INSERT INTO src SELECT g % 1000, 1 FROM generate_series(1, 10000) g');
oracle_ok($node, $_, $query, "$_ before any rewrite") for qw(ahead behind);

my $round = 0;
for my $rewrite ('VACUUM FULL flowpg.state', 'VACUUM FULL flowpg.checkpoint',
	'CLUSTER flowpg.state USING state_pkey')
{
	$round++;
	# behind decodes the checkpoints ahead writes meanwhile
	sql("SELECT flowpg.pause_stream('behind')");
	for (1 .. 3)
	{
		sql('INSERT INTO src SELECT g % 1000, 1 FROM generate_series(1, 1000) g');
		sql("SELECT flowpg.checkpoint('ahead')");
	}
	# and enough after them to checkpoint while it is still behind
	sql('INSERT INTO src SELECT g % 1000, 1 FROM generate_series(1, 5000) g')
	  for 1 .. 100;
	sql($rewrite);
	sql("SELECT flowpg.resume_stream('behind')");
	$node->poll_query_until('postgres',
		"SELECT bool_and(status = 'running' AND lag_bytes = 0) OR bool_or(status = 'failed')
		   FROM (SELECT status, lag_bytes FROM flowpg.streams) s")
	  or die 'the streams did not catch up';
	is(sql("SELECT string_agg(name || ': ' || last_error, '; ') FROM flowpg.streams WHERE status = 'failed'"),
		'', "$rewrite: no stream failed");
	oracle_ok($node, $_, $query, "$rewrite: $_") for qw(ahead behind);
	# (the first checkpoint of each, after the rewrite, writes into it)
	sql("SELECT flowpg.checkpoint('$_')") for qw(ahead behind);
	my ($table) = $rewrite =~ /(flowpg\.\w+)/;
	is(sql("SELECT count(*) FROM (SELECT bt_index_check(indexrelid, true) FROM pg_index
	          WHERE indrelid = '$table'::regclass) c"),
		sql("SELECT count(*) FROM pg_index WHERE indrelid = '$table'::regclass"),
		"$rewrite: its indexes hold exactly its rows");
}

# flowpg.checkpoint waits for a worker that is starting (held back by a
# transaction that locked its source), and REINDEX TABLE flowpg.stream
# waits for the worker's lock on flowpg.stream's index, and for the
# call's: once the source is free, the worker's next read of flowpg.stream
# comes after the REINDEX, which must not wait for the call.
# (with checkpoint writers, as by default: a writer starts with its worker
# and reads flowpg.stream too)
sql('ALTER SYSTEM RESET flowpg.checkpoint_writer');
$node->reload;
my $locker = $node->background_psql('postgres', on_error_stop => 0);
$locker->query_safe('BEGIN; LOCK TABLE src IN ACCESS EXCLUSIVE MODE');
sql("SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.ahead'");
my $caller = $node->background_psql('postgres', on_error_stop => 0);
$caller->query_until(qr/calling/, q{\echo calling
SELECT 'checkpoint ' || flowpg.checkpoint('ahead') AS taken;
});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE backend_type = 'flowpg worker' AND wait_event_type = 'Lock'})
  or die 'the worker did not wait for the source';
my $reindexer = $node->background_psql('postgres', on_error_stop => 0);
$reindexer->query_until(qr/reindexing/, q{\echo reindexing
REINDEX TABLE flowpg.stream;
\echo reindexed
});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
	WHERE query LIKE 'REINDEX TABLE flowpg.stream%' AND wait_event_type = 'Lock'})
  or die 'the REINDEX did not wait for the worker';
$locker->query_safe('COMMIT');
like($caller->query_until(qr/checkpoint \d+/, ''), qr/checkpoint \d+/,
	'the checkpoint was taken once the source was free');
$reindexer->query_until(qr/reindexed/, '');
pass('... and the REINDEX was done');
$_->quit for $locker, $caller, $reindexer;
oracle_ok($node, $_, $query, "$_ after the REINDEX") for qw(ahead behind);

# A REINDEX of flowpg.stream as a stream's worker starts, while
# flowpg.wait waits for it: the REINDEX failed with "deadlock detected"
# (the worker held flowpg.stream's index, read, and asked for the table,
# to prepare its UPDATE of it; the REINDEX held the table and asked for
# the index), twice in two runs before the change; it must succeed, well
# within its lock_timeout.
sql('INSERT INTO src SELECT g % 1000, 1 FROM generate_series(1, 1000) g');
sql("SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.ahead'");
$caller = $node->background_psql('postgres', on_error_stop => 0);
$caller->query_until(qr/waiting/, q{\echo waiting
SELECT 'waited' FROM (SELECT flowpg.wait('ahead', '30 s')) w;
});
my ($out, $err) = ('', '');
$node->psql('postgres', q{SET lock_timeout = '10s'; REINDEX TABLE flowpg.stream},
	stdout => \$out, stderr => \$err, on_error_stop => 1);
is($err, '', 'a REINDEX of flowpg.stream does not wait for a call waiting for a starting worker');
like($caller->query_until(qr/waited/, ''), qr/waited/, '... and the call returned');
$caller->quit;
oracle_ok($node, $_, $query, "$_ after that REINDEX") for qw(ahead behind);

done_testing();

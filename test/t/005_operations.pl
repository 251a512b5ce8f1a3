# Operating streams: savepoints and restore (under load, across a crash,
# after the result table was damaged), dropped savepoints, pause and
# resume across pg_ctl restart -m fast and -m immediate, the
# flowpg.max_retained_wal limit, and slots dropped or invalidated outside
# flowpg, and a source rewritten while a function of the stream reads
# it.  The oracle after every step: the result
# table equals the stream's query run as a batch over the source table.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $node = new_node('operations');
$node->safe_psql('postgres', q{
	CREATE TABLE clicks (id bigserial, campaign int, cost numeric);
	CREATE TABLE other (x int, pad text);
});
my %streams = (
	spend => q{SELECT campaign, count(*) AS clicks, sum(cost) AS spend
	             FROM clicks GROUP BY campaign},
	total => q{SELECT count(*) AS n, sum(cost) AS s FROM clicks},
);
for my $name (sort keys %streams)
{
	$node->safe_psql('postgres',
		"SELECT flowpg.create_stream('$name', \$q\$$streams{$name}\$q\$)");
}
sub oracle_all
{
	my ($label) = @_;
	oracle_ok($node, $_, $streams{$_}, $label) for sort keys %streams;
	return;
}
sub sql { return $node->safe_psql('postgres', $_[0]); }

my $dir = PostgreSQL::Test::Utils::tempdir;
my @scripts = click_scripts($dir);

# 0. Checkpoints are incremental: with 1,000,000 keys in state, one after
#    100 changed keys writes 100 keys, and flowpg.checkpoints says so.
$node->safe_psql('postgres', q{
	CREATE TABLE wide (k int);
	SELECT flowpg.create_stream('wide_n', 'SELECT k, count(*) AS n FROM wide GROUP BY k', '1 hour');
});
sql("INSERT INTO wide SELECT g FROM generate_series(1, 1000000) g");
wait_stream($node, 'wide_n');
sql("INSERT INTO wide SELECT g * 9973 FROM generate_series(1, 100) g");
my $ckpt = sql("SELECT flowpg.checkpoint('wide_n')");
is(sql("SELECT keys || ' of ' || (SELECT keys FROM flowpg.streams WHERE name = 'public.wide_n') "
	  . "FROM flowpg.checkpoints WHERE id = $ckpt"),
	'100 of 1000000', 'a checkpoint after 100 changed keys among 1,000,000 writes 100 keys');
oracle_ok($node, 'wide_n', 'SELECT k, count(*) AS n FROM wide GROUP BY k', 'incremental checkpoints');
#    and a restart restores those 1,000,000 keys (a log where 100 of them
#    come twice; the restore reserves the memory they take beforehand)
crash_restart($node);
oracle_ok($node, 'wide_n', 'SELECT k, count(*) AS n FROM wide GROUP BY k',
	'1,000,000 keys restored after kill -9');

#    The worker's long-lived memory does not grow when it reads its catalog
#    row again (after each set_checkpoint_interval, pause or resume): bytes
#    used in its "flowpg worker" context, from pg_log_backend_memory_contexts.
sub worker_memory
{
	my ($pid) = @_;
	my $offset = -s $node->logfile;
	sql("SELECT pg_log_backend_memory_contexts($pid)");
	for (1 .. 100)
	{
		my $log = substr(slurp_file($node->logfile), $offset);
		return $1 if $log =~ /\[$pid\] LOG:  level: 1; flowpg worker: .*?; (\d+) used/;
		sleep 0.1;
	}
	die "worker $pid did not log its memory contexts";
}
my $wpid = worker_pid($node, 'wide_n');
my $used = worker_memory($wpid);
for my $i (1 .. 30)
{
	sql("SELECT flowpg.set_checkpoint_interval('wide_n', '1 hour')");
	$node->poll_query_until('postgres', 'SELECT true')    # a reload each time
	  or die;
}
is(worker_memory($wpid), $used,
	"reading its definition again 30 times leaves the worker's memory as it was");
sql("SELECT flowpg.drop_stream('wide_n')");

# 1. Savepoints taken under load; restore after the result table was
#    damaged by hand: the stream re-processes everything since.
my $load = start_load($node, 8, 2, @scripts);
sleep 2;
my $sp1 = sql("SELECT flowpg.savepoint('spend', 'before')");
sql("SELECT flowpg.savepoint('total', 'before')");
sleep 2;
my $keys_at_sp = sql("SELECT keys FROM flowpg.savepoints WHERE stream = 'public.spend'");
ok($sp1 > 0 && $keys_at_sp > 0, "savepoint taken under load (id $sp1, $keys_at_sp keys)");
is(sql("SELECT restorable FROM flowpg.savepoints WHERE stream = 'public.spend'"), 't',
	'a new savepoint is restorable');
like(sql("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'flowpg\\_sp\\_%' ORDER BY 1 LIMIT 1"),
	qr/^flowpg_sp_\d+_\d+_\d+$/, 'the savepoint keeps its WAL with a slot of its own');
stop_load($load);
oracle_all('after the load');

sql("UPDATE spend SET clicks = -1, spend = -1; UPDATE total SET n = 0");
is(sql("SELECT count(*) FROM spend WHERE clicks = -1") > 0, 1, 'result tables damaged by hand');
sql("SELECT flowpg.restore('spend', 'before')");
sql("SELECT flowpg.restore('total', 'before')");
oracle_all('after restore');
is(sql("SELECT count(*) FROM flowpg.checkpoints WHERE kind = 'restore'"), 2,
	'flowpg.checkpoints records each restore');
is(sql("SELECT count(*) FROM flowpg.checkpoints WHERE kind = 'rewrite'"), 2,
	'and the rewrite of each result table');

# 2. Restore while the load runs, then kill -9 the postmaster right after:
#    the new worker may not have rewritten the result table yet.
$load = start_load($node, 6, 2, @scripts);
sleep 2;
sql("SELECT flowpg.restore('spend', 'before')");
crash_restart($node);
stop_load($load);
oracle_all('restore under load, then kill -9 of the postmaster');

# 3. Restoring a savepoint that was restored before works again; a
#    savepoint that is dropped releases its slot and cannot be restored.
sql("SELECT flowpg.savepoint('spend', 'later')");
sql("INSERT INTO clicks (campaign, cost) SELECT g % 30, 1 FROM generate_series(1, 1000) g");
sql("SELECT flowpg.restore('spend', 'before')");
oracle_all('second restore of the same savepoint');
sql("SELECT flowpg.drop_savepoint('spend', 'before')");
is(sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'flowpg_sp_' || "
	  . "(SELECT oid FROM pg_database WHERE datname = 'postgres') || '_' || "
	  . "(SELECT id FROM flowpg.streams WHERE name = 'public.spend') || '_$sp1'"),
	0, 'drop_savepoint drops its slot');
my ($rc, $out, $err) = $node->psql('postgres', "SELECT flowpg.restore('spend', 'before')");
like($err, qr/savepoint "before" of stream "public.spend" does not exist/,
	'a dropped savepoint cannot be restored');
sql("SELECT flowpg.restore('spend', 'later')");
oracle_all('restore of the later savepoint');

#    A restore cancelled at any moment (statement_timeout) changes nothing:
#    the stream keeps its slot (it was dropped, then the savepoint's copied
#    into its name: a cancel in between left the stream stale, about once
#    in 20 such restores).
my $stale = 0;
for my $i (1 .. 60)
{
	my $ms = 1 + int(rand(60));
	$node->psql('postgres',
		"SET statement_timeout = '${ms}ms'; SELECT flowpg.restore('spend', 'later')");
	$stale++ if sql("SELECT stale FROM flowpg.streams WHERE name = 'public.spend'") eq 't';
	last if $stale;
}
is($stale, 0, 'restores cancelled at random moments leave the stream its slot');
oracle_all('after restores cancelled at random moments');

#    A savepoint whose replication slot another session takes while the
#    worker is busy (here waiting for a lock on the result table) is
#    refused as when none was free to begin with, and the worker goes on
#    (it failed, and started again, and its caller was told the worker
#    had restarted).
my $restarts = sql("SELECT restarts FROM flowpg.streams WHERE name = 'public.spend'");
my $last_sp = sql("SELECT coalesce(max(id), 0) FROM flowpg.checkpoints "
	  . "WHERE stream = 'public.spend' AND kind = 'savepoint'");
my $blocker = $node->background_psql('postgres', on_error_stop => 0);
$blocker->query_safe("BEGIN; LOCK TABLE spend IN ACCESS EXCLUSIVE MODE");
my $taker = $node->background_psql('postgres', on_error_stop => 0);
$taker->query_until(qr/asking/,
	"\\echo asking\n\\set VERBOSITY verbose\nSELECT flowpg.savepoint('spend', 'raced');\n");
$node->poll_query_until('postgres',
	"SELECT EXISTS (SELECT FROM pg_locks l JOIN flowpg.streams s ON l.pid = s.pid "
	  . "WHERE s.name = 'public.spend' AND NOT l.granted)")
  or die 'the worker did not wait for the result table';
sql("SELECT count(pg_create_physical_replication_slot('taken_' || g)) FROM generate_series(1, "
	  . "(SELECT setting::int FROM pg_settings WHERE name = 'max_replication_slots') "
	  . "- (SELECT count(*) FROM pg_replication_slots)) g");
$blocker->query_safe("COMMIT");
$blocker->quit;
$taker->quit;
like($taker->{stderr}, qr/53400: all replication slots are in use/,
	'a savepoint whose slot another session took meanwhile is refused: no slot free');
is(sql("SELECT status || ' ' || (restarts = $restarts) || ' ' || (SELECT count(*) FROM flowpg.savepoints "
	  . "WHERE name = 'raced') FROM flowpg.streams WHERE name = 'public.spend'"),
	'running true 0', '... and the worker goes on, no savepoint left half made');
is(sql("SELECT max(id) > $last_sp FROM flowpg.checkpoints WHERE stream = 'public.spend' AND kind = 'savepoint'"),
	't', '... once it took the checkpoint of the savepoint: the slot was taken after the call asked');
sql("SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots "
	  . "WHERE slot_name LIKE 'taken\\_%'");
sql("SELECT flowpg.savepoint('spend', 'raced')");
sql("INSERT INTO clicks (campaign, cost) SELECT g % 30, 2 FROM generate_series(1, 300) g");
oracle_all('after a savepoint refused for want of a slot');
sql("SELECT flowpg.drop_savepoint('spend', 'raced')");

# 4. Pause, then pg_ctl restart -m fast: still paused, then resumed it
#    catches up; pg_ctl restart -m immediate under load: all exact.
sql("SELECT flowpg.pause_stream('total')");
$node->poll_query_until('postgres',
	"SELECT status = 'paused' FROM flowpg.streams WHERE name = 'public.total'")
  or die 'total did not pause';
my $paused_n = sql("SELECT n FROM total");
sql("INSERT INTO clicks (campaign, cost) SELECT g % 30, 2 FROM generate_series(1, 500) g");
pg_ctl_restart($node, 'fast');
$node->poll_query_until('postgres',
	"SELECT status = 'paused' FROM flowpg.streams WHERE name = 'public.total'")
  or die 'total is not paused after the restart';
is(sql("SELECT n FROM total"), $paused_n, 'a paused stream stays paused across pg_ctl restart -m fast');
sql("SELECT flowpg.resume_stream('total')");
oracle_all('resumed after pg_ctl restart -m fast');

$load = start_load($node, 6, 2, @scripts);
sleep 3;
pg_ctl_restart($node, 'immediate');
stop_load($load);
oracle_all('after pg_ctl restart -m immediate under load');

# 5. flowpg.max_retained_wal bounds the WAL a stream's slots keep that it
#    has not applied (from the oldest of its worker's position and its
#    savepoints' positions, to the end of the WAL).  It does not
#    count WAL a slot keeps only because a transaction is still open, here
#    on another table (a logical slot's restart position cannot pass the
#    start of a transaction still open), while the stream applies
#    everything.  A paused stream applies nothing: past the limit it fails
#    for good, with its results kept and marked stale.  Each limit is set
#    a few MB above what the stream has not applied already.
sql("SELECT flowpg.drop_stream('total')");
delete $streams{total};
sql("SELECT flowpg.drop_savepoint('spend', 'later')");
sub unapplied_mb
{
	return int(sql("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), min(confirmed_flush_lsn)) "
		  . "FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%'") / (1024 * 1024) + 1);
}
# set flowpg.max_retained_wal to $mb MB above what the streams keep now
my $limit;
sub limit_above
{
	my ($mb) = @_;
	$limit = $mb + unapplied_mb();
	sql("ALTER SYSTEM SET flowpg.max_retained_wal = '${limit}MB'");
	$node->reload;
	return;
}
# write WAL past the limit: $stream, which applies none of it, fails for
# good, and says why
sub fails_past_limit
{
	my ($stream, $label) = @_;
	sql("INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, 30000) g");
	$node->poll_query_until('postgres',
		"SELECT status = 'failed' AND stale FROM flowpg.streams WHERE name = 'public.$stream'")
	  or die "$stream did not fail for good past flowpg.max_retained_wal";
	like(sql("SELECT last_error FROM flowpg.streams WHERE name = 'public.$stream'"),
		qr/kept \d+ (?:kB|MB) of WAL it has not applied, more than flowpg.max_retained_wal \($limit MB\)/,
		$label);
	return;
}
my $open = $node->background_psql('postgres', on_error_stop => 0);
$open->query_safe("BEGIN; INSERT INTO other VALUES (0, 'open')");
limit_above(4);
# about 1 MB of WAL at a time, each caught up with before the next (the
# slot's confirmed position follows the stream's checkpoints)
for my $burst (1 .. $limit + 4)
{
	sql("INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, 4000) g");
	sql("INSERT INTO clicks (campaign, cost) SELECT g % 30, 3 FROM generate_series(1, 10) g");
	wait_stream($node, 'spend');
}
$node->poll_query_until('postgres',
	"SELECT retained_wal > $limit * 1024 * 1024 FROM flowpg.streams WHERE name = 'public.spend'")
  or die 'the open transaction did not hold the slot back';
sleep 2;    # the worker compares once a second
is(sql("SELECT status || ' ' || stale FROM flowpg.streams WHERE name = 'public.spend'"),
	'running false',
	'WAL kept only for a transaction still open does not fail a stream past flowpg.max_retained_wal');
$open->query_safe("COMMIT");
$open->quit;
oracle_ok($node, 'spend', $streams{spend}, 'after the open transaction commits');
# Nor does the WAL the stream has applied that its slot keeps until its
# next checkpoint confirms it (a checkpoint interval's worth of all the
# server's WAL): with an hour between checkpoints, a burst of WAL on
# another table past the limit, the stream keeping up, it runs on (it
# failed for good, as did caught-up streams of other databases).
sql("SELECT flowpg.set_checkpoint_interval('spend', '1 hour')");
wait_stream($node, 'spend');
limit_above(4);
sql("INSERT INTO clicks (campaign, cost) VALUES (7, 7)");
for my $burst (1 .. $limit + 4)
{
	sql("INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, 4000) g");
}
$node->poll_query_until('postgres',
	"SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), min(confirmed_flush_lsn)) > $limit * 1024 * 1024 "
	  . "FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%'")
  or die 'the burst did not pass the limit';
sleep 3;    # the worker compares once a second
is(sql("SELECT status || ' ' || stale FROM flowpg.streams WHERE name = 'public.spend'"),
	'running false',
	'WAL applied but not yet confirmed by a checkpoint does not fail a stream past flowpg.max_retained_wal');
sql("SELECT flowpg.set_checkpoint_interval('spend', NULL)");
oracle_ok($node, 'spend', $streams{spend}, 'after the burst');
# Nor does the WAL written while the stream's worker started again (here
# terminated, then waiting for a lock on the source), which it reads past
# at once: it runs on (it failed for good on its first round).
limit_above(4);
my $locker = $node->background_psql('postgres', on_error_stop => 0);
$locker->query_safe("BEGIN; LOCK TABLE clicks IN ACCESS EXCLUSIVE MODE");
sql("SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.spend'");
for my $burst (1 .. $limit + 4)
{
	sql("INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, 4000) g");
}
$locker->query_safe("COMMIT");
$locker->quit;
oracle_ok($node, 'spend', $streams{spend}, 'after a burst while its worker started again');
is(sql("SELECT status || ' ' || stale FROM flowpg.streams WHERE name = 'public.spend'"),
	'running false',
	'WAL written while the worker started again does not fail it past flowpg.max_retained_wal');
sql("SELECT flowpg.savepoint('spend', 'last')");
sql("SELECT flowpg.pause_stream('spend')");
$node->poll_query_until('postgres',
	"SELECT status = 'paused' FROM flowpg.streams WHERE name = 'public.spend'")
  or die 'spend did not pause';
limit_above(2);
my $before = sql("SELECT sum(clicks) FROM spend");
my $offset = -s $node->logfile;
fails_past_limit('spend', 'the failure says why');
ok($node->log_contains('WARNING:  flowpg: stream "public.spend" kept', $offset),
	'and the server log says it loudly');
# (dropped after the failure is recorded: a worker may wait for its
# replication origin, which its checkpoint writer holds while it commits)
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%'"),
	'its slots are gone: no WAL is kept for it any more');
is(sql("SELECT sum(clicks) FROM spend"), $before, 'its results stay as they were');
($rc, $out, $err) = $node->psql('postgres', "SELECT flowpg.wait('spend')");
like($err, qr/stream "public.spend" has failed for good/, 'flowpg.wait refuses a stale stream');
($rc, $out, $err) = $node->psql('postgres', "SELECT flowpg.resume_stream('spend')");
like($err, qr/stream "public.spend" has failed for good/,
	'resume_stream of the paused stale stream says it cannot resume');
($rc, $out, $err) = $node->psql('postgres', "SELECT flowpg.restore('spend', 'last')");
like($err, qr/can no longer be restored/, 'restore refuses: the WAL is gone');
$node->restart;
is(sql("SELECT status || ' ' || stale FROM flowpg.streams WHERE name = 'public.spend'"),
	'failed true', 'still failed and stale after a restart');
# flowpg.rebuild_stream brings a stale stream back, rebuilt from its
# source table while rows come, exact again
sql("ALTER SYSTEM RESET flowpg.max_retained_wal");
$node->reload;
$load = start_load($node, 4, 2, @scripts);
sleep 1;
sql("SELECT flowpg.rebuild_stream('spend')");
sql("SELECT flowpg.resume_stream('spend')");   # it was paused, and stays so
stop_load($load);
oracle_ok($node, 'spend', $streams{spend}, 'a stale stream rebuilt under load');
is(sql("SELECT status || ' ' || stale || ' ' || (SELECT count(*) FROM flowpg.savepoints) "
	  . "FROM flowpg.streams WHERE name = 'public.spend'"),
	'running false 0', 'it runs again, not stale, without its savepoints');
# A stream whose worker fails as it starts, every time (here its owner
# lost SELECT on the source), applies nothing and never reaches the
# running worker's check: after two such failures in a row, the WAL its
# slots keep counts from its slot's confirmed position, and past the limit
# it fails for good too (its slots kept the WAL until the cause was fixed).
sql(q{CREATE ROLE flowpg_owner LOGIN;
	GRANT SELECT ON clicks TO flowpg_owner;
	GRANT CREATE ON SCHEMA public TO flowpg_owner;
	SET ROLE flowpg_owner;
	SELECT flowpg.create_stream('owned', 'SELECT campaign, count(*) AS n FROM clicks GROUP BY campaign');});
my $owned = q{SELECT campaign, count(*) AS n FROM clicks GROUP BY campaign};
wait_stream($node, 'owned');
sql("REVOKE SELECT ON clicks FROM flowpg_owner");
sql("INSERT INTO clicks (campaign, cost) VALUES (8, 8)");
$node->poll_query_until('postgres',
	"SELECT status = 'failed' AND last_error LIKE 'permission denied%' FROM flowpg.streams WHERE name = 'public.owned'")
  or die 'owned did not fail on the revoked privilege';
limit_above(2);
fails_past_limit('owned', 'a stream failing as it starts fails for good past flowpg.max_retained_wal');
is(sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%'"),
	1, 'its slot is gone: only the running stream keeps one');
is(sql("SELECT status || ' ' || stale FROM flowpg.streams WHERE name = 'public.spend'"),
	'running false', 'the running stream runs on');
sql("ALTER SYSTEM RESET flowpg.max_retained_wal");
$node->reload;
sql("GRANT SELECT ON clicks TO flowpg_owner");
sql("SET ROLE flowpg_owner; SELECT flowpg.rebuild_stream('owned')");
oracle_ok($node, 'owned', $owned, 'rebuilt once the privilege is back');
sql("SET ROLE flowpg_owner; SELECT flowpg.drop_stream('owned')");
sql("REVOKE ALL ON clicks FROM flowpg_owner; REVOKE ALL ON SCHEMA public FROM flowpg_owner; DROP ROLE flowpg_owner");
# A stream whose worker fails at each checkpoint (here its owner's
# sessions became read-only) applies the WAL but keeps all of it: after
# two such workers in a row, the WAL counts from its slot's confirmed
# position too, and past the limit it fails for good (it kept the WAL for
# as long as it failed).
sql(q{CREATE ROLE flowpg_ro LOGIN;
	GRANT SELECT ON clicks TO flowpg_ro;
	GRANT CREATE ON SCHEMA public TO flowpg_ro;
	SET ROLE flowpg_ro;
	SELECT flowpg.create_stream('readonly', 'SELECT campaign, count(*) AS n FROM clicks GROUP BY campaign');});
wait_stream($node, 'readonly');
sql("ALTER ROLE flowpg_ro SET default_transaction_read_only = on");
sql("SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.readonly'");
sql("INSERT INTO clicks (campaign, cost) VALUES (9, 9)");
$node->poll_query_until('postgres',
	"SELECT status = 'failed' AND last_error LIKE '%read-only transaction' FROM flowpg.streams WHERE name = 'public.readonly'")
  or die 'readonly did not fail at its checkpoint';
limit_above(2);
fails_past_limit('readonly', 'a stream failing at each checkpoint fails for good past flowpg.max_retained_wal');
sql("ALTER SYSTEM RESET flowpg.max_retained_wal");
$node->reload;
sql("ALTER ROLE flowpg_ro RESET default_transaction_read_only");
sql("SET ROLE flowpg_ro; SELECT flowpg.drop_stream('readonly')");
sql("REVOKE ALL ON clicks FROM flowpg_ro; REVOKE ALL ON SCHEMA public FROM flowpg_ro; DROP ROLE flowpg_ro");

sql("SELECT flowpg.drop_stream('spend')");
is(sql("SELECT count(*) FROM flowpg.stream"), 0, 'a rebuilt stream can be dropped');

# 6. A stream's slot that goes without flowpg: dropped by hand (the stream
#    shows as failed and stale at once, and flowpg.wait says why), or
#    invalidated by PostgreSQL's max_slot_wal_keep_size (the worker finds
#    it so, fails the stream for good and drops its slots).  Either way the
#    WAL it had not applied may be gone.
sql("ALTER SYSTEM RESET flowpg.max_retained_wal");
$node->reload;
sql("CREATE TABLE taps (campaign int)");
for my $name (qw(byhand keepsize))
{
	sql("SELECT flowpg.create_stream('$name', 'SELECT campaign, count(*) AS n FROM taps GROUP BY campaign')");
}
sql("INSERT INTO taps VALUES (1)");
wait_stream($node, $_) for qw(byhand keepsize);
sql("SELECT flowpg.savepoint('byhand', 'kept')");
sql("INSERT INTO taps VALUES (2)");
wait_stream($node, 'byhand');
my $slot_of = q{SELECT format('flowpg_%s_%s', d.oid, s.id)
	FROM flowpg.streams s, pg_database d
	WHERE s.name = 'public.byhand' AND d.datname = current_database()};
my $dropped_slot = 0;
for (1 .. 20)
{
	# the worker lets go of the slot when stopped (and its next start is 1 s away)
	($rc) = $node->psql('postgres', qq{
		SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.byhand';
		SELECT pg_sleep(0.2);
		SELECT pg_drop_replication_slot(($slot_of));});
	if ($rc == 0) { $dropped_slot = 1; last; }
}
ok($dropped_slot, "a stream's slot dropped by hand");
is(sql("SELECT status || ' ' || stale FROM flowpg.streams WHERE name = 'public.byhand'"),
	'failed true', 'the stream shows as failed and stale');
like(sql("SELECT last_error FROM flowpg.streams WHERE name = 'public.byhand'"),
	qr/replication slot "flowpg_\d+_\d+" was dropped or invalidated outside flowpg/,
	'last_error names the slot');
($rc, $out, $err) = $node->psql('postgres', "SELECT flowpg.wait('byhand')");
like($err, qr/stream "public.byhand" has lost its replication slot/, 'flowpg.wait says why');
is(sql("SELECT sum(n) FROM byhand"), 2, 'its results stay as they were');
# a savepoint whose slot still keeps its WAL brings it back
sql("INSERT INTO taps VALUES (3)");
sql("SELECT flowpg.restore('byhand', 'kept')");
oracle_ok($node, 'byhand', 'SELECT campaign, count(*) AS n FROM taps GROUP BY campaign',
	'restored to a savepoint after its slot was dropped');
# a running stream rebuilt, and the server killed before its rebuild is
# done: the rebuild is done after the restart (the new worker finds the
# stream to be rebuilt, and the old slot is replaced)
sql("SELECT flowpg.savepoint('byhand', 'again')");
sql("INSERT INTO taps SELECT g % 5 FROM generate_series(1, 100000) g");
sql("SELECT flowpg.rebuild_stream('byhand')");
crash_restart($node);
oracle_ok($node, 'byhand', 'SELECT campaign, count(*) AS n FROM taps GROUP BY campaign',
	'rebuilt across kill -9');
is(sql("SELECT count(*) FILTER (WHERE slot_name LIKE 'flowpg\\_sp\\_%') || ' ' || count(*) "
	  . "FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%'"),
	'0 2', 'no savepoint slot is left, and each stream has its one slot');
sql("SELECT flowpg.drop_stream('byhand')");

sql("ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'");
$node->reload;
sql("SELECT flowpg.pause_stream('keepsize')");
$node->poll_query_until('postgres',
	"SELECT status = 'paused' FROM flowpg.streams WHERE name = 'public.keepsize'")
  or die 'keepsize did not pause';
sql("INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, 300000) g");
sql("CHECKPOINT");
$node->poll_query_until('postgres', q{SELECT status = 'failed' AND stale
	AND last_error LIKE '%was invalidated: PostgreSQL removed WAL the stream had not applied%'
	FROM flowpg.streams WHERE name = 'public.keepsize'})
  or die 'keepsize did not fail after its slot was invalidated';
pass('a stream whose slot PostgreSQL invalidated fails for good, saying why');
ok($node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%'"),
	'its slot is gone');
sql("ALTER SYSTEM RESET max_slot_wal_keep_size");
$node->restart;
is(sql("SELECT status || ' ' || stale FROM flowpg.streams WHERE name = 'public.keepsize'"),
	'failed true', 'still failed and stale after a restart');
sql("SELECT flowpg.rebuild_stream('keepsize')");
sql("SELECT flowpg.resume_stream('keepsize')");
oracle_ok($node, 'keepsize', 'SELECT campaign, count(*) AS n FROM taps GROUP BY campaign',
	'a stream whose slot PostgreSQL invalidated, rebuilt');
sql("SELECT flowpg.drop_stream('keepsize')");

# The operators run with the catalog as it is (a function replaced is
# used at once); a function that opens the source takes in the
# invalidations sent since, and when the source was rewritten meanwhile (a
# column the stream does not use changed type), decoding read the next rows
# of the transaction with the new columns: 101 keys instead of 5, sums
# garbage, silently.  The function waits for an advisory lock held here
# while the source is rewritten.
sql(q{CREATE TABLE rw_src (u int, k int, v int);
	CREATE FUNCTION rw_f(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
	BEGIN
	    PERFORM pg_advisory_lock_shared(4242);
	    PERFORM pg_advisory_unlock_shared(4242);
	    PERFORM 1 FROM public.rw_src WHERE false;
	    RETURN x;
	END $$});
sql("SELECT flowpg.create_stream('rw_sums', 'SELECT k, sum(rw_f(v)) AS s, count(*) AS c FROM rw_src GROUP BY k')");
sql("SELECT flowpg.pause_stream('rw_sums')");
sql(q{DO $$ BEGIN FOR i IN 1 .. 30 LOOP INSERT INTO rw_src SELECT 7, g % 5, g FROM generate_series(1, 100) g; COMMIT; END LOOP; END $$});
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT pg_advisory_lock(4242)');
sql("SELECT flowpg.resume_stream('rw_sums')");
$node->poll_query_until('postgres', q{SELECT EXISTS (SELECT FROM pg_stat_activity
	WHERE backend_type = 'flowpg worker' AND wait_event = 'advisory')})
  or die 'the worker did not reach the function';
sql("ALTER TABLE rw_src ALTER COLUMN u TYPE bigint");
$holder->query_safe('SELECT pg_advisory_unlock(4242)');
$holder->quit;
sql("INSERT INTO rw_src SELECT 8, g % 5, g FROM generate_series(1, 100) g");
oracle_ok($node, 'rw_sums', 'SELECT k, sum(v) AS s, count(*) AS c FROM rw_src GROUP BY k',
	'a source rewritten while a function of the stream opens it');
is(sql("SELECT count(*) || ' ' || sum(c) FROM rw_sums"), '5 3100', '... every row read right');
sql("SELECT flowpg.drop_stream('rw_sums')");

# A worker terminated (pg_terminate_backend: a FATAL, no error of the
# stream's) waits out a back-off that doubles with each restart in a row:
# flowpg.wait starts the next one at once, as it does for a failed worker
# (it waited the back-off out: 16 s at the fifth, a timeout here), and a
# worker that ran longer than the longest back-off counts as no failure.
sql(q{CREATE TABLE bo_src (k int);
	SELECT flowpg.create_stream('bo', 'SELECT k, count(*) AS n FROM bo_src GROUP BY k')});
sql("INSERT INTO bo_src VALUES (1)");
sql("SELECT flowpg.wait('bo')");
# (WAL written elsewhere, and no row: the stream publishes no checkpoint)
sql("CREATE TABLE bo_other (a int)");
for my $round (1 .. 6)
{
	$node->poll_query_until('postgres',
		"SELECT status = 'running' AND pid IS NOT NULL FROM flowpg.streams WHERE name = 'public.bo'")
	  or die 'bo did not run';
	sql("SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.bo'");
	sql("INSERT INTO bo_other VALUES ($round)");
	sql("SELECT flowpg.wait('bo', '10 s')");
}
sql("INSERT INTO bo_src VALUES (2)");
sql("SELECT flowpg.wait('bo', '10 s')");
is(sql("SELECT count(*) FROM bo"), '2', 'a worker terminated six times in a row: each wait starts the next at once');
sql("SELECT flowpg.drop_stream('bo')");
sql("DROP TABLE bo_src, bo_other");

$node->stop;
done_testing();

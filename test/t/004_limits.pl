# Resource limits: state that outgrows flowpg.state_memory stops the stream
# with a clear error and loses nothing; more streams than flowpg.max_streams
# or than free replication slots is a clear error at create time, leaving
# nothing behind; a transaction of several million rows (far beyond
# flowpg.decoding_work_mem, so spilled to disk) is applied exactly once;
# a stream that cannot run (no background worker slot, an owner who may
# not log in) is held to flowpg.max_retained_wal by the launcher.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $node = new_node('limits',
	extra_conf => "flowpg.state_memory = 4MB\nflowpg.max_streams = 3\nflowpg.decoding_work_mem = 1MB\n");

# Near the limit: the buffer a stream's checkpoint writer gets its copies
# in is given back before the state is refused room (20,000 keys fit in
# 4 MB, not with the copy of 15,000 kept), and a checkpoint whose copy does
# not fit is written by the worker itself, and the log says so.
$node->safe_psql('postgres', 'CREATE TABLE nev (k int, v int)');
my $nq = 'SELECT k, count(*) AS n, sum(v) AS s FROM nev GROUP BY k';
$node->safe_psql('postgres', "SELECT flowpg.create_stream('near', '$nq')");
for my $n (15000, 20000)
{
	$node->safe_psql('postgres',
		"INSERT INTO nev SELECT g, g FROM generate_series(1, $n) g");
	oracle_ok($node, 'near', $nq, "$n keys in 4 MB");
}
ok( $node->log_contains(
		'stream "public.near" writes its checkpoints itself: flowpg.state_memory has no room for its checkpoint writer\'s copy of 20000 keys'),
	'a checkpoint whose copy does not fit is the worker\'s, and the log says so');
$node->safe_psql('postgres',
	'INSERT INTO nev SELECT g, 1 FROM generate_series(1, 100) g');
oracle_ok($node, 'near', $nq, 'the next checkpoint, small');
is($node->safe_psql('postgres',
		q{SELECT status, restarts, last_error IS NULL, writer_pid IS NOT NULL
		FROM flowpg.streams WHERE name = 'public.near'}),
	'running|0|t|t', 'the stream ran all along, with its writer');
$node->safe_psql('postgres', "SELECT flowpg.drop_stream('near')");
$node->safe_psql('postgres', 'CREATE TABLE ev (k int, v int)');
my $q = 'SELECT k, count(*) AS n, sum(v) AS s FROM ev GROUP BY k';
$node->safe_psql('postgres', "SELECT flowpg.create_stream('big', '$q')");

# 200,000 keys do not fit in 4 MB
$node->safe_psql('postgres',
	'INSERT INTO ev SELECT g, g FROM generate_series(1, 200000) g');
$node->poll_query_until('postgres',
	"SELECT last_error LIKE 'stream state exceeds flowpg.state_memory%' FROM flowpg.streams WHERE name = 'public.big'")
  or die 'the stream did not fail on flowpg.state_memory';
my ($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT flowpg.wait('big', '120 s')");
like($err, qr/55000: stream "public.big" has failed/, 'wait says the stream failed');
like($err, qr/exceeds flowpg.state_memory/, '... and why');
ok($node->log_contains('HINT:  Raise flowpg.state_memory'), 'the log has the hint');

# raising the limit lets it finish, exactly
$node->safe_psql('postgres',
	"ALTER SYSTEM SET flowpg.state_memory = '256MB'; SELECT pg_reload_conf()");
$node->safe_psql('postgres',
	'INSERT INTO ev SELECT g, 1 FROM generate_series(1, 1000) g');
oracle_ok($node, 'big', $q, 'after raising flowpg.state_memory');

# several million rows in one transaction, spilled by the reorder buffer
# (without the stream over distinct keys, whose state would not fit)
$node->safe_psql('postgres', "SELECT flowpg.drop_stream('big')");
$node->safe_psql('postgres', 'TRUNCATE ev');
$node->safe_psql('postgres',
	"SELECT flowpg.create_stream('huge', 'SELECT k % 100 AS bucket, count(*) AS n, sum(v) AS s FROM ev GROUP BY k % 100')");
$node->safe_psql('postgres',
	'INSERT INTO ev SELECT g, g % 7 FROM generate_series(1, 3000000) g');
oracle_ok($node, 'huge',
	'SELECT k % 100 AS bucket, count(*) AS n, sum(v) AS s FROM ev GROUP BY k % 100',
	'one transaction of 3,000,000 rows');

# the state log: many small checkpoints, compaction, and a restore that
# replays segments where later entries of a key replace earlier ones
$node->safe_psql('postgres', "SELECT flowpg.drop_stream('huge')");
$node->safe_psql('postgres', 'TRUNCATE ev');
$node->safe_psql('postgres',
	"SELECT flowpg.create_stream('logged', 'SELECT k % 200 AS k200, count(*) AS n, sum(v) AS s FROM ev GROUP BY k % 200')");
for my $round (1 .. 30)
{
	$node->safe_psql('postgres',
		"INSERT INTO ev SELECT g, $round FROM generate_series(1, 400) g");
	$node->safe_psql('postgres', "SELECT flowpg.checkpoint('logged')");
}
my $logged = $node->safe_psql('postgres',
	"SELECT sum(keys) FROM flowpg.state WHERE stream_id = (SELECT id FROM flowpg.streams WHERE name = 'public.logged')");
cmp_ok($logged, '<', 30 * 200, "the state log was compacted ($logged entries for 200 keys after 30 checkpoints)");
crash_restart($node);
oracle_ok($node, 'logged',
	'SELECT k % 200 AS k200, count(*) AS n, sum(v) AS s FROM ev GROUP BY k % 200',
	'restored from a compacted state log');

# a state log whose last segment was cut short: the restore stops with
# data_corrupted (no read past the segment, no crash) and the stream says
# why; once the segment is whole again, the next attempt restores it
my $last_segment = "stream_id = (SELECT id FROM flowpg.streams WHERE name = 'public.logged')
	AND (checkpoint_id, seq) = (SELECT checkpoint_id, seq FROM flowpg.state
	  WHERE stream_id = (SELECT id FROM flowpg.streams WHERE name = 'public.logged')
	  ORDER BY checkpoint_id DESC, seq DESC LIMIT 1)";
$node->safe_psql('postgres', "CREATE TABLE cut AS SELECT * FROM flowpg.state WHERE $last_segment");
$node->safe_psql('postgres', "UPDATE flowpg.state SET data = substring(data FOR 10) WHERE $last_segment");
crash_restart($node);
$node->poll_query_until('postgres',
	"SELECT last_error = 'checkpointed state of stream \"public.logged\" is corrupted'
	   FROM flowpg.streams WHERE name = 'public.logged'")
  or die 'the stream did not report its cut state log';
pass('a state log cut short stops the restore with its error');
ok($node->log_contains('ERROR:  checkpointed state of stream "public.logged" is corrupted'),
	'... in the log too');
ok($node->log_contains('HINT:  Restore the stream from a savepoint with flowpg.restore, or rebuild it'),
	'... with a hint');
$node->safe_psql('postgres', "UPDATE flowpg.state s SET data = c.data FROM cut c
	WHERE (s.stream_id, s.checkpoint_id, s.seq) = (c.stream_id, c.checkpoint_id, c.seq)");
$node->safe_psql('postgres', 'DROP TABLE cut');
oracle_ok($node, 'logged',
	'SELECT k % 200 AS k200, count(*) AS n, sum(v) AS s FROM ev GROUP BY k % 200',
	'restored once the segment is whole again');

# compaction of a state log much larger than a checkpoint's changes: no
# checkpoint writes every key; the older segments go a slice at a time,
# each checkpoint writing at most its dirty keys and as many others (and
# 1,000 more); a restore in the middle of a compaction and after it is
# exact.  20,000 keys, 2,000 of them changed per checkpoint: the
# log passes twice the keys after 11 checkpoints
$node->safe_psql('postgres', 'CREATE TABLE ev2 (k int, v int)');
my $q2 = 'SELECT k, count(*) AS n, sum(v) AS s FROM ev2 GROUP BY k';
$node->safe_psql('postgres', "SELECT flowpg.create_stream('swept', '$q2')");
$node->safe_psql('postgres', 'INSERT INTO ev2 SELECT g, 0 FROM generate_series(0, 19999) g');
$node->safe_psql('postgres', "SELECT flowpg.checkpoint('swept')");
my $swept_id = "(SELECT id FROM flowpg.streams WHERE name = 'public.swept')";
my $first = $node->safe_psql('postgres',
	"SELECT min(checkpoint_id) FROM flowpg.state WHERE stream_id = $swept_id");
my $most = 0;
for my $round (1 .. 30)
{
	my $from = ($round * 2000) % 20000;
	$node->safe_psql('postgres',
		"INSERT INTO ev2 SELECT g, $round FROM generate_series($from, $from + 1999) g");
	my $id = $node->safe_psql('postgres', "SELECT flowpg.checkpoint('swept')");
	my $keys = $node->safe_psql('postgres', "SELECT keys FROM flowpg.checkpoints WHERE id = $id");
	$most = $keys if $keys > $most;
	if ($round == 13)
	{
		crash_restart($node);
		oracle_ok($node, 'swept', $q2, 'restored in the middle of a compaction');
	}
}
cmp_ok($most, '<=', 5000,
	"no checkpoint wrote more than twice its 2,000 changed keys and 1,000 ($most at most)");
my ($entries, $oldest) = split /\|/, $node->safe_psql('postgres',
	"SELECT sum(keys), min(checkpoint_id) FROM flowpg.state WHERE stream_id = $swept_id");
cmp_ok($oldest, '>', $first, 'the compaction deleted the older segments');
cmp_ok($entries, '<', 4 * 20000, "the log stayed under four times the keys ($entries entries)");
crash_restart($node);
oracle_ok($node, 'swept', $q2, 'restored after compactions');

# the state log keeps where each key's row is: after the restart, the rows
# of 2,000 restored keys are updated by TID, without looking them up by key
# through the index (the server's crash emptied the statistics)
# change keys 5000 to 6999 and take a checkpoint; returns how many rows of
# swept the worker updated, inserted, and looked up through an index, in
# that checkpoint
sub change_swept
{
	my ($v) = @_;
	my $stats = "SELECT t.n_tup_upd, t.n_tup_ins, coalesce(sum(i.idx_scan), 0)
		FROM pg_stat_user_tables t LEFT JOIN pg_stat_user_indexes i USING (relid)
		WHERE t.relname = 'swept' GROUP BY 1, 2";
	my @before = split /\|/, $node->safe_psql('postgres', $stats);
	$node->safe_psql('postgres', "INSERT INTO ev2 SELECT g, $v FROM generate_series(5000, 6999) g");
	$node->safe_psql('postgres', "SELECT flowpg.checkpoint('swept')");
	$node->poll_query_until('postgres',
		"SELECT n_tup_upd >= $before[0] + 2000 FROM pg_stat_user_tables WHERE relname = 'swept'")
	  or die 'the worker\'s statistics did not arrive';
	my @after = split /\|/, $node->safe_psql('postgres', $stats);
	return map { $after[$_] - $before[$_] } 0 .. 2;
}
my (undef, $inserted, $scans) = change_swept(1);
is($scans, 0, 'after a restart, restored keys\' rows are updated where the state log says');
is($inserted, 0, '... with no insert tried');
# VACUUM FULL moves every row: the TIDs are wrong, the rows are found by key
$node->safe_psql('postgres', 'VACUUM FULL swept');
(undef, $inserted, $scans) = change_swept(2);
cmp_ok($scans, '>=', 1, 'rows moved by VACUUM FULL are looked up by key');
is($inserted, 0, '... and updated, with no insert tried');
oracle_ok($node, 'swept', $q2, 'after VACUUM FULL of the result table');
$node->safe_psql('postgres', "SELECT flowpg.drop_stream('swept')");

# keys that change one at a time on their pages: a page where earlier
# checkpoints left a version of its row each time fills up, and is then
# pruned before the update, which stays on the page (HOT).  1,000 keys of
# narrow rows, about 93 to the half page the result table leaves free;
# each checkpoint changes 10 keys 100 apart (one a page), 150 times, so
# every page runs out of room about two thirds of the way
$node->safe_psql('postgres', 'CREATE TABLE ev3 (k int)');
$node->safe_psql('postgres',
	"SELECT flowpg.create_stream('narrow', 'SELECT k, count(*) AS n FROM ev3 GROUP BY k')");
$node->safe_psql('postgres', 'INSERT INTO ev3 SELECT g FROM generate_series(0, 999) g');
$node->safe_psql('postgres', "SELECT flowpg.checkpoint('narrow')");
for my $round (1 .. 150)
{
	my $r = $round % 100;
	$node->safe_psql('postgres',
		"INSERT INTO ev3 SELECT $r + 100 * j FROM generate_series(0, 9) j;
		 SELECT flowpg.checkpoint('narrow')");
}
$node->poll_query_until('postgres',
	"SELECT n_tup_upd >= 1500 FROM pg_stat_user_tables WHERE relname = 'narrow'")
  or die 'the worker\'s statistics did not arrive';
is($node->safe_psql('postgres',
	"SELECT n_tup_upd - n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'narrow'"),
	'0', 'rows changed one to a page stay on their pages (every update HOT)');
oracle_ok($node, 'narrow', 'SELECT k, count(*) AS n FROM ev3 GROUP BY k',
	'after 150 checkpoints of keys changed one to a page');
$node->safe_psql('postgres', "SELECT flowpg.drop_stream('narrow')");

# A stream whose rebuild failed after it had dropped the stream's slot
# keeps its flowpg.max_streams entry (its rebuild is tried again): a new
# stream past the limit is refused, as it could not run (it was created,
# and then waited for an entry that never came free).
$node->safe_psql('postgres', q{
	CREATE TABLE evbad (k int, v int);
	INSERT INTO evbad VALUES (1, 0);
	SELECT flowpg.create_stream('bad', 'SELECT k, sum(10 / v) AS s FROM evbad GROUP BY k');
	SELECT flowpg.create_stream('filler', 'SELECT count(*) AS n FROM ev');
});
$node->safe_psql('postgres', q{SELECT flowpg.rebuild_stream('bad')});
$node->poll_query_until('postgres', q{SELECT last_error LIKE '%division by zero%'
	AND (SELECT count(*) = 2 FROM pg_replication_slots)
	FROM flowpg.streams WHERE name = 'public.bad'})
  or die 'the rebuild of bad did not fail';
($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT flowpg.create_stream('fourth', 'SELECT count(*) AS n FROM ev')");
like($err, qr/53400: cannot create more than 3 streams/,
	'a stream being rebuilt without a slot counts against flowpg.max_streams');
$node->safe_psql('postgres', 'DELETE FROM evbad');
wait_stream($node, 'bad');
is($node->safe_psql('postgres', 'TABLE bad'), '', 'its rebuild succeeds once the row is gone');
$node->safe_psql('postgres', "SELECT flowpg.drop_stream('$_')") for qw(bad filler);

# flowpg.max_streams = 3: the fourth stream is refused
$node->safe_psql('postgres', "SELECT flowpg.create_stream('second', 'SELECT count(*) AS n FROM ev')");
$node->safe_psql('postgres', "SELECT flowpg.create_stream('third', 'SELECT count(*) AS n FROM ev')");
($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT flowpg.create_stream('fourth', 'SELECT count(*) AS n FROM ev')");
like($err, qr/53400: cannot create more than 3 streams/, 'flowpg.max_streams is enforced');
like($err, qr/HINT:  .*raise flowpg.max_streams/, '... with a hint naming it');
is($node->safe_psql('postgres',
	"SELECT (SELECT count(*) FROM pg_replication_slots) || '/' || (SELECT count(*) FROM flowpg.streams) || '/' || (to_regclass('fourth') IS NULL)"),
	'3/3/true', '... and nothing is left behind');

my $base = $node->safe_psql('postgres', 'SELECT count(*) FROM ev');  # before second and third

# A stream without a slot (its slot dropped by hand: stale) is not
# rebuilt while as many streams as flowpg.max_streams run: it could not
# run either.  Its worker is stopped, then the slot dropped before the
# launcher starts it again.
my $third_slot = $node->safe_psql('postgres',
	"SELECT 'flowpg_' || (SELECT oid FROM pg_database WHERE datname = 'postgres') || '_' || id "
	  . "FROM flowpg.streams WHERE name = 'public.third'");
my $dropped = 0;
for my $try (1 .. 50)
{
	$node->safe_psql('postgres',
		"SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.third' AND pid IS NOT NULL");
	($rc, $out, $err) = $node->psql('postgres',
		"SELECT pg_sleep(0.1); SELECT pg_drop_replication_slot('$third_slot')");
	if ($rc == 0) { $dropped = 1; last; }
}
ok($dropped, "the slot of stream third dropped by hand");
$node->poll_query_until('postgres',
	"SELECT stale FROM flowpg.streams WHERE name = 'public.third'")
  or die 'third is not stale';
$node->safe_psql('postgres', "SELECT flowpg.create_stream('fourth', 'SELECT count(*) AS n FROM ev')");
($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT flowpg.rebuild_stream('third')");
like($err, qr/53400: cannot rebuild stream "public.third": 3 streams run already/,
	'a stale stream is not rebuilt past flowpg.max_streams');
$node->safe_psql('postgres', "SELECT flowpg.drop_stream('fourth')");
$node->safe_psql('postgres', "SELECT flowpg.rebuild_stream('third')");
oracle_ok($node, 'third', 'SELECT count(*) AS n FROM ev', 'third, rebuilt once a stream was dropped');

# flowpg.max_streams lowered below the streams there are: the stream left
# without an entry says so (in flowpg.streams, and flowpg.wait raises it at
# once instead of timing out), the launcher warns once, and the stream,
# whose slot kept its WAL, catches up exactly when the setting is raised.
$node->safe_psql('postgres', 'ALTER SYSTEM SET flowpg.max_streams = 2');
$node->restart;
$node->safe_psql('postgres', 'INSERT INTO ev SELECT g, g FROM generate_series(1, 500) g');
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM flowpg.streams WHERE status = 'failed' AND NOT stale
	    AND last_error LIKE 'all 2 flowpg.max_streams entries are taken by other streams%'")
  or die 'no stream says it has no entry';
my $left_out = $node->safe_psql('postgres',
	"SELECT name FROM flowpg.streams WHERE status = 'failed'");
($rc, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT flowpg.wait('$left_out', '30 s')");
like($err, qr/53400: stream "\Q$left_out\E" cannot run: all 2 flowpg.max_streams entries are taken/,
	'wait on the stream without an entry raises why');
like($err, qr/HINT:  Raise flowpg.max_streams and restart the server/, '... with a hint');
$node->safe_psql('postgres', 'SELECT pg_sleep(2)');
my $warnings = () = slurp_file($node->logfile) =~
  /WARNING:  flowpg cannot run stream \d+ of database "postgres": flowpg.max_streams \(2\)/g;
is($warnings, 1, 'the launcher warns once, not at every round');
$node->safe_psql('postgres', 'ALTER SYSTEM SET flowpg.max_streams = 3');
$node->restart;
$node->safe_psql('postgres', 'INSERT INTO ev SELECT g, g FROM generate_series(1, 500) g');
oracle_ok($node, 'logged',
	'SELECT k % 200 AS k200, count(*) AS n, sum(v) AS s FROM ev GROUP BY k % 200',
	'logged, after flowpg.max_streams was raised again');
oracle_ok($node, 'second', "SELECT count(*) - $base AS n FROM ev",
	'second, after flowpg.max_streams was raised again');
# (third, rebuilt, counts every row of the table)
oracle_ok($node, 'third', 'SELECT count(*) AS n FROM ev',
	'third, after flowpg.max_streams was raised again');
# left without an entry while the WAL grows past flowpg.max_retained_wal:
# the launcher drops its slots (see below for streams without a worker)
$node->safe_psql('postgres', "ALTER SYSTEM SET flowpg.max_streams = 2; ALTER SYSTEM SET flowpg.max_retained_wal = '2MB'");
$node->restart;
$node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM flowpg.streams WHERE last_error LIKE 'all 2 flowpg.max_streams entries%'")
  or die 'no stream says it has no entry';
$node->safe_psql('postgres', "CREATE TABLE pad AS SELECT repeat('x', 200) AS x FROM generate_series(1, 15000)");
$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM flowpg.streams WHERE stale")
  or die 'the stream without an entry kept its slot past flowpg.max_retained_wal';
like(slurp_file($node->logfile),
	qr/WARNING:  flowpg dropped the replication slots of stream \d+ of database "postgres": .* while it could not run \(no flowpg.max_streams entry\)/,
	'past flowpg.max_retained_wal, the launcher drops the slots of a stream without an entry');
$node->stop;

# no free replication slot: PostgreSQL's error, and nothing left behind
my $few = new_node('few_slots', extra_conf => "max_replication_slots = 1\n");
$few->safe_psql('postgres', 'CREATE TABLE ev (k int)');
$few->safe_psql('postgres', "SELECT flowpg.create_stream('one', 'SELECT count(*) AS n FROM ev')");
($rc, $out, $err) = $few->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT flowpg.create_stream('two', 'SELECT count(*) AS n FROM ev')");
like($err, qr/53400: all replication slots are in use/, 'no free replication slot is an error');
like($err, qr/HINT:  .*max_replication_slots/, '... with a hint naming the setting');
is($few->safe_psql('postgres',
	"SELECT (SELECT count(*) FROM pg_replication_slots) || '/' || (SELECT count(*) FROM flowpg.streams) || '/' || (to_regclass('two') IS NULL)"),
	'1/1/true', '... and nothing is left behind');
# a stream whose slot was dropped by hand (stale) gives its replication
# origin up, whose progress takes one of max_replication_slots replication
# states: a new stream found a slot but no state, and failed at every start
$dropped = 0;
for (1 .. 50)
{
	$few->safe_psql('postgres', 'SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE pid IS NOT NULL');
	($rc) = $few->psql('postgres',
		"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'flowpg%'");
	$dropped = 1, last if $rc == 0;
	sleep 0.1;
}
ok($dropped, 'the slot of stream one was dropped by hand');
is($few->safe_psql('postgres', "SELECT stale FROM flowpg.streams WHERE name = 'public.one'"), 't',
	'... and the stream is stale');
$few->safe_psql('postgres', "SELECT flowpg.create_stream('two', 'SELECT count(*) AS n FROM ev')");
$few->safe_psql('postgres', 'INSERT INTO ev VALUES (1), (2)');
($rc, $out, $err) = $few->psql('postgres', "SELECT flowpg.wait('two', '30 s')");
is($rc, 0, 'a new stream runs beside the stale one') or diag($err);
oracle_ok($few, 'two', 'SELECT count(*) AS n FROM ev', 'the new stream beside a stale one');
$few->stop;

# no free background worker slot: refused at create time, naming the setting
my $busy = new_node('few_workers', extra_conf => "max_worker_processes = 3\n");
$busy->safe_psql('postgres', 'CREATE TABLE ev (k int)');
$busy->safe_psql('postgres', "SELECT flowpg.create_stream('one', 'SELECT count(*) AS n FROM ev')");
$busy->poll_query_until('postgres', "SELECT status = 'running' FROM flowpg.streams")
  or die 'the first stream did not start';
($rc, $out, $err) = $busy->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT flowpg.create_stream('two', 'SELECT count(*) AS n FROM ev')");
like($err, qr/53400: no background worker slot is free for a new stream/,
	'no free background worker slot is an error at create time');
like($err, qr/HINT:  Raise max_worker_processes/, '... with a hint naming the setting');
is($busy->safe_psql('postgres',
	"SELECT (SELECT count(*) FROM pg_replication_slots) || '/' || (SELECT count(*) FROM flowpg.streams) || '/' || (to_regclass('two') IS NULL)"),
	'1/1/true', '... and nothing is left behind');
# a stream that finds no background worker slot after a restart (the
# setting lowered) is failed, tried again after 1 s, doubling, and said
# once in the log (it was every second)
$busy->append_conf('postgresql.conf', "max_worker_processes = 4\n");
$busy->restart;
# (the launcher's scan of the databases after the start takes a slot for
# a moment: create_stream is refused meanwhile, as documented)
$busy->poll_query_until('postgres',
	"SELECT true FROM (SELECT flowpg.create_stream('two', 'SELECT count(*) AS n FROM ev')) s")
  or die 'no background worker slot came free for stream two';
$busy->append_conf('postgresql.conf', "max_worker_processes = 3\n");
$busy->restart;
$busy->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM flowpg.streams WHERE last_error LIKE 'no free background worker slot%'")
  or die 'no stream lacks a background worker slot';
sleep 6;
my $slotless = () = slurp_file($busy->logfile) =~
  /WARNING:  flowpg could not start the worker of stream \d+ of database "postgres": no free background worker slot/g;
is($slotless, 1, 'a stream without a background worker slot is logged once');
my $slotless_name = $busy->safe_psql('postgres',
	"SELECT name FROM flowpg.streams WHERE last_error LIKE 'no free background worker slot%'");
my ($wrc, $wout, $werr) = $busy->psql('postgres', "SELECT flowpg.wait('$slotless_name', '30 s')");
like($werr, qr/has failed.*no free background worker slot/s,
	'flowpg.wait on it says why it does not run');
$busy->append_conf('postgresql.conf', "max_worker_processes = 8\n");
$busy->restart;
$busy->safe_psql('postgres', 'INSERT INTO ev VALUES (1)');
oracle_ok($busy, $_, 'SELECT count(*) AS n FROM ev', "$_, once there are slots again") for qw(one two);

# flowpg.max_retained_wal holds for a stream that cannot run too: its
# slots kept all the WAL written until max_worker_processes was raised
# (or its owner could log in again), as nothing checked them.  The
# launcher drops them past the limit and says so; the stream is stale
# until rebuilt, and the one that runs goes on.
$busy->safe_psql('postgres', 'CREATE TABLE pad (x text)');
$busy->safe_psql('postgres', "SELECT flowpg.savepoint(s, 'before') FROM unnest(ARRAY['one', 'two']) s");
$busy->append_conf('postgresql.conf', "max_worker_processes = 3\nflowpg.max_retained_wal = 2MB\n");
$busy->restart;
# (which of the two finds no slot depends on the order the server lists
# the slots in as it starts)
$busy->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM flowpg.streams WHERE last_error LIKE 'no free background worker slot%'")
  or die 'no stream lacks a background worker slot';
my ($starved, $starved_id, $runner) = split /\|/, $busy->safe_psql('postgres',
	"SELECT f.name, f.id, r.name FROM flowpg.streams f, flowpg.streams r
	  WHERE f.last_error LIKE 'no free background worker slot%' AND r.name <> f.name");
my $slots_of = sub {
	my ($id) = @_;
	return $busy->safe_psql('postgres', "SELECT count(*) FROM pg_replication_slots, pg_database d
	  WHERE d.datname = 'postgres' AND (slot_name = format('flowpg_%s_%s', d.oid, $id)
	     OR slot_name LIKE format('flowpg\\_sp\\_%s\\_%s\\_%%', d.oid, $id))");
};
# (the savepoint of the stream that runs would hold its WAL too)
(my $runs = $runner) =~ s/^public\.//;
$busy->safe_psql('postgres', "SELECT flowpg.drop_savepoint('$runs', 'before')");
$busy->safe_psql('postgres', 'INSERT INTO ev VALUES (2)');
ok(!$busy->log_contains('flowpg dropped the replication slots'), 'below the limit, its slots stay');
$busy->safe_psql('postgres', "INSERT INTO pad SELECT repeat('x', 200) FROM generate_series(1, 15000)");
$busy->poll_query_until('postgres',
	"SELECT stale AND status = 'failed' FROM flowpg.streams WHERE name = '$starved'")
  or die "$starved kept its slots past flowpg.max_retained_wal";
like(slurp_file($busy->logfile),
	qr/WARNING:  flowpg dropped the replication slots of stream $starved_id of database "postgres": they kept \d+ kB of WAL it has not applied, more than flowpg.max_retained_wal \(2 MB\), while it could not run \(no free background worker slot\)/,
	'past flowpg.max_retained_wal, the launcher drops the slots of a stream that cannot run');
is($slots_of->($starved_id), '0', '... its savepoints\' too');
my $runner_id = $busy->safe_psql('postgres', "SELECT id FROM flowpg.streams WHERE name = '$runner'");
is($slots_of->($runner_id), '1', '... not that of the stream that runs');
(my $short = $starved) =~ s/^public\.//;
($rc, $out, $err) = $busy->psql('postgres', "SELECT flowpg.wait('$short', '5 s')");
like($err, qr/stream "\Q$starved\E" has lost its replication slot/, '... and wait says it is stale');
$busy->safe_psql('postgres', 'INSERT INTO ev VALUES (3)');
oracle_ok($busy, $runs, 'SELECT count(*) AS n FROM ev', 'the stream that runs goes on');
$busy->append_conf('postgresql.conf', "max_worker_processes = 8\n");
$busy->restart;
$busy->safe_psql('postgres', "SELECT flowpg.rebuild_stream('$short')");
oracle_ok($busy, $short, 'SELECT count(*) AS n FROM ev', 'the stream dropped past the limit, rebuilt');

# and for a stream whose owner may no longer log in, whose workers fail
# as they connect
$busy->safe_psql('postgres', q{
	CREATE ROLE walker LOGIN;
	GRANT SELECT ON ev TO walker;
	GRANT CREATE ON SCHEMA public TO walker;
});
$busy->safe_psql('postgres', "SET ROLE walker; SELECT flowpg.create_stream('walked', 'SELECT count(*) AS n FROM ev')");
my $walked = $busy->safe_psql('postgres', "SELECT id FROM flowpg.streams WHERE name = 'public.walked'");
$busy->safe_psql('postgres', 'ALTER ROLE walker NOLOGIN');
$busy->safe_psql('postgres', "SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.walked'");
$busy->poll_query_until('postgres',
	"SELECT last_error LIKE '%not permitted to log in%' FROM flowpg.streams WHERE name = 'public.walked'")
  or die 'the worker of stream walked connected';
$busy->safe_psql('postgres', "INSERT INTO pad SELECT repeat('x', 200) FROM generate_series(1, 15000)");
$busy->poll_query_until('postgres',
	"SELECT stale FROM flowpg.streams WHERE name = 'public.walked'")
  or die 'stream walked kept its slot past flowpg.max_retained_wal';
like(slurp_file($busy->logfile),
	qr/flowpg dropped the replication slots of stream $walked of database "postgres": .* while it could not run \(its worker cannot connect\)/,
	'... and of a stream whose owner may not log in');
$busy->safe_psql('postgres', 'INSERT INTO ev VALUES (4)');
oracle_ok($busy, $_, 'SELECT count(*) AS n FROM ev', "$_ goes on") for qw(one two);
$busy->stop;

# A moment without a free background worker slot (a parallel query takes
# them all as a worker restarts) is not a stream that cannot run: a
# stream that had applied everything keeps its slots, though its slot
# confirms its position only at its checkpoints (a minute here) and more
# WAL than flowpg.max_retained_wal was written since, on another table.
# Its slots were dropped at the first try that found no slot.
my $brief = new_node('brief_shortage',
	extra_conf => "max_worker_processes = 4\nflowpg.max_retained_wal = 2MB\nflowpg.checkpoint_writer = off\n");
$brief->safe_psql('postgres', q{
	CREATE TABLE ev (k int);
	CREATE TABLE pad (x text);
	CREATE TABLE big AS SELECT g FROM generate_series(1, 200000) g;
});
$brief->safe_psql('postgres', "SELECT flowpg.create_stream('steady', 'SELECT k, count(*) AS n FROM ev GROUP BY k', '1 min')");
$brief->safe_psql('postgres', 'INSERT INTO ev SELECT g % 3 FROM generate_series(1, 100) g');
wait_stream($brief, 'steady');
$brief->safe_psql('postgres', "INSERT INTO pad SELECT repeat('x', 200) FROM generate_series(1, 15000)");
$brief->poll_query_until('postgres', "SELECT lag_bytes = 0 FROM flowpg.streams")
  or die 'the stream did not read past the other table\'s WAL';
$brief->safe_psql('postgres', 'SELECT pg_terminate_backend(pid) FROM flowpg.streams');
$brief->safe_psql('postgres', q{
	SET max_parallel_workers_per_gather = 4;
	SET parallel_setup_cost = 0;
	SET parallel_tuple_cost = 0;
	SET min_parallel_table_scan_size = 0;
	SELECT count(*) FROM big WHERE pg_sleep(0.0002) IS NOT NULL;
});
ok($brief->log_contains('could not start the worker of stream \d+ of database "postgres": no free background worker slot'),
	'the parallel query took every background worker slot as the worker restarted');
$brief->safe_psql('postgres', 'INSERT INTO ev VALUES (1)');
oracle_ok($brief, 'steady', 'SELECT k, count(*) AS n FROM ev GROUP BY k',
	'a stream that found no slot for a moment keeps its slots');
ok(!$brief->log_contains('flowpg dropped the replication slots'), '... and the log says none went');
$brief->stop;

done_testing();

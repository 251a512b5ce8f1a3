# The checkpoint writer: a second process per stream writes its periodic
# checkpoints while the worker decodes.  While a checkpoint waits (here
# for a row lock a session holds on the result table) the worker goes on
# and flowpg.live follows new rows; a worker stopped meanwhile takes its
# writer with it, and the next one starts from the last checkpoint
# committed, and so after a kill -9 of the postmaster meanwhile; kill -9
# of the writer, its termination under load, and flowpg.checkpoint_writer
# = off; writers give their background worker slots up when a stream's
# worker needs one.  The oracle after every step: the result table equals
# the stream's query run as a batch.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Config;
use POSIX qw(WNOHANG);
use FlowpgTest;

my $node = new_node('writer');
$node->safe_psql('postgres', q{
	CREATE TABLE clicks (id bigserial, campaign int, cost numeric);
});
my $query = q{SELECT campaign, count(*) AS clicks, sum(cost) AS spend
                FROM clicks GROUP BY campaign};
$node->safe_psql('postgres',
	"SELECT flowpg.create_stream('spend', \$q\$$query\$q\$, '200 ms')");
sub sql { return $node->safe_psql('postgres', $_[0]); }
my $writers = q{(SELECT count(*) FROM pg_stat_activity
                  WHERE backend_type = 'flowpg checkpoint writer')};

# A session holds the result row of `campaign`, and the checkpoint after
# `insert` waits for it in the writer; returns the session.
sub checkpoint_waiting_for
{
	my ($campaign, $insert) = @_;
	my $session = $node->background_psql('postgres', on_error_stop => 0);
	$session->query_safe("BEGIN; UPDATE spend SET clicks = -1 WHERE campaign = $campaign");
	sql($insert);
	$node->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity
		   WHERE backend_type = 'flowpg checkpoint writer' AND wait_event = 'transactionid'})
	  or die 'the checkpoint did not wait for the row lock in the writer';
	return $session;
}

# 1. The stream has its writer, connected as the stream's owner, and its
#    periodic checkpoints are the writer's.
worker_pid($node, 'spend');
$node->poll_query_until('postgres', "SELECT $writers = 1")
  or die 'the checkpoint writer did not start';
is(sql(q{SELECT application_name || ' ' || usename FROM pg_stat_activity
          WHERE backend_type = 'flowpg checkpoint writer'}),
	'public.spend ' . sql('SELECT current_user'),
	'the checkpoint writer runs as the stream owner, named after the stream');
is(sql(q{SELECT s.writer_pid = a.pid FROM flowpg.streams s, pg_stat_activity a
          WHERE a.backend_type = 'flowpg checkpoint writer'}),
	't', 'flowpg.streams.writer_pid is the writer');
sql("INSERT INTO clicks (campaign, cost) SELECT g % 10, g % 7 FROM generate_series(1, 1000) g");
oracle_ok($node, 'spend', $query, 'periodic checkpoints by the writer');

# 2. A checkpoint that waits for a row of the result table a session holds
#    waits in the writer; the worker goes on decoding meanwhile, and
#    flowpg.live shows rows committed after.
my $holder = checkpoint_waiting_for(3, 'INSERT INTO clicks (campaign, cost) VALUES (3, 1)');
pass('a checkpoint waiting for a row lock waits in the checkpoint writer');
sql("INSERT INTO clicks (campaign, cost) VALUES (4, 100), (4, 100)");
my $live_q = q{SELECT (SELECT clicks FROM flowpg.live(NULL::spend) WHERE campaign = 4) =
                      (SELECT count(*) FROM clicks WHERE campaign = 4)};
ok($node->poll_query_until('postgres', $live_q),
	'... while the worker goes on: flowpg.live has rows committed after');

# 3. The worker stopped meanwhile: its writer goes with it (the writer was
#    waiting for the lock), the next worker starts from the last
#    checkpoint committed, and once the session commits the results are
#    exact again (the session's change to the row is overwritten).
my $old = worker_pid($node, 'spend');
my $old_writer = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'flowpg checkpoint writer'});
sql("SELECT pg_terminate_backend($old)");
$node->poll_query_until('postgres',
	"SELECT pid IS DISTINCT FROM $old AND status = 'running' FROM flowpg.streams WHERE name = 'public.spend'")
  or die 'the worker did not start again';
is(sql("SELECT count(*) FROM pg_stat_activity WHERE pid IN ($old, $old_writer)"),
	'0', 'the stopped worker took its waiting writer with it');
$holder->query_safe('COMMIT');
$holder->quit;
sql("INSERT INTO clicks (campaign, cost) VALUES (3, 1)");
oracle_ok($node, 'spend', $query, 'worker stopped while its writer waited');

# 3b. kill -9 of the postmaster while a checkpoint waits in the writer and
#     the worker has gone on past it (flowpg.live has rows the waiting
#     checkpoint does not): the checkpoint's transaction is lost with the
#     crash, the stream starts again from the last one committed, and
#     every row is counted once.
$node->poll_query_until('postgres', "SELECT $writers = 1")
  or die 'no checkpoint writer after the worker restarted';
$holder = checkpoint_waiting_for(6, 'INSERT INTO clicks (campaign, cost) VALUES (6, 1)');
sql("INSERT INTO clicks (campaign, cost) VALUES (7, 3), (7, 4)");
$live_q = q{SELECT (SELECT clicks FROM flowpg.live(NULL::spend) WHERE campaign = 7) =
                   (SELECT count(*) FROM clicks WHERE campaign = 7)};
$node->poll_query_until('postgres', $live_q)
  or die 'the worker did not go on while its writer waited';
crash_restart($node);
eval { $holder->quit };
oracle_ok($node, 'spend', $query, 'kill -9 of the postmaster while a checkpoint waited in the writer');

# 3c. A checkpoint of more than 100,000 keys: the writer writes it from
#     the keys' own chunks while the worker waits, and gives them the
#     TIDs of their new rows, which the next checkpoint of the same keys
#     updates.  Then one that waits for a row lock in the writer, and a
#     kill -9 of the postmaster meanwhile.
$node->poll_query_until('postgres', "SELECT $writers = 1")
  or die 'no checkpoint writer after the crash';
sql("INSERT INTO clicks (campaign, cost) SELECT 1000 + g, 1 FROM generate_series(1, 120000) g");
oracle_ok($node, 'spend', $query, 'a checkpoint of 120,000 new keys by the writer');
sql("INSERT INTO clicks (campaign, cost) SELECT 1000 + g, 2 FROM generate_series(1, 120000) g");
oracle_ok($node, 'spend', $query, '... and of the same keys again, by their rows\' TIDs');
$holder = checkpoint_waiting_for(1001,
	'INSERT INTO clicks (campaign, cost) SELECT 1000 + g, 3 FROM generate_series(1, 120000) g');
crash_restart($node);
eval { $holder->quit };
oracle_ok($node, 'spend', $query, 'kill -9 of the postmaster while a checkpoint of 120,000 keys waited in the writer');

# 3c'. pg_cancel_backend of the worker (it shows the stream's query,
#      active) while it waits for its writer to write such a checkpoint
#      from its chunks: the worker stops the writer before it frees the
#      state.  It freed the state first: a writer that got as far as its
#      commit then wrote freed chunks as its keys, and every later worker
#      found the stream's state log corrupted (a race this test does not
#      force: the writer here waits for a row lock, and is terminated).
$node->poll_query_until('postgres', "SELECT $writers = 1")
  or die 'no checkpoint writer after the crash';
$holder = checkpoint_waiting_for(1002,
	'INSERT INTO clicks (campaign, cost) SELECT 1000 + g, 4 FROM generate_series(1, 120000) g');
sql("SELECT pg_cancel_backend(pid) FROM flowpg.streams WHERE name = 'public.spend'");
$holder->query_safe('ROLLBACK');
$holder->quit;
oracle_ok($node, 'spend', $query, 'a cancel of the worker while a checkpoint of 120,000 keys waited in the writer');

# 3d. kill -9 of the postmaster where nothing reaps its orphaned processes
#     at once (a container whose init reaps only its own child): this test
#     takes them as a subreaper and does not reap them.  The server starts
#     again within seconds: the worker waited for its writer, which had
#     exited but stayed a zombie, up to a minute, holding the old shared
#     memory, and every start failed meanwhile.
SKIP:
{
	skip 'prctl by its x86_64 Linux syscall number', 1
	  unless $Config{archname} =~ /^x86_64-linux/;
	# prctl(PR_SET_CHILD_SUBREAPER, 1): the server started next is ours
	syscall(157, 36, 1, 0, 0, 0) == 0 or die "prctl: $!";
	$node->restart;
	$node->poll_query_until('postgres', "SELECT $writers = 1")
	  or die 'no checkpoint writer after the restart';
	my $start = time;
	my $postmaster = $node->{_pid};
	$node->kill9;
	# the postmaster only: its pid would stay taken (postmaster.pid)
	waitpid($postmaster, 0);
	my $started = 0;
	for (1 .. 90)
	{
		sleep 1;
		$node->{_pid} = undef;
		$started = 1, last if $node->start(fail_ok => 1);
	}
	my $took = time - $start;
	syscall(157, 36, 0, 0, 0, 0);
	1 while waitpid(-1, WNOHANG) > 0;
	ok($started && $took < 20,
		"the server starts again after kill -9 with its processes unreaped (${took} s)");
}
oracle_ok($node, 'spend', $query, 'kill -9 of the postmaster with its processes unreaped');

# 4. kill -9 of the writer under load: the server restarts, the stream
#    comes back exact.
my $dir = PostgreSQL::Test::Utils::tempdir;
my @scripts = click_scripts($dir);
$node->poll_query_until('postgres', "SELECT $writers = 1")
  or die 'no checkpoint writer after the worker restarted';
my $load = start_load($node, 4, 2, @scripts);
sleep 1;
my $writer = sql(q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'flowpg checkpoint writer'});
kill 'KILL', $writer;
stop_load($load);
server_back($node)
  or die 'the server did not come back after the writer was killed';
oracle_ok($node, 'spend', $query, 'kill -9 of the checkpoint writer under load');

# 5. pg_terminate_backend of the writer under load: the worker fails if a
#    checkpoint was being written (and starts again) or writes its
#    checkpoints itself; either way nothing is lost or counted twice.
$node->poll_query_until('postgres', "SELECT $writers = 1")
  or die 'no checkpoint writer after the crash';
$load = start_load($node, 4, 2, @scripts);
sleep 1;
sql(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
       WHERE backend_type = 'flowpg checkpoint writer'});
stop_load($load);
oracle_ok($node, 'spend', $query, 'checkpoint writer terminated under load');
sql("INSERT INTO clicks (campaign, cost) VALUES (5, 5)");
oracle_ok($node, 'spend', $query, '... and after');
# the worker starts a writer again (after 10 s): it was gone for the
# worker's life
ok($node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM (SELECT flowpg.checkpoint('spend')) c, flowpg.streams WHERE writer_pid IS NOT NULL"),
	'a worker whose writer exited starts a new one');

# 6. flowpg.checkpoint_writer = off, at a reload: the running worker
#    stops its writer and writes its checkpoints itself, and so does the
#    next worker; on again, the worker starts a writer.
$node->append_conf('postgresql.conf', "flowpg.checkpoint_writer = off\n");
$node->reload;
$node->poll_query_until('postgres', "SELECT $writers = 0")
  or die 'the checkpoint writer did not stop';
is(sql("SELECT writer_pid IS NULL FROM flowpg.streams"), 't',
	'turned off at a reload, the running worker stops its checkpoint writer');
$old = worker_pid($node, 'spend');
sql("SELECT pg_terminate_backend($old)");
$node->poll_query_until('postgres',
	"SELECT pid IS DISTINCT FROM $old AND status = 'running' FROM flowpg.streams WHERE name = 'public.spend'")
  or die 'the worker did not start again';
my $last = sql('SELECT coalesce(max(id), 0) FROM flowpg.checkpoints');
sql("INSERT INTO clicks (campaign, cost) SELECT g % 10, 1 FROM generate_series(1, 100) g");
ok($node->poll_query_until('postgres',
	"SELECT count(*) > 0 FROM flowpg.checkpoints WHERE kind = 'periodic' AND id > $last"),
	'with flowpg.checkpoint_writer = off the worker takes periodic checkpoints itself');
is(sql("SELECT $writers"), '0', '... and no checkpoint writer runs');
is(sql("SELECT writer_pid IS NULL FROM flowpg.streams"), 't', '... and flowpg.streams.writer_pid is NULL');
oracle_ok($node, 'spend', $query, 'flowpg.checkpoint_writer = off');
$node->append_conf('postgresql.conf', "flowpg.checkpoint_writer = on\n");
$node->reload;
sql("INSERT INTO clicks (campaign, cost) SELECT g % 10, 2 FROM generate_series(1, 100) g");
ok($node->poll_query_until('postgres',
	"SELECT writer_pid IS NOT NULL AND $writers = 1 FROM flowpg.streams"),
	'turned on again, the worker starts a checkpoint writer');
sql("INSERT INTO clicks (campaign, cost) SELECT g % 10, 3 FROM generate_series(1, 100) g");
oracle_ok($node, 'spend', $query, 'flowpg.checkpoint_writer on again');
$node->stop;

# 7. Background worker slots: a writer takes one only while another stays
#    free, and writers give theirs up when a stream's worker finds none.
#    Here (launcher, logical replication launcher) the first stream's
#    worker leaves two free: it gets a writer; the second stream's worker
#    leaves one: no writer; the third stream's worker finds no slot, and
#    the first stream's writer gives its slot up for it.
my $few = new_node('few_workers', extra_conf => "max_worker_processes = 5\n");
$few->safe_psql('postgres', 'CREATE TABLE ev (k int)');
$few->safe_psql('postgres', "SELECT flowpg.create_stream('one', 'SELECT k, count(*) AS n FROM ev GROUP BY k')");
$few->poll_query_until('postgres', "SELECT $writers = 1")
  or die 'the first stream got no checkpoint writer';
pass('with two background worker slots free a stream gets a checkpoint writer');
$few->safe_psql('postgres', "SELECT flowpg.create_stream('two', 'SELECT count(*) AS n FROM ev')");
$few->safe_psql('postgres', "SELECT flowpg.create_stream('three', 'SELECT sum(k) AS s FROM ev')");
$few->safe_psql('postgres', 'INSERT INTO ev SELECT g % 7 FROM generate_series(1, 100) g');
ok($few->poll_query_until('postgres',
	q{SELECT count(*) = 3 FROM flowpg.streams WHERE status = 'running'}),
	'the third stream runs: the first one\'s writer gave its slot up');
is($few->safe_psql('postgres', "SELECT $writers"), '0', '... and no checkpoint writer runs');
# meanwhile the third stream was starting, not failing: no slot free but a
# writer's, which was given up (it showed as failed, with a warning)
ok(!$few->log_contains('could not start the worker of stream'),
	'... and the third stream waited for it without failing');
oracle_ok($few, 'one', 'SELECT k, count(*) AS n FROM ev GROUP BY k', 'writers gave their slots up');
oracle_ok($few, 'two', 'SELECT count(*) AS n FROM ev', 'writers gave their slots up');
oracle_ok($few, 'three', 'SELECT sum(k) AS s FROM ev', 'writers gave their slots up');
# A rebuild when every slot is taken, one by a writer: the rebuild's
# process (started as the stream's worker stops) finds no slot until the
# writer has given its slot up; meanwhile the stream is starting, not
# failing (flowpg.wait raised "no free background worker slot").
$few->safe_psql('postgres', "SELECT flowpg.drop_stream('two'); SELECT flowpg.drop_stream('three')");
$few->safe_psql('postgres', "SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.one'");
$few->poll_query_until('postgres', "SELECT $writers = 1")
  or die 'the first stream got no checkpoint writer again';
$few->safe_psql('postgres', "SELECT flowpg.create_stream('three', 'SELECT sum(k) AS s FROM ev')");
for my $round (1 .. 3)
{
	$few->safe_psql('postgres', "SELECT flowpg.rebuild_stream('three')");
	my ($rc, $out, $err) = $few->psql('postgres', "SELECT flowpg.wait('three')");
	is($err, '', "a rebuild with every slot taken, one by a writer ($round)");
}
oracle_ok($few, 'three', 'SELECT sum(k) AS s FROM ev', 'rebuilt with every slot taken');

# flowpg.savepoint waits for the worker without holding the stream's lock:
# a worker starting (here after a lock on its result table kept it from
# starting sooner) takes that lock shared, behind a pause queued
# meanwhile, which waited for the savepoint, which waited for the worker:
# nothing detected the cycle, and both calls waited a minute, the
# savepoint failing with a timeout.
my $locker = $few->background_psql('postgres', on_error_stop => 0);
$locker->query_safe('BEGIN; LOCK TABLE one IN ACCESS EXCLUSIVE MODE');
$few->safe_psql('postgres', "SELECT pg_terminate_backend(pid) FROM flowpg.streams WHERE name = 'public.one'");
my $saver = $few->background_psql('postgres', on_error_stop => 0);
$saver->query_until(qr/saving/, "\\echo saving\nSELECT flowpg.savepoint('one', 'amid');\n");
select(undef, undef, undef, 0.5);
my $pauser = $few->background_psql('postgres', on_error_stop => 0);
$pauser->query_until(qr/pausing/, "\\echo pausing\nSELECT flowpg.pause_stream('one');\n");
sleep 2;    # the worker starts again meanwhile, and waits for the lock
$locker->query_safe('COMMIT');
ok($few->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM flowpg.savepoints WHERE name = 'amid'}, 't'),
	'a savepoint waited for behind a pause and a worker starting is taken');
$saver->quit;
$pauser->quit;
$locker->quit;
ok($few->poll_query_until('postgres',
		"SELECT status = 'paused' FROM flowpg.streams WHERE name = 'public.one'"),
	'... and the pause too');
$few->safe_psql('postgres', "SELECT flowpg.resume_stream('one')");
oracle_ok($few, 'one', 'SELECT k, count(*) AS n FROM ev GROUP BY k', 'after the savepoint and the pause');
$few->stop;

done_testing();

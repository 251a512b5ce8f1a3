# flowpg.wait through a checkpoint that fails computing a row, when the
# position the call waits for is past the source transaction that makes
# the row computable again.  The checkpoint covers a transaction after
# which sum(b) is 0 (here held, at its division, on an advisory lock the
# test holds, while the transaction that makes sum(b) 1 commits and the
# wait starts); it fails with "division by zero".  The next worker, a
# careful one, finds that transaction and checkpoints what came before it,
# and the one after goes on to a checkpoint where every row can be
# computed, as the batch query can.  flowpg.wait raised the first error
# at once; it returns now, with the oracle's results.  A flowpg.checkpoint
# called before that transaction, whose checkpoint failed, raises the
# error: the rows it was to hold cannot be computed (the same for a wait
# for a position where a row cannot be computed).  A call that has
# returned leaves no checkpoint behind for the stream to take, fail, and
# take again, over and over.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $node = new_node('wait_row_error');
sub sql { return $node->safe_psql('postgres', $_[0]); }

my $query = 'SELECT k, gated_ratio(sum(a), sum(b)) AS r FROM ratios GROUP BY k';
sql(q{
	CREATE TABLE ratios (k int, a int, b int);
	CREATE FUNCTION gate_ratio(bigint, bigint) RETURNS bigint VOLATILE LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_advisory_lock_shared(7);
		PERFORM pg_advisory_unlock_shared(7);
		RETURN $1 / $2;
	END$$;
	CREATE FUNCTION gated_ratio(bigint, bigint) RETURNS bigint IMMUTABLE LANGUAGE plpgsql
		AS 'BEGIN RETURN gate_ratio($1, $2); END';
});
sql("SELECT flowpg.create_stream('ratios_out', '$query', '1 hour')");
sql('INSERT INTO ratios VALUES (1, 10, 2), (2, 9, 3)');
wait_stream($node, 'ratios_out');

# A checkpoint's row computing, held on the gate.
my $holder = $node->background_psql('postgres', on_error_stop => 0);
$holder->query_safe('SELECT pg_advisory_lock(7)');
sql('INSERT INTO ratios VALUES (1, 1, -2)');
my $checkpoint = $node->background_psql('postgres', on_error_stop => 0);
$checkpoint->query_until(qr/checkpointing/, q{\echo checkpointing
SELECT flowpg.checkpoint('ratios_out') > 0 AS checkpointed;
});
$node->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity
	WHERE backend_type LIKE 'flowpg%' AND wait_event = 'advisory'})
  or die 'the checkpoint did not reach the gate';

# sum(b) for key 1 is 1 again; then a wait for that
sql('INSERT INTO ratios VALUES (1, 3, 1), (3, 4, 4)');
my $waiter = $node->background_psql('postgres', on_error_stop => 0);
$waiter->query_until(qr/waiting/, q{\echo waiting
SELECT true AS waited FROM (SELECT flowpg.wait('ratios_out')) w;
});
$node->poll_query_until('postgres', q{SELECT count(*) > 0 FROM pg_stat_activity
	WHERE query LIKE 'SELECT true AS waited%' AND wait_event = 'Extension'})
  or die 'the wait did not start';

$holder->query_safe('SELECT pg_advisory_unlock(7)');
$node->poll_query_until('postgres', q{SELECT count(*) > 0 FROM flowpg.streams
	WHERE name = 'public.ratios_out' AND last_error LIKE '%division by zero%'})
  or die 'the checkpoint did not fail';
my $waited = $waiter->query('SELECT 1 AS after_wait');
is($waiter->{stderr}, '', 'flowpg.wait raised no error');
like($waited, qr/^t\n/, 'flowpg.wait returned');
$checkpoint->query('SELECT 1 AS after_checkpoint');
like($checkpoint->{stderr}, qr/stream "public.ratios_out" has failed.*division by zero/s,
	'flowpg.checkpoint of rows that cannot be computed fails');
oracle_ok($node, 'ratios_out', $query, 'after a checkpoint failed on a row');

# A wait for a position where key 1's row cannot be computed: it fails.
sql('INSERT INTO ratios VALUES (1, 1, -1)');
my ($rc, $out, $err) = $node->psql('postgres', "SELECT flowpg.wait('ratios_out', '60 s')");
like($err, qr/stream "public.ratios_out" has failed.*division by zero/s,
	'a wait for a position where a row cannot be computed fails');
like(sql(q{SELECT last_error FROM flowpg.streams WHERE name = 'public.ratios_out'}),
	qr/division by zero/, 'flowpg.streams says why');
# nobody waits now: once a careful worker has found the transaction, the
# stream runs, and does not fail again and again on the checkpoint the
# wait asked for
$node->poll_query_until('postgres', q{SELECT status = 'running' AND pid IS NOT NULL
	FROM flowpg.streams WHERE name = 'public.ratios_out'})
  or die 'the stream does not run';
my $restarts = sql(q{SELECT restarts FROM flowpg.streams WHERE name = 'public.ratios_out'});
sleep 5;
is(sql(q{SELECT restarts FROM flowpg.streams WHERE name = 'public.ratios_out'}), $restarts,
	'once the wait has failed, the stream does not restart over and over');
sql('INSERT INTO ratios VALUES (1, 0, 5)');
wait_stream($node, 'ratios_out');
oracle_ok($node, 'ratios_out', $query, 'once the row can be computed again');

# The same after a checkpoint that fails in a trigger of the result table
# (with an error of a computing kind, which a careful worker cannot find
# in the rows): before, every next worker took the checkpoint the failed
# wait had asked for, and failed, for nobody.
sql(q{
	CREATE TABLE capped_src (k int, v int);
	SELECT flowpg.create_stream('capped', 'SELECT k, sum(v) AS s FROM capped_src GROUP BY k', '1 hour');
	CREATE FUNCTION cap() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.s > 100 THEN
			RAISE EXCEPTION 'sum over the cap' USING ERRCODE = 'numeric_value_out_of_range';
		END IF;
		RETURN NEW;
	END$$;
	CREATE TRIGGER cap BEFORE INSERT OR UPDATE ON capped FOR EACH ROW EXECUTE FUNCTION cap();
});
sql('INSERT INTO capped_src VALUES (1, 500)');
($rc, $out, $err) = $node->psql('postgres', "SELECT flowpg.wait('capped', '60 s')");
like($err, qr/stream "public.capped" has failed.*sum over the cap/s,
	'a wait whose checkpoint a trigger of the result table refuses fails');
$node->poll_query_until('postgres', q{SELECT status = 'running' AND pid IS NOT NULL
	FROM flowpg.streams WHERE name = 'public.capped'})
  or die 'capped does not run';
$restarts = sql(q{SELECT restarts FROM flowpg.streams WHERE name = 'public.capped'});
sleep 5;
is(sql(q{SELECT restarts FROM flowpg.streams WHERE name = 'public.capped'}), $restarts,
	'... and the stream does not restart over and over once the wait has failed');

$_->quit for $holder, $checkpoint, $waiter;
$node->stop;
done_testing();

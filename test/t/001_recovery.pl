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
	$node->poll_query_until('postgres', 'SELECT true') or die 'server did not come back';
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
done_testing();

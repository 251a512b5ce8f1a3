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
	$node->poll_query_until('postgres', 'SELECT true')
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

$node->stop;
done_testing();

# A partitioned source under load and failures: partitions created with
# PARTITION OF, attached with another column order and a dropped column,
# partitioned again, a default partition; writes through the partitioned
# table and straight into partitions; partitions created, attached and a
# column added while the load runs; the worker and the postmaster killed.
# After each round the result table equals the query run as a batch over
# the partitioned table; then flowpg.rebuild_stream (which scans every
# partition) gives the same, and so does a restored dump.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $node = new_node('partitions');
$node->safe_psql('postgres', q{
	CREATE TABLE clicks (id bigserial, campaign int NOT NULL, region text,
	                     cost numeric) PARTITION BY RANGE (campaign);
	CREATE TABLE clicks_0 PARTITION OF clicks FOR VALUES FROM (0) TO (20);
	CREATE TABLE clicks_20 (cost numeric, gone int, region text,
	                        campaign int NOT NULL, id bigint NOT NULL);
	ALTER TABLE clicks_20 DROP COLUMN gone;
	ALTER TABLE clicks ATTACH PARTITION clicks_20 FOR VALUES FROM (20) TO (40);
	CREATE TABLE clicks_40 PARTITION OF clicks FOR VALUES FROM (40) TO (60)
	  PARTITION BY HASH (region);
	CREATE TABLE clicks_40_a PARTITION OF clicks_40 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
	CREATE TABLE clicks_40_b PARTITION OF clicks_40 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
	CREATE TABLE clicks_rest PARTITION OF clicks DEFAULT;
});

my %streams = (
	spend => q{SELECT campaign, count(*) AS clicks, sum(cost) AS spend,
	                  max(cost) AS max_cost
	             FROM clicks WHERE cost > 0 GROUP BY campaign},
	by_region => q{SELECT region, count(*) AS n, sum(id) AS ids FROM clicks GROUP BY region},
);
for my $name (sort keys %streams)
{
	$node->safe_psql('postgres',
		"SELECT flowpg.create_stream('$name', \$q\$$streams{$name}\$q\$)");
}

sub check_all
{
	my ($label) = @_;
	oracle_ok($node, $_, $streams{$_}, $label) for sort keys %streams;
}

my $dir = PostgreSQL::Test::Utils::tempdir;
my $copy_file = "$dir/copy.data";
open my $fh, '>', $copy_file or die;
print $fh join("\t", $_ % 70, 'r' . ($_ % 6), $_ % 9) . "\n" for 1 .. 300;
close $fh;
my %scripts = (
	'single.sql@10' => q{\set c random(0, 69)
INSERT INTO clicks (campaign, region, cost)
VALUES (:c, 'r' || (:c % 6), round((random() * 10)::numeric, 2));
},
	'multi.sql@3' => q{INSERT INTO clicks (campaign, region, cost)
SELECT g % 70, 'r' || (g % 6), g % 7 FROM generate_series(1, 100) g;
},
	'leaf.sql@3' => q{\set c random(20, 39)
INSERT INTO clicks_20 (id, campaign, region, cost)
VALUES (nextval('clicks_id_seq'), :c, 'leaf', 1.5);
},
	'rollback.sql@1' => q{BEGIN;
INSERT INTO clicks (campaign, region, cost)
SELECT g % 70, 'rolled back', 1000 FROM generate_series(1, 50) g;
ROLLBACK;
},
	'copy.sql@1' => "COPY clicks (campaign, region, cost) FROM '$copy_file';\n",
);
my @phase1 = write_scripts($dir, %scripts);
# once the new partitions are there, rows go to them too
my @phase2 = (@phase1, write_scripts($dir,
	'new.sql@5' => q{\set c random(100, 299)
INSERT INTO clicks (campaign, region, cost, unit)
VALUES (:c, 'r' || (:c % 6), :c % 11, 'EUR');
}));

# Round 1: load, the worker killed, then DDL under the load: a partition
# created, one attached (columns in another order), a column added with
# a default (partitions whose older rows lack it are read through a map);
# then the postmaster killed.
my $load = start_load($node, 8, 3, @phase1);
sleep 2;
kill 'KILL', worker_pid($node, 'spend');
# (the postmaster restarts every process after it)
sleep 1;
server_back($node) or die 'server did not come back';
$node->safe_psql('postgres', q{
	CREATE TABLE clicks_100 PARTITION OF clicks FOR VALUES FROM (100) TO (200);
	CREATE TABLE clicks_200 (region text, campaign int NOT NULL, cost numeric, id bigint NOT NULL);
	ALTER TABLE clicks ATTACH PARTITION clicks_200 FOR VALUES FROM (200) TO (300);
	ALTER TABLE clicks ADD COLUMN unit text DEFAULT 'USD';
});
sleep 2;
crash_restart($node);
stop_load($load);
server_back($node) or die 'server did not come back';
check_all('DDL under load, worker and postmaster killed');

# Round 2: rows into every partition, new ones included; the postmaster
# killed twice.
for my $round (1 .. 2)
{
	$load = start_load($node, 5, 3, @phase2);
	sleep 2;
	crash_restart($node);
	stop_load($load);
	server_back($node) or die 'server did not come back';
	$load = start_load($node, 2, 2, @phase2);
	stop_load($load);
	check_all("new partitions, postmaster killed ($round)");
}
is($node->safe_psql('postgres',
	"SELECT count(*) FROM by_region WHERE region = 'rolled back'"),
	'0', 'no rolled-back row reached a stream');
ok($node->safe_psql('postgres', 'SELECT count(*) FROM clicks_200') > 0
	  && $node->safe_psql('postgres', 'SELECT count(*) FROM clicks_40_b') > 0
	  && $node->safe_psql('postgres', "SELECT count(*) FROM clicks_20 WHERE region = 'leaf'") > 0,
	'the load wrote into every kind of partition');

# A rebuild scans every partition, reading each with its own layout.
$node->safe_psql('postgres', "SELECT flowpg.rebuild_stream('$_')") for sort keys %streams;
check_all('rebuilt from the partitions');
$load = start_load($node, 2, 2, @phase2);
stop_load($load);
check_all('after the rebuild');

# pg_dump and pg_restore: the restored streams are rebuilt from the
# restored partitions.
my $dump = "$dir/db.dump";
command_ok([ 'pg_dump', '-h', $node->host, '-p', $node->port, '-Fc',
	'-f', $dump, 'postgres' ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
command_ok([ 'pg_restore', '-h', $node->host, '-p', $node->port,
	'-d', 'restored', $dump ], 'pg_restore');
oracle_ok($node, $_, $streams{$_}, 'restored', 'restored') for sort keys %streams;

$node->stop;
done_testing();

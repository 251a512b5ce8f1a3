# A stream whose source is a table of a logical replica: the rows come
# from a subscription's apply worker (which commits asynchronously, and
# applies a large transaction streamed to it from a file at its commit)
# and from its initial copy of the table.  The subscriber is killed with
# kill -9 while the publisher writes; once it has caught up, the stream
# equals its query over the replicated table.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $pub = new_node('publisher');
# the WAL writer of the subscriber flushes the apply worker's commits
# only every 10 s: a kill -9 loses more of them (the apply worker gets
# them again from the publisher), and flowpg.wait must flush them itself
my $sub = new_node('subscriber', extra_conf => "wal_writer_delay = 10s\n");
my $table = q{CREATE TABLE clicks (id bigserial PRIMARY KEY, campaign int, cost numeric)};
$pub->safe_psql('postgres', qq{
	$table;
	INSERT INTO clicks (campaign, cost) SELECT g % 40, g % 7 FROM generate_series(1, 3000) g;
	CREATE PUBLICATION clicks_pub FOR TABLE clicks;
});
my %streams = (
	spend => q{SELECT campaign, count(*) AS clicks, sum(cost) AS spend FROM clicks GROUP BY campaign},
	total => q{SELECT count(*) AS n, sum(id) AS ids FROM clicks},
);
$sub->safe_psql('postgres', $table);
$sub->safe_psql('postgres',
	"SELECT flowpg.create_stream('$_', \$q\$$streams{$_}\$q\$)") for sort keys %streams;
my $connstr = $pub->connstr . ' dbname=postgres';
$sub->safe_psql('postgres',
	"CREATE SUBSCRIPTION clicks_sub CONNECTION '$connstr' PUBLICATION clicks_pub WITH (streaming = on)");
$sub->wait_for_subscription_sync($pub, 'clicks_sub');

sub check_all
{
	my ($label) = @_;
	$pub->wait_for_catchup('clicks_sub');
	is($sub->safe_psql('postgres', 'SELECT count(*) FROM clicks'),
		$pub->safe_psql('postgres', 'SELECT count(*) FROM clicks'),
		"$label: the replica has every row");
	oracle_ok($sub, $_, $streams{$_}, $label) for sort keys %streams;
}
check_all('initial copy of the table');

my $dir = PostgreSQL::Test::Utils::tempdir;
my @scripts = write_scripts($dir, 'single.sql@10' => q{\set c random(1, 40)
INSERT INTO clicks (campaign, cost) VALUES (:c, :c % 5);
},
	'multi.sql@2' => q{INSERT INTO clicks (campaign, cost)
SELECT g % 30, g % 4 FROM generate_series(1, 50) g;
});

# a load on the publisher; right after it the replica's flowpg.wait
# includes what the apply worker committed, asynchronously
my $load = start_load($pub, 3, 2, @scripts);
stop_load($load);
check_all('replicated load');

# kill -9 of the subscriber while the publisher writes, twice
for my $round (1 .. 2)
{
	$load = start_load($pub, 5, 2, @scripts);
	sleep 2;
	crash_restart($sub);
	stop_load($load);
	check_all("subscriber killed ($round)");
}

# a transaction larger than logical_decoding_work_mem, streamed to the
# subscriber while it runs and applied there at its commit
$pub->safe_psql('postgres',
	'INSERT INTO clicks (campaign, cost) SELECT g % 40, g % 3 FROM generate_series(1, 60000) g');
check_all('a large streamed transaction');

# A publication FOR ALL TABLES publishes flowpg's own tables too.  A
# subscriber that has flowpg skips their changes: its streams are its own
# (the publisher's became streams of the subscriber's, adopted at its next
# start, whose checkpoints collided with the replicated rows and stopped
# the whole subscription).  A result table replicates as any table.
$pub->safe_psql('postgres',
	q{SELECT flowpg.create_stream('pub_spend', 'SELECT campaign, count(*) AS clicks FROM clicks GROUP BY campaign')});
$pub->safe_psql('postgres',
	'INSERT INTO clicks (campaign, cost) SELECT g % 40, 1 FROM generate_series(1, 500) g');
wait_stream($pub, 'pub_spend');
$pub->safe_psql('postgres', 'CREATE PUBLICATION all_pub FOR ALL TABLES');
my $all = new_node('all_tables');
$all->safe_psql('postgres', qq{$table; CREATE TABLE pub_spend (campaign int, clicks bigint)});
$all->safe_psql('postgres', "CREATE SUBSCRIPTION all_sub CONNECTION '$connstr' PUBLICATION all_pub");
$all->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_subscription_rel WHERE srsubstate NOT IN ('r', 's')})
  or die 'the subscription did not copy its tables';
sub all_tables_ok
{
	my ($label) = @_;
	$pub->safe_psql('postgres',
		'INSERT INTO clicks (campaign, cost) SELECT g % 40, 2 FROM generate_series(1, 300) g');
	wait_stream($pub, 'pub_spend');
	$pub->wait_for_catchup('all_sub');
	is($all->safe_psql('postgres',
			'SELECT (SELECT count(*) FROM flowpg.stream) || \'/\' || (SELECT count(*) FROM flowpg.state) '
			  . '|| \'/\' || (SELECT count(*) FROM flowpg.checkpoint) || \'/\' || (SELECT count(*) FROM flowpg.streams)'),
		'0/0/0/0', "$label: flowpg's own tables are not applied on the subscriber");
	my $rows = 'SELECT campaign, clicks FROM pub_spend ORDER BY campaign';
	is($all->safe_psql('postgres', $rows), $pub->safe_psql('postgres', $rows),
		"$label: the result table replicates as any table");
	is($all->safe_psql('postgres', 'SELECT count(*) FROM clicks'),
		$pub->safe_psql('postgres', 'SELECT count(*) FROM clicks'),
		"$label: and so does the source");
	return;
}
all_tables_ok('FOR ALL TABLES');
$all->restart;
all_tables_ok('FOR ALL TABLES, the subscriber restarted');
$all->stop;

$sub->stop;
$pub->stop;
done_testing();

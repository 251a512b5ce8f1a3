# Each server setting flowpg needs, when it is missing, gives an error that
# names it (with SQLSTATE 55000 and a hint), and nothing is created.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $conf = slurp_file($ENV{FLOWPG_CONF});
my $has_plugin_list = $conf =~ /output_plugin_libraries/;

# Start a node with flowpg's configuration minus what $drop matches,
# create the extension and try to create a stream.
sub try_node
{
	my ($name, $drop, $extra) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical');
	my $c = join("\n", grep { !/$drop/ } split /\n/, $conf) . "\n";
	$node->append_conf('postgresql.conf', $c . ($extra // ''));
	$node->start;
	$node->safe_psql('postgres',
		'CREATE EXTENSION flowpg; CREATE TABLE t (k int);');
	my ($rc, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT flowpg.create_stream('s', 'SELECT k, count(*) AS n FROM t GROUP BY k')");
	my $left = $node->safe_psql('postgres',
		"SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM flowpg.stream) + (SELECT count(*) FROM pg_class WHERE relname = 's')");
	$node->stop;
	return ($err, $left);
}

# every SQL function says what to configure when flowpg is not preloaded
{
	my $node = PostgreSQL::Test::Cluster->new('not_loaded');
	$node->init(allows_streaming => 'logical');
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION flowpg; CREATE TABLE t (k int)');
	for my $call ("flowpg.drop_stream('s')", "flowpg.wait('s')",
		"flowpg.checkpoint('s')", "* FROM flowpg.live(NULL::t)",
		"* FROM flowpg.stream_status()")
	{
		my ($rc, $out, $err) = $node->psql('postgres',
			"\\set VERBOSITY verbose\nSELECT $call");
		like($err, qr/55000: flowpg must be loaded via shared_preload_libraries/,
			"SELECT $call without shared_preload_libraries");
	}
	$node->stop;
}

my ($err, $left) = try_node('no_preload', 'shared_preload_libraries');
like($err, qr/55000: flowpg must be loaded via shared_preload_libraries/,
	'without shared_preload_libraries: error names it');
like($err, qr/HINT:  Add flowpg to shared_preload_libraries/, '... with a hint');
is($left, '0', '... and nothing is created');

($err, $left) = try_node('no_logical', 'wal_level', "wal_level = replica\n");
like($err, qr/55000: flowpg requires wal_level = logical/,
	'with wal_level = replica: error names it');
like($err, qr/HINT:  Set wal_level = logical/, '... with a hint');
is($left, '0', '... and nothing is created');

SKIP:
{
	skip 'this server has no output_plugin_libraries', 3 unless $has_plugin_list;
	($err, $left) = try_node('no_plugin', 'output_plugin_libraries');
	like($err, qr/55000: flowpg is not listed in output_plugin_libraries/,
		'without flowpg in output_plugin_libraries: error names it');
	like($err, qr/HINT:  Add flowpg to output_plugin_libraries/, '... with a hint');
	is($left, '0', '... and nothing is created');
}

($err, $left) = try_node('no_slots', 'max_replication_slots', "max_replication_slots = 0\nmax_wal_senders = 0\n");
like($err, qr/55000: flowpg requires max_replication_slots > 0/,
	'with max_replication_slots = 0: error names it');
is($left, '0', '... and nothing is created');

done_testing();

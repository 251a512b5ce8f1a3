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

# A server that has streams, started without flowpg preloaded for a while:
# flowpg's hooks are not there, and its event triggers run its checks and
# refuse what only it can follow.  A result table dropped so left a stream
# that could neither run nor be dropped; one altered so, a stream failed for
# good; a source made unlogged and back lost its rows meanwhile.  Then, with
# flowpg back, the stream goes on, exactly.
{
	my $node = PostgreSQL::Test::Cluster->new('unloaded_while');
	$node->init(allows_streaming => 'logical');
	$node->append_conf('postgresql.conf', $conf);
	$node->start;
	$node->safe_psql('postgres', q{
		CREATE EXTENSION flowpg;
		CREATE ROLE other LOGIN;
		CREATE TABLE src (k int, v int);
		SELECT flowpg.create_stream('sums', 'SELECT k, sum(v) AS s FROM src GROUP BY k');
		INSERT INTO src SELECT g % 5, g FROM generate_series(1, 100) g;
		SELECT flowpg.wait('sums');
		CREATE ROLE alice LOGIN;
		GRANT CREATE ON SCHEMA public TO alice;
		CREATE ROLE owner1 LOGIN;
		GRANT SELECT ON src TO owner1;
		-- (a stream goes only to a role whose privileges its owner has)
		GRANT other TO owner1;
		ALTER TABLE sums OWNER TO owner1;
	});
	$node->stop;
	$node->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
	$node->start;
	my %refused = (
		'DROP TABLE sums' => 'drop a table of stream "public.sums"',
		'DROP TABLE src CASCADE' => 'drop a table of stream "public.sums"',
		'ALTER TABLE src SET UNLOGGED' => 'cannot make table "src" unlogged',
		'ALTER TABLE sums ADD COLUMN note text' => 'sums',
		'ALTER TABLE sums OWNER TO other' => 'change the owner of the result table "sums"',
	);
	for my $ddl (sort keys %refused)
	{
		my ($rc, $out, $err) = $node->psql('postgres', $ddl);
		like($err, qr/ERROR:  .*\Q$refused{$ddl}\E/, "without flowpg loaded: $ddl refused");
	}
	# a role that may not read flowpg's catalog drops its own tables
	$node->safe_psql('postgres', q{SET ROLE alice;
		CREATE TABLE alice_t (a int); DROP TABLE alice_t;
		CREATE TEMP TABLE alice_tt (a int); DROP TABLE alice_tt});
	pass('without flowpg loaded: a role drops its own tables');
	# DDL elsewhere runs; renames of a stream's tables are followed, and
	# REASSIGN OWNED (which no event trigger sees) gives the stream to its
	# table's new owner at its worker's next start
	$node->safe_psql('postgres', q{
		REASSIGN OWNED BY owner1 TO other;
		GRANT SELECT ON src TO other;
		CREATE TABLE other_t (a int); DROP TABLE other_t;
		ALTER TABLE src RENAME TO events;
		INSERT INTO events SELECT g % 7, g FROM generate_series(1, 50) g;
	});
	like($node->safe_psql('postgres', 'SELECT definition FROM flowpg.stream'),
		qr/FROM public\.events/, '... and the definition follows a rename');
	$node->stop;
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'flowpg'\n");
	$node->start;
	$node->safe_psql('postgres', q{
		INSERT INTO events SELECT g % 3, g FROM generate_series(1, 30) g;
		SELECT flowpg.wait('sums');
	});
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM (TABLE sums EXCEPT SELECT k, sum(v) FROM events GROUP BY k) d}),
		'0', 'with flowpg back, the stream counts every row once');
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM (SELECT k, sum(v) FROM events GROUP BY k EXCEPT TABLE sums) d}),
		'0', '... and misses none');
	is($node->safe_psql('postgres', 'SELECT owner FROM flowpg.streams'),
		'other', '... as the owner of its result table');
	$node->stop;
}

done_testing();

# FlowpgTest: helpers shared by flowpg's TAP tests.
#
# new_node    a PostgreSQL::Test::Cluster with flowpg configured and created
# oracle      compare a stream's result table with its query run as a batch
package FlowpgTest;

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use Exporter 'import';
our @EXPORT = qw(new_node oracle_ok wait_stream start_load stop_load crash_restart server_back pg_ctl_restart worker_pid write_scripts click_scripts);

# A started node with flowpg in shared_preload_libraries, wal_level =
# logical, and CREATE EXTENSION flowpg done in database postgres.
sub new_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init(allows_streaming => 'logical',
		has_archiving => $opts{has_archiving} // 0);
	my $conf = $ENV{FLOWPG_CONF}
	  or die "FLOWPG_CONF must name the file test/flowpg-conf wrote";
	$node->append_conf('postgresql.conf', slurp_file($conf));
	$node->append_conf('postgresql.conf', "restart_after_crash = on\n");
	$node->append_conf('postgresql.conf', $opts{extra_conf})
	  if $opts{extra_conf};
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION flowpg');
	return $node;
}

# Wait for a stream with flowpg.wait, retrying while the server restarts.
sub wait_stream
{
	my ($node, $stream, $timeout, $db) = @_;
	$timeout //= '120 s';
	$db //= 'postgres';
	$node->poll_query_until($db,
		"SELECT true FROM (SELECT flowpg.wait('$stream', '$timeout')) w")
	  or die "stream $stream did not catch up";
	return;
}

# The oracle: after flowpg.wait, the result table equals the stream's
# query run as a batch over the source table (EXCEPT ALL, both ways).
# In database postgres unless $db is given.
sub oracle_ok
{
	my ($node, $stream, $query, $label, $db) = @_;
	$db //= 'postgres';
	wait_stream($node, $stream, undef, $db);
	my $missing = $node->safe_psql($db,
		"SELECT count(*) FROM (($query) EXCEPT ALL TABLE $stream) d");
	my $extra = $node->safe_psql($db,
		"SELECT count(*) FROM (TABLE $stream EXCEPT ALL ($query)) d");
	my $rows = $node->safe_psql($db, "SELECT count(*) FROM $stream");
	ok($missing == 0 && $extra == 0,
		"$label: $stream equals its batch query ($rows rows; $missing missing, $extra extra)");
	if ($missing != 0 || $extra != 0)
	{
		diag $node->safe_psql($db,
			"SELECT 'batch' AS side, * FROM (($query) EXCEPT ALL TABLE $stream) d "
			  . "UNION ALL SELECT 'stream', * FROM (TABLE $stream EXCEPT ALL ($query)) e");
	}
	return;
}

# kill -9 the postmaster and start the server again once its children
# are gone: PostgreSQL's crash recovery runs at that start.
sub crash_restart
{
	my ($node) = @_;
	$node->kill9;
	for (1 .. 60)
	{
		# the killed postmaster's children exit once they notice; until
		# then a new postmaster refuses to start
		sleep 1;
		$node->{_pid} = undef;
		return if $node->start(fail_ok => 1);
	}
	BAIL_OUT('the server did not start again after kill -9');
}

# Wait until the server accepts connections again after a crash restart
# (kill -9 of any of its processes restarts them all).  While it
# restarts, psql may exit before it reads its query, and IPC::Run then
# dies of the broken pipe (seen under the assertion-enabled build): try
# again.
sub server_back
{
	my ($node) = @_;
	for (1 .. 10)
	{
		my $back = eval { $node->poll_query_until('postgres', 'SELECT true') };
		return 1 if $back;
		sleep 1;
	}
	return 0;
}

# pg_ctl restart -m $mode (fast or immediate), as a DBA runs it.
sub pg_ctl_restart
{
	my ($node, $mode) = @_;
	local %ENV = $node->_get_env(PGAPPNAME => undef);
	PostgreSQL::Test::Utils::system_or_bail('pg_ctl', '-w', '-D',
		$node->data_dir, '-l', $node->logfile, '-m', $mode, 'restart');
	$node->_update_pid(1);
	return;
}

# The pid of a stream's worker, once it runs.
sub worker_pid
{
	my ($node, $stream) = @_;
	$node->poll_query_until('postgres',
		"SELECT pid IS NOT NULL AND status = 'running' FROM flowpg.streams WHERE name = 'public.$stream'")
	  or die "the worker of $stream did not start";
	return $node->safe_psql('postgres',
		"SELECT pid FROM flowpg.streams WHERE name = 'public.$stream'");
}

# Write pgbench scripts given as "file@weight" => text into $dir; returns
# the "path@weight" arguments for start_load.
sub write_scripts
{
	my ($dir, %scripts) = @_;
	my @args;
	for my $s (sort keys %scripts)
	{
		my ($file, $weight) = split /@/, $s;
		open my $f, '>', "$dir/$file" or die "cannot write $dir/$file: $!";
		print $f $scripts{$s};
		close $f;
		push @args, "$dir/$file\@$weight";
	}
	return @args;
}

# The load of a table clicks (campaign int, cost numeric): single-row
# INSERTs over 40 campaigns, and 50-row INSERTs, 10 to 2; written into
# $dir, returned as the arguments for start_load.
sub click_scripts
{
	my ($dir) = @_;
	return write_scripts($dir,
		'single.sql@10' => q{\set c random(1, 40)
INSERT INTO clicks (campaign, cost) VALUES (:c, :c % 7);
},
		'multi.sql@2' => q{INSERT INTO clicks (campaign, cost)
SELECT g % 30, g % 5 FROM generate_series(1, 50) g;
});
}

# Start pgbench in the background with the given scripts ("file@weight").
sub start_load
{
	my ($node, $seconds, $clients, @scripts) = @_;
	my ($out, $err) = ('', '');
	my @cmd = (
		'pgbench', '-n', '-h', $node->host, '-p', $node->port,
		'-c', $clients, '-j', $clients, '-T', $seconds,
		map { ('-f', $_) } @scripts);
	push @cmd, 'postgres';
	my $h = IPC::Run::start(\@cmd, '>', \$out, '2>', \$err);
	return $h;
}

# Wait for a background load to end (it may have failed: the server was
# killed under it on purpose).
sub stop_load
{
	my ($h) = @_;
	eval { $h->finish; };
	return;
}

1;

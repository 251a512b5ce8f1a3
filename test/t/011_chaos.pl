# Chaos: under continuous load, a seeded random sequence (printed,
# reproducible with FLOWPG_SEED; FLOWPG_CHAOS_STEPS steps, 30 by default)
# of everything a user or a failure does to streams, each on a stream
# picked at random: kill -9 or SIGTERM of its worker, kill -9 of the
# postmaster, pg_ctl restart -m fast, pause and resume, checkpoint
# intervals, flowpg.checkpoint, savepoints, restores and drops of them,
# rebuilds, damage to the result table repaired by a restore or a
# rebuild, owner changes, VACUUM FULL of a result table or of the source,
# a column added to the source, and drop then create then rebuild.  What
# each step did to the others is what the test is for: halfway and at
# the end every stream equals its query run as a batch.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use POSIX ();
use FlowpgTest;

my $seed = $ENV{FLOWPG_SEED} // (time() % 100000);
srand($seed);
diag("chaos seed: $seed (rerun with FLOWPG_SEED=$seed)");
my $steps = $ENV{FLOWPG_CHAOS_STEPS} // 30;

my $node = new_node('chaos', extra_conf => "flowpg.checkpoint_interval = 200ms\n");
$node->safe_psql('postgres', q{
	CREATE ROLE flowpg_ann LOGIN;
	CREATE ROLE flowpg_ben LOGIN;
	-- a stream goes only to a role whose privileges its owner has
	GRANT flowpg_ben TO flowpg_ann;
	CREATE TABLE events (k int, v numeric, at timestamptz DEFAULT now());
	GRANT SELECT ON events TO flowpg_ann, flowpg_ben;
});
my %streams = (
	per_key => q{SELECT k, count(*) AS n, sum(v) AS total, min(v) AS lo, max(v) AS hi
	               FROM events GROUP BY k},
	buckets => q{SELECT k % 7 AS b, count(*) FILTER (WHERE v > 20) AS hot, count(*) AS n,
	                    avg(v) AS mean
	               FROM events WHERE k IS NOT NULL GROUP BY k % 7},
	overall => q{SELECT count(*) AS n, sum(v) AS total, max(k) AS top FROM events},
);
my @names = sort keys %streams;
sub create
{
	my ($name) = @_;
	$node->safe_psql('postgres',
		"SELECT flowpg.create_stream('$name', \$q\$$streams{$name}\$q\$)");
	return;
}
create($_) for @names;

my $dir = PostgreSQL::Test::Utils::tempdir;
my @load = write_scripts($dir,
	'one.sql@6' => q{\set k random(1, 300)
INSERT INTO events (k, v) VALUES (:k, round((random() * 40)::numeric, 2));
},
	'many.sql@2' => q{INSERT INTO events (k, v)
SELECT (random() * 300)::int, round((random() * 40)::numeric, 2) FROM generate_series(1, 40);
},
	'undo.sql@1' => q{BEGIN;
INSERT INTO events (k, v) SELECT g, 1000 FROM generate_series(1, 10) g;
ROLLBACK;
},
	'partly.sql@1' => q{BEGIN;
INSERT INTO events (k, v) VALUES (301, 1);
SAVEPOINT s;
INSERT INTO events (k, v) SELECT g, 1000 FROM generate_series(1, 10) g;
ROLLBACK TO s;
INSERT INTO events (k, v) VALUES (302, 2);
COMMIT;
});

my (%paused, %savepoints, %count, %index_def);
my $sp_seq = 0;
my $col_seq = 0;

sub sql { return $node->safe_psql('postgres', $_[0]); }

# repair a result table damaged by hand: the latest savepoint, else rebuild
sub repair
{
	my ($s) = @_;
	my $sps = $savepoints{$s} // [];
	if (@$sps)
	{
		sql("SELECT flowpg.restore('$s', '$sps->[-1]')");
		return "restore $sps->[-1]";
	}
	sql("SELECT flowpg.rebuild_stream('$s')");
	return 'rebuild';
}

my @ops = (
	[ 'SIGKILL worker' => sub {
		return 'paused' if $paused{$_[0]};
		kill 'KILL', worker_pid($node, $_[0]); '' } ],
	[ 'SIGTERM worker' => sub {
		return 'paused' if $paused{$_[0]};
		sql('SELECT pg_terminate_backend(' . worker_pid($node, $_[0]) . ')'); '' } ],
	[ 'SIGKILL postmaster' => sub { crash_restart($node); '' } ],
	[ 'restart -m fast' => sub { pg_ctl_restart($node, 'fast'); '' } ],
	[ 'pause or resume' => sub {
		my ($s) = @_;
		if ($paused{$s}) { sql("SELECT flowpg.resume_stream('$s')"); delete $paused{$s}; return 'resumed' }
		sql("SELECT flowpg.pause_stream('$s')"); $paused{$s} = 1; 'paused' } ],
	[ 'checkpoint interval' => sub {
		my $ms = (50, 200, 1000, 3000)[ int(rand(4)) ];
		sql("SELECT flowpg.set_checkpoint_interval('$_[0]', '$ms ms')"); "$ms ms" } ],
	[ 'checkpoint' => sub {
		my ($s) = @_;
		return 'paused' if $paused{$s};
		'id ' . sql("SELECT flowpg.checkpoint('$s')") } ],
	[ 'savepoint' => sub {
		my ($s) = @_;
		return 'paused' if $paused{$s};
		my $sp = 'sp' . ++$sp_seq;
		# refused while a rebuild a crash interrupted runs (README): wait first
		sql("SELECT flowpg.wait('$s', '120 s')");
		sql("SELECT flowpg.savepoint('$s', '$sp')");
		push @{ $savepoints{$s} }, $sp;
		$sp } ],
	[ 'restore' => sub {
		my ($s) = @_;
		my $sps = $savepoints{$s} // [];
		return 'no savepoint' unless @$sps;
		my $sp = $sps->[ int(rand(@$sps)) ];
		sql("SELECT flowpg.restore('$s', '$sp')");
		$sp } ],
	[ 'drop savepoint' => sub {
		my ($s) = @_;
		my $sps = $savepoints{$s} // [];
		return 'no savepoint' unless @$sps;
		my $sp = splice(@$sps, int(rand(@$sps)), 1);
		sql("SELECT flowpg.drop_savepoint('$s', '$sp')");
		$sp } ],
	[ 'rebuild' => sub {
		my ($s) = @_;
		sql("SELECT flowpg.rebuild_stream('$s')");
		delete $savepoints{$s};
		'' } ],
	[ 'damage and repair' => sub {
		my ($s) = @_;
		# as a user's mistake would: every row of the result table wrong
		sql("UPDATE $s SET n = n + 1000");
		my $how = repair($s);
		delete $savepoints{$s} if $how eq 'rebuild';
		$how } ],
	[ 'unique index dropped, then made again' => sub {
		my ($s) = @_;
		my $def = sql("SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = '$s'");
		return 'none' if $def eq '';
		$index_def{$s} = $def;
		my ($index) = $def =~ /INDEX (\S+) ON/;
		sql("SET client_min_messages = error; DROP INDEX $index");
		select(undef, undef, undef, 0.2 + rand(0.5));
		sql($def);
		$index } ],
	[ 'owner' => sub {
		my ($s) = @_;
		my $to = ('flowpg_ann', 'flowpg_ben', 'postgres')[ int(rand(3)) ];
		# (from ann to ben, or from postgres; refused otherwise)
		my ($rc, $out, $err) = $node->psql('postgres',
			"SET client_min_messages = warning; ALTER TABLE $s OWNER TO $to");
		return $to if $rc == 0;
		die "connection error: $err" if $rc == 2;    # as safe_psql says it
		die "owner change to $to: $err"
		  unless $err =~ /cannot be given to role $to, whose privileges its owner \S+ does not have/;
		"$to refused" } ],
	[ 'VACUUM FULL' => sub {
		my $t = rand() < 0.5 ? $_[0] : 'events';
		sql("VACUUM FULL $t"); $t } ],
	[ 'add column' => sub {
		my $c = 'extra' . ++$col_seq;
		sql("ALTER TABLE events ADD COLUMN $c int DEFAULT $col_seq"); $c } ],
	[ 'drop, create, rebuild' => sub {
		my ($s) = @_;
		sql("SELECT flowpg.drop_stream('$s')");
		create($s);
		sql("SELECT flowpg.rebuild_stream('$s')");
		delete $paused{$s};
		delete $savepoints{$s};
		'' } ],
);

sub check_all
{
	my ($label) = @_;
	for my $s (sort keys %paused)
	{
		sql("SELECT flowpg.resume_stream('$s')");
	}
	%paused = ();
	for my $s (@names)
	{
		oracle_ok($node, $s, $streams{$s}, $label);
		# nothing is written now: the state in shared memory is the table
		ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM
			((SELECT * FROM flowpg.live(NULL::$s) EXCEPT ALL TABLE $s)
			 UNION ALL (TABLE $s EXCEPT ALL SELECT * FROM flowpg.live(NULL::$s))) d"),
			"$label: flowpg.live($s) equals its result table");
	}
	return;
}

# What the catalog says is paused and which savepoints exist: after a
# step whose operation a crash interrupted, it alone knows.
sub refresh
{
	%paused = map { $_ => 1 } split /\n/,
	  sql(q{SELECT result::text FROM flowpg.stream WHERE paused});
	%savepoints = ();
	for (split /\n/, sql(q{SELECT stream || '|' || name FROM flowpg.savepoints ORDER BY id}))
	{
		my ($st, $sp) = split /\|/;
		$st =~ s/^public\.//;
		push @{ $savepoints{$st} }, $sp;
	}
	return;
}

# An operation of several transactions that a crash cut short: do what
# it had left to do.  (The others are one transaction each: done or not.)
sub finish
{
	my ($what, $s) = @_;
	refresh();
	if ($what eq 'damage and repair')
	{
		repair($s);
	}
	elsif ($what eq 'drop, create, rebuild')
	{
		create($s) if sql("SELECT to_regclass('public.$s') IS NULL") eq 't';
		sql("SELECT flowpg.rebuild_stream('$s')");
	}
	elsif ($what eq 'unique index dropped, then made again')
	{
		sql($index_def{$s}) if sql("SELECT count(*) FROM pg_indexes WHERE tablename = '$s'") eq '0';
	}
	return;
}

# A failure while the operation runs: a child process kills the stream's
# worker or the postmaster after a random delay.
sub inject
{
	my ($s) = @_;
	my $postmaster = rand() < 0.5;
	my $target = $postmaster ? $node->{_pid} : sql(
		"SELECT pid FROM flowpg.streams WHERE name = 'public.$s' AND pid IS NOT NULL");
	return (undef, 'nothing to kill') if !defined $target || $target eq '';
	my $delay = rand(0.4);
	my $child = fork() // die "fork: $!";
	if ($child == 0)
	{
		select(undef, undef, undef, $delay);
		kill 'KILL', $target;
		POSIX::_exit(0);
	}
	return ($child, sprintf('%s killed after %.2f s', $postmaster ? 'postmaster' : 'worker', $delay),
		$postmaster);
}

# How an operation may end when the server crashed under it: psql lost its
# connection (exit status 2, "connection error" from safe_psql), or could
# not be written to, or the worker taking a savepoint went away.  An SQL
# error is never one of them.
my $crashed = qr/^connection error: |Broken pipe|the worker of stream .* restarted while taking savepoint/;

for my $step (1 .. $steps)
{
	my ($what, $op) = @{ $ops[ int(rand(@ops)) ] };
	my $s = $names[ int(rand(@names)) ];
	my $load = start_load($node, 2, 2, @load);
	select(undef, undef, undef, 0.2 + rand(1.0));
	my ($child, $injected, $postmaster);
	($child, $injected, $postmaster) = inject($s)
	  if $what !~ /SIGKILL|SIGTERM|restart/ && rand() < 0.35;
	my $detail = eval { $op->($s) };
	my $error = $@;
	if (defined $child)
	{
		waitpid($child, 0);
		$detail = ($detail // 'interrupted') . "; $injected";
		if ($postmaster)
		{
			# as crash_restart does, without a second kill
			for (1 .. 60)
			{
				sleep 1;
				$node->{_pid} = undef;
				last if $node->start(fail_ok => 1);
			}
		}
	}
	if ($error ne '')
	{
		if (defined $child && $error =~ $crashed)
		{
			note("step $step: $what on $s failed as the server crashed: " . (split /\n/, $error)[0]);
			server_back($node)
			  or die 'the server did not come back';
			finish($what, $s);
		}
		else
		{
			fail("step $step: $what on $s: $error");
		}
	}
	stop_load($load);
	server_back($node)
	  or die 'the server did not come back';
	refresh();
	$count{$what}++;
	$count{'with a crash'}++ if defined $child;
	note("step $step: $what on $s" . (defined $detail && $detail ne '' ? " ($detail)" : ''));
	check_all("after step $step") if $step == int($steps / 2);
}
diag(join(', ', map { "$_: $count{$_}" } sort keys %count));

check_all("after $steps steps");
is(sql(q{SELECT string_agg(name || ' ' || status, ', ' ORDER BY name) FROM flowpg.streams}),
	join(', ', map { "public.$_ running" } @names), 'every stream runs');
is(sql('SELECT count(*) FROM per_key WHERE hi >= 1000'), '0',
	'no rolled-back row was counted');

$node->stop;
done_testing();

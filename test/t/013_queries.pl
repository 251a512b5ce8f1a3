# Random stream queries against the oracle: each round creates streams
# whose queries are drawn at random from what create_stream accepts
# (WHERE clauses, GROUP BY expressions or none, many aggregates with
# FILTER, user-defined functions and aggregates, output expressions over
# aggregates), under random session settings, loads random rows (NULLs,
# NaN and infinities, keys written differently) from two sessions in
# random transaction shapes, crashes the server in the middle, and then
# compares each result table and flowpg.live with the query run as a
# batch.  Reproducible with FLOWPG_SEED; FLOWPG_QUERY_ROUNDS rounds (3).
use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/../perl";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $seed = $ENV{FLOWPG_SEED} // (time() % 100000);
srand($seed);
diag("query seed: $seed (rerun with FLOWPG_SEED=$seed)");
my $rounds = $ENV{FLOWPG_QUERY_ROUNDS} // 3;
my $per_round = 6;

my $node = new_node('queries', extra_conf => "max_prepared_transactions = 10\n");
sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE FUNCTION uf_tag(text) RETURNS text IMMUTABLE STRICT LANGUAGE sql
  AS $$SELECT lower($1) || '!'$$;
CREATE FUNCTION uf_noinl(x int4) RETURNS int4 IMMUTABLE LANGUAGE sql
  SET search_path = pg_catalog AS $$SELECT (x::int8 % 4)::int4$$;
CREATE FUNCTION uf_pl_num(numeric) RETURNS numeric IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
  IF $1 IS NULL OR $1 IN ('NaN', 'Infinity', '-Infinity') THEN RETURN 0; END IF;
  RETURN round($1, 1);
END $$;
CREATE FUNCTION uf_pl_bool(int4, text) RETURNS bool IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN RETURN coalesce($1 % 3 = 0, false) OR coalesce($2 LIKE '%a%', false); END $$;
CREATE FUNCTION ua_rng_sfunc(numeric[], numeric) RETURNS numeric[] IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
  IF $2 IS NULL THEN RETURN $1; END IF;
  IF $1 IS NULL THEN RETURN ARRAY[$2, $2]; END IF;
  RETURN ARRAY[least($1[1], $2), greatest($1[2], $2)];
END $$;
CREATE FUNCTION ua_rng_comb(numeric[], numeric[]) RETURNS numeric[] IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN
  IF $1 IS NULL THEN RETURN $2; END IF;
  IF $2 IS NULL THEN RETURN $1; END IF;
  RETURN ARRAY[least($1[1], $2[1]), greatest($1[2], $2[2])];
END $$;
CREATE FUNCTION ua_rng_final(numeric[]) RETURNS numeric IMMUTABLE LANGUAGE sql
  AS $$SELECT $1[2] - $1[1]$$;
CREATE AGGREGATE ua_spread(numeric) (sfunc = ua_rng_sfunc, stype = numeric[],
  combinefunc = ua_rng_comb, finalfunc = ua_rng_final);
CREATE AGGREGATE ua_numsum(numeric) (sfunc = numeric_avg_accum, stype = internal,
  finalfunc = numeric_sum, combinefunc = numeric_avg_combine,
  serialfunc = numeric_avg_serialize, deserialfunc = numeric_avg_deserialize);
-- floats added in another order differ in the last bits (README)
CREATE FUNCTION fclose(a float8, b float8) RETURNS bool IMMUTABLE LANGUAGE sql AS $$
  SELECT a IS NOT DISTINCT FROM b OR abs(a - b) <= 1e-9 * greatest(abs(a), abs(b)) + 1e-12
$$;
});

my @cols = ([i4 => 'int4'], [i8 => 'int8'], [n => 'numeric'], [f8 => 'float8'],
	[t => 'text'], [ts => 'timestamptz'], [iv => 'interval'], [b => 'bool'],
	[ip => 'inet'], [j => 'jsonb']);
my $colnames = join ', ', map { $_->[0] } @cols;

sub pick { return $_[ int(rand(@_)) ]; }

# A random value of a column, as text (undef for NULL).
sub value
{
	my ($col, $nkeys) = @_;
	return undef if rand() < 0.12;
	my $x = rand();
	my $k = int(rand(2 * $nkeys + 1)) - $nkeys;
	return $k if $col eq 'i4';
	return $x < 0.05 ? pick('9223372036854775807', '-9223372036854775808') : $k * pick(1, 1, 1000003)
	  if $col eq 'i8';
	return $x < 0.08 ? pick('NaN', 'Infinity', '-Infinity', '1e30', '-0', '0.000')
	  : pick('%s', '%.2f', '%.4f') =~ s/%(\.\d)?[sf]/sprintf($&, $k \/ 4)/er
	  if $col eq 'n';
	# quarters add up exactly in any order; NaN and infinities too
	return $x < 0.06 ? pick('NaN', 'Infinity', '-Infinity', '-0') : $k / 4 if $col eq 'f8';
	return pick('', 'a', 'A', 'b', 'abc', 'ABC', 'Ärger', 'ärger', '日本語', 'x y', '%_\\', 'null', 'ß')
	  if $col eq 't';
	return $x < 0.03 ? pick('infinity', '-infinity')
	  : sprintf('2024-%02d-%02d %02d:%02d:%02d%s', pick(1, 3, 10, 11), 1 + int(rand(28)),
		int(rand(24)), pick(0, 30, 59), int(rand(60)), pick('', '+00', '-05', '+05:30'))
	  if $col eq 'ts';
	return pick('1 day', '24 hours', '1 mon', '30 days', '-5 min', '1 year 2 mons', '0', '-1 day +24 hours')
	  if $col eq 'iv';
	return pick('t', 'f') if $col eq 'b';
	return pick('10.0.0.1', '10.0.0.1/8', '10.0.0.1/32', '::1', '192.168.1.0/24', '2001:db8::/32')
	  if $col eq 'ip';
	return pick('{"a":"x","n":1}', '{"n":2.50}', '{"n":2.5}', '{"a":null}', '{}', '{"a":"ü","n":-3}', '[]');
}

sub literal { my ($v) = @_; return defined $v ? "'" . ($v =~ s/'/''/gr) . "'" : 'NULL'; }
sub csv { my ($v) = @_; return defined $v ? '"' . ($v =~ s/"/""/gr) . '"' : ''; }

# A random expression of a kind; deeper ones nest.
sub expr
{
	my ($kind, $depth) = @_;
	$depth //= 0;
	my $deep = $depth < 2 && rand() < 0.4;
	my $d = $depth + 1;
	my @e;
	if ($kind eq 'int')
	{
		@e = ('i4', 'i8', '(i4 % 7)', '((i4 / 10) * 10)', 'length(t)', 'uf_noinl(i4)',
			'coalesce(i4, 0)', 'masklen(ip)', '(i8 / 1000003)');
		push @e, 'CASE WHEN ' . expr('bool', $d) . ' THEN i4 ELSE (i4 % 5) END',
		  'nullif(' . expr('int', $d) . ', 0)' if $deep;
	}
	elsif ($kind eq 'num')
	{
		@e = ('n', 'round(n, 1)', 'i8::numeric', 'coalesce(n, 0)', 'uf_pl_num(n)',
			"(j->>'n')::numeric", '(n + i4)', 'trunc(n)', 'extract(hour from ts)', '(i4::numeric / 3)');
		push @e, '(' . expr('num', $d) . ' + ' . expr('num', $d) . ')' if $deep;
	}
	elsif ($kind eq 'f8')
	{
		@e = ('f8', '(f8 / 4)', 'i4::float8', 'abs(f8)', 'coalesce(f8, 0)', '(f8 * 2 - i4)');
	}
	elsif ($kind eq 'text')
	{
		@e = ('t', 'lower(t)', "coalesce(t, '')", 'left(t, 2)', 'uf_tag(t)', 'i4::text', "(j->>'a')",
			'md5(t)', 'host(ip)', 'iv::text', 'f8::text', 'n::text', "to_char(ts, 'YYYY-MM-DD HH24')",
			'(t COLLATE "C")', 'ts::text');
		push @e, 'CASE WHEN ' . expr('bool', $d) . ' THEN ' . expr('text', $d) . ' ELSE t END',
		  'nullif(' . expr('text', $d) . q{, '')} if $deep;
	}
	elsif ($kind eq 'bool')
	{
		@e = ('b', '(i4 > ' . (int(rand(7)) - 3) . ')', '(n < 2.5)', '(f8 >= 0)', q{(t LIKE 'a%')},
			'(i4 IN (1, 2, 3, NULL))', '(i4 BETWEEN -3 AND 3)', q{(t IS DISTINCT FROM 'a')},
			'(n IS NOT DISTINCT FROM 2.50)', 'uf_pl_bool(i4, t)', q{(ip << '10.0.0.0/8')},
			q{(j ? 'a')}, q{(iv > '1 day')}, q{(f8 = 'NaN')}, q{(t ~ '^[a-z]')});
		push @e, '(' . expr('bool', $d) . ' AND ' . expr('bool', $d) . ')',
		  '(' . expr('bool', $d) . ' OR ' . expr('bool', $d) . ')',
		  '(NOT ' . expr('bool', $d) . ')',
		  '(' . expr('bool', $d) . ' IS NOT TRUE)',
		  'coalesce(' . expr('bool', $d) . ', ' . expr('bool', $d) . ')' if $deep;
	}
	elsif ($kind eq 'tstz')
	{
		@e = ('ts', q{date_trunc('day', ts)}, q{date_trunc('hour', ts)}, q{(ts + interval '1 hour')},
			q{date_trunc('day', ts, 'Asia/Tokyo')}, 'ts::date');
	}
	else
	{
		@e = ('iv', '(iv * 2)', 'justify_hours(iv)');
	}
	return pick(@e);
}

my %aggs = (
	int => [qw(sum avg min max stddev var_samp bit_and bit_or count)],
	num => [qw(sum avg min max stddev variance count ua_numsum ua_spread)],
	f8 => [qw(sum avg min max stddev corr regr_slope covar_pop regr_count)],
	text => [qw(count min max)],
	bool => [qw(bool_and bool_or every count)],
	tstz => [qw(min max count)],
	iv => [qw(sum avg min max)]);

sub aggregate
{
	my $kind = pick(sort keys %aggs);
	my $fn = pick(@{ $aggs{$kind} });
	my $arg = expr($kind);
	my $call = $fn =~ /^(corr|regr_|covar_)/ ? "$fn($arg, " . expr('f8') . ')' : "$fn($arg)";
	($call, $kind, $fn) = ('count(*)', 'any', 'count') if rand() < 0.1;
	$call .= ' FILTER (WHERE ' . expr('bool') . ')' if rand() < 0.3;
	return $call if rand() < 0.6;
	return "coalesce($call, 0)" if $fn eq 'sum' && $kind =~ /^(int|num)$/;
	return "round($call, 2)" if $fn eq 'avg' && $kind =~ /^(int|num)$/;
	return "coalesce($call, '')" if $fn =~ /^(min|max)$/ && $kind eq 'text';
	return "$call * 100 / NULLIF(count(*), 0)" if $fn eq 'count';
	return "uf_pl_num($call)" if $kind eq 'num' && $fn =~ /^(sum|min|max)$/;
	return $call;
}

sub query
{
	my ($src) = @_;
	my %seen;
	my @keys = grep { !$seen{$_}++ }
	  map { expr(pick(qw(int int num text text bool tstz tstz iv f8))) } 1 .. pick(0, 1, 1, 1, 2, 2, 3);
	my @outs = ((map { [$_, 1] } @keys), map { [aggregate(), 0] } 1 .. 1 + int(rand(6)));
	# shuffle
	for (my $i = @outs - 1; $i > 0; $i--)
	{
		my $j = int(rand($i + 1));
		@outs[$i, $j] = @outs[$j, $i];
	}
	my $q = 'SELECT ' . join(', ', map { "$outs[$_][0] AS c$_" } 0 .. $#outs) . " FROM $src";
	$q .= ' WHERE ' . expr('bool') if rand() < 0.7;
	$q .= ' GROUP BY ' . join(', ', @keys) if @keys;
	return ($q, [ map { "c$_" } grep { $outs[$_][1] } 0 .. $#outs ], scalar @outs);
}

# A psql script of random transactions of random shapes.
sub transactions
{
	my ($src, $count, $nkeys, $tag) = @_;
	my $row = sub { return [ map { value($_->[0], $nkeys) } @cols ]; };
	my $insert = sub {
		my ($n) = @_;
		return "INSERT INTO $src ($colnames) VALUES "
		  . join(', ', map { '(' . join(', ', map { literal($_) } @{ $row->() }) . ')' } 1 .. $n) . ";\n";
	};
	my $copy = sub {
		my ($n) = @_;
		return "COPY $src ($colnames) FROM STDIN WITH (FORMAT csv);\n"
		  . join('', map { join(',', map { csv($_) } @{ $row->() }) . "\n" } 1 .. $n) . "\\.\n";
	};
	my $script = "SET DateStyle = 'ISO, YMD';\nSET IntervalStyle = 'postgres';\n";
	for my $i (1 .. $count)
	{
		my $n = pick(1, 1, 3, 10, 50, 200);
		my $x = rand();
		if ($x < 0.35) { $script .= $insert->($n); }
		elsif ($x < 0.5) { $script .= $copy->($n); }
		elsif ($x < 0.65)
		{
			$script .= "BEGIN;\n" . $insert->($n) . "SAVEPOINT s;\n" . $insert->($n)
			  . "ROLLBACK TO SAVEPOINT s;\n" . $copy->(2) . "COMMIT;\n";
		}
		elsif ($x < 0.72) { $script .= "BEGIN;\n" . $insert->($n) . $copy->($n) . "ROLLBACK;\n"; }
		elsif ($x < 0.8)
		{
			$script .= "BEGIN;\nSAVEPOINT a;\n" . $insert->($n) . "SAVEPOINT b;\n" . $copy->($n)
			  . "RELEASE SAVEPOINT b;\nRELEASE SAVEPOINT a;\n" . $insert->(1) . "COMMIT;\n";
		}
		elsif ($x < 0.87)
		{
			my $r = $row->();
			my $vals = join(', ', map { literal($r->[$_]) . '::' . $cols[$_][1] } 0 .. $#cols);
			$script .= "INSERT INTO $src ($colnames) SELECT $vals FROM generate_series(1, "
			  . pick(100, 1000) . ");\n";
		}
		elsif ($x < 0.94)
		{
			my $gid = "q${tag}_$i";
			$script .= "BEGIN;\n" . $insert->($n) . "PREPARE TRANSACTION '$gid';\n"
			  . (rand() < 0.7 ? 'COMMIT' : 'ROLLBACK') . " PREPARED '$gid';\n";
		}
		else
		{
			$script .= "BEGIN;\n" . $insert->($n) . "SAVEPOINT s;\nSELECT 1 / 0;\nROLLBACK TO s;\nCOMMIT;\n";
		}
	}
	return $script;
}

# Run scripts in sessions of their own, in the background; each session's
# error output is kept in $errors{"round_i"}.
my %errors;
sub start_sessions
{
	my ($round, @scripts) = @_;
	my @h;
	for my $i (0 .. $#scripts)
	{
		my $file = $PostgreSQL::Test::Utils::tmp_check . "/load_${round}_$i.sql";
		open my $f, '>', $file or die "cannot write $file: $!";
		print $f $scripts[$i];
		close $f;
		my $out = '';
		$errors{"${round}_$i"} = '';
		push @h, IPC::Run::start(
			[ 'psql', '-X', '-q', '-h', $node->host, '-p', $node->port, '-d', 'postgres', '-f', $file ],
			'>', \$out, '2>', \$errors{"${round}_$i"});
	}
	return @h;
}

my %settings = (
	TimeZone => [ 'UTC', 'America/New_York', 'Asia/Kolkata', 'Pacific/Chatham', 'Australia/Lord_Howe' ],
	DateStyle => [ 'ISO, MDY', 'SQL, DMY', 'German', 'Postgres, YMD' ],
	IntervalStyle => [ 'postgres', 'iso_8601', 'sql_standard', 'postgres_verbose' ],
	extra_float_digits => [ '0', '1', '3', '-5' ]);

for my $round (1 .. $rounds)
{
	my $src = "src$round";
	my $nkeys = pick(3, 10, 50);
	my $set = join '', map { "SET $_ = '" . pick(@{ $settings{$_} }) . "';\n" } sort keys %settings;
	sql("CREATE TABLE $src (" . join(', ', map { "$_->[0] $_->[1]" } @cols) . ')');
	my @streams;
	for my $i (1 .. $per_round)
	{
		my ($q, $keys, $ncols) = query($src);
		my $name = "r${round}_$i";
		my $interval = pick('NULL', q{'10 ms'}, q{'200 ms'}, q{'1 s'}, q{'5 s'});
		my ($rc, $out, $err) = $node->psql('postgres',
			$set . "SELECT flowpg.create_stream('$name', \$q\$$q\$q\$, $interval)");
		is($rc, 0, "round $round: create_stream accepts $name: $q") or diag($err);
		next if $rc != 0;
		my $floats = sql("SELECT string_agg(attname, ' ') FROM pg_attribute WHERE attrelid = '$name'::regclass "
			  . "AND attnum > 0 AND atttypid IN ('float4'::regtype, 'float8'::regtype)");
		push @streams, { name => $name, query => $q, keys => $keys, ncols => $ncols,
			floats => { map { $_ => 1 } split ' ', $floats } };
	}

	# load from two sessions; a crash in the middle (a worker's kill -9,
	# which restarts the server, or the postmaster's), pause and resume
	my @load = start_sessions($round, map { transactions($src, 30 + int(rand(30)), $nkeys, "${round}_$_") } 1 .. 2);
	select(undef, undef, undef, 0.3 + rand(1.5));
	my $fault = ($round + $seed) % 3;
	if ($fault == 0 && @streams)
	{
		my $victim = pick(@streams)->{name};
		my $pid = sql("SELECT pid FROM flowpg.streams WHERE name = 'public.$victim'");
		kill 'KILL', $pid if $pid;
		server_back($node) or BAIL_OUT('the server did not come back');
	}
	elsif ($fault == 1)
	{
		crash_restart($node);
	}
	elsif (@streams)
	{
		my $victim = pick(@streams)->{name};
		$node->psql('postgres', "SELECT flowpg.pause_stream('$victim')");
		$node->psql('postgres', "SELECT flowpg.checkpoint(name) FROM flowpg.streams");
		$node->psql('postgres', "SELECT flowpg.resume_stream('$victim')");
	}
	eval { $_->finish } for @load;
	# rows after the recovery too; prepared transactions a crash left
	@load = start_sessions("${round}b", transactions($src, 10, $nkeys, "${round}b"));
	eval { $_->finish } for @load;
	# (the division by zero is one of the shapes, rolled back to a savepoint)
	is($errors{"${round}b_0"} =~ s/^.*(division by zero|ROLLBACK TO|SELECT 1 \/ 0).*\n//mgr, '',
		"round $round: the load after the crash ran without errors");
	isnt(sql("SELECT count(*) FROM $src"), '0', "round $round: the load wrote rows");
	$node->psql('postgres', "COMMIT PREPARED '$_'")
	  for split /\n/, sql('SELECT gid FROM pg_prepared_xacts');

	for my $s (@streams)
	{
		my $name = $s->{name};
		my %key = map { $_ => 1 } @{ $s->{keys} };
		my $match = join ' AND ', map {
			my $c = "c$_";
			($s->{floats}{$c} && !$key{$c}) ? "fclose(r.$c, b.$c)" : "r.$c IS NOT DISTINCT FROM b.$c"
		} 0 .. $s->{ncols} - 1;
		my ($rc, $out, $err) = $node->psql('postgres', "SELECT flowpg.wait('$name', '120 s')");
		is($rc, 0, "round $round: $name catches up") or diag("seed $seed, query: $s->{query}\n$err");
		next if $rc != 0;
		for my $from ($name, "flowpg.live(NULL::$name)")
		{
			my $diff = sql($set . "WITH r AS MATERIALIZED (SELECT * FROM $from), b AS MATERIALIZED ($s->{query}) "
				  . "SELECT (SELECT count(*) FROM r WHERE NOT EXISTS (SELECT FROM b WHERE $match)) + "
				  . "(SELECT count(*) FROM b WHERE NOT EXISTS (SELECT FROM r WHERE $match)) + "
				  . "abs((SELECT count(*) FROM r) - (SELECT count(*) FROM b)) "
				  . "|| ' of ' || (SELECT count(*) FROM b)");
			like($diff, qr/^0 of \d+$/, "round $round: $from equals its batch query ($diff rows differ)")
			  or diag("seed $seed, query: $s->{query}\n"
				  . sql($set . "(SELECT 'stream', * FROM $from EXCEPT ALL ($s->{query})) UNION ALL "
					  . "(SELECT 'batch', * FROM (($s->{query}) EXCEPT ALL SELECT * FROM $from) x)"));
		}
	}
	sql("SELECT flowpg.drop_stream('$_->{name}')") for @streams;
	sql("DROP TABLE $src");
}

$node->stop;
done_testing();

# Streams that change hands while rows come: ALTER TABLE ... OWNER TO of
# a result table, REASSIGN OWNED and DROP ROLE of the old owner, a change
# rolled back, and kill -9 of the postmaster right after a change
# commits.  The stream's worker runs as whoever owns it now; every row is
# counted once, whoever counted it.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FlowpgTest;

my $node = new_node('owners');
$node->safe_psql('postgres', q{
	CREATE ROLE flowpg_alice LOGIN;
	CREATE ROLE flowpg_bob LOGIN;
	CREATE ROLE flowpg_team LOGIN;
	-- a stream goes only to a role whose privileges its owner has
	GRANT flowpg_bob TO flowpg_alice;
	GRANT flowpg_team TO flowpg_bob;
	CREATE TABLE clicks (id bigserial, campaign int, cost numeric);
	-- current_user, as the worker's session has it (a stream refuses
	-- current_user itself)
	CREATE FUNCTION runner(int) RETURNS name IMMUTABLE LANGUAGE plpgsql
		AS 'BEGIN RETURN current_user; END';
	GRANT SELECT, INSERT ON clicks TO flowpg_alice, flowpg_bob, flowpg_team;
	GRANT CREATE ON SCHEMA public TO flowpg_alice, flowpg_bob, flowpg_team;
	SET ROLE flowpg_alice;
	SELECT flowpg.create_stream('spend',
		'SELECT campaign, count(*) AS clicks, sum(cost) AS spend FROM clicks GROUP BY campaign');
	SELECT flowpg.create_stream('runs',
		'SELECT runner(campaign) AS runner, count(*) AS n FROM clicks GROUP BY runner(campaign)');
});
my $spend = q{SELECT campaign, count(*) AS clicks, sum(cost) AS spend FROM clicks GROUP BY campaign};

sub owners
{
	return $node->safe_psql('postgres',
		q{SELECT string_agg(name || '=' || owner, ' ' ORDER BY name) FROM flowpg.streams});
}

# runs counts every row once, under the role that ran its worker
sub runs_ok
{
	my ($label) = @_;
	wait_stream($node, 'runs');
	is($node->safe_psql('postgres',
			'SELECT (SELECT sum(n) FROM runs) = (SELECT count(*) FROM clicks)'),
		't', "$label: runs counts each row once");
	return;
}

# the rows committed from now on are counted as $role
sub counts_as
{
	my ($role, $label) = @_;
	wait_stream($node, 'runs');
	my $before = $node->safe_psql('postgres',
		"SELECT coalesce(sum(n), 0) FROM runs WHERE runner = '$role'");
	$node->safe_psql('postgres',
		'INSERT INTO clicks (campaign, cost) SELECT g % 40, 1 FROM generate_series(1, 7) g');
	wait_stream($node, 'runs');
	is($node->safe_psql('postgres',
			"SELECT sum(n) - $before FROM runs WHERE runner = '$role'"),
		'7', "$label: the worker runs as $role");
	return;
}

my $dir = PostgreSQL::Test::Utils::tempdir;
my @scripts = click_scripts($dir);

# under load: to bob, then a change rolled back
my $load = start_load($node, 8, 2, @scripts);
sleep 2;
$node->safe_psql('postgres', q{
	ALTER TABLE spend OWNER TO flowpg_bob;
	ALTER TABLE runs OWNER TO flowpg_bob;
});
sleep 2;
$node->safe_psql('postgres', q{
	BEGIN;
	ALTER TABLE spend OWNER TO flowpg_team;
	ROLLBACK;
});
stop_load($load);
is(owners(), 'public.runs=flowpg_bob public.spend=flowpg_bob', 'ALTER TABLE ... OWNER TO gives the streams to bob');
oracle_ok($node, 'spend', $spend, 'owner changed under load');
runs_ok('owner changed under load');
counts_as('flowpg_bob', 'after ALTER TABLE ... OWNER TO');

# the new owner may not read the source: refused, nothing changes
$node->safe_psql('postgres', 'REVOKE SELECT ON clicks FROM flowpg_team');
my ($rc, $out, $err) = $node->psql('postgres', 'ALTER TABLE spend OWNER TO flowpg_team');
like($err, qr/permission denied for table clicks.*new owner of stream "public.spend"/s,
	'a new owner who may not read the source is refused');
$node->safe_psql('postgres', 'GRANT SELECT ON clicks TO flowpg_team');

# nor does a stream go to a role whose privileges its owner lacks (alice
# has bob's, not the other way round), even from a superuser
($rc, $out, $err) = $node->psql('postgres', 'ALTER TABLE spend OWNER TO flowpg_alice');
like($err, qr/ERROR:  stream "public.spend" cannot be given to role flowpg_alice, whose privileges its owner flowpg_bob does not have/,
	'a stream is not given to a role whose privileges its owner lacks');

# REASSIGN OWNED under load, then kill -9 of the postmaster right after it
# commits (the worker may not have seen the change yet): after recovery
# the streams run as the team
$load = start_load($node, 6, 2, @scripts);
sleep 2;
$node->safe_psql('postgres', 'REASSIGN OWNED BY flowpg_bob TO flowpg_team');
crash_restart($node);
stop_load($load);
is(owners(), 'public.runs=flowpg_team public.spend=flowpg_team',
	'REASSIGN OWNED gives the streams to the team, across kill -9');
oracle_ok($node, 'spend', $spend, 'kill -9 after REASSIGN OWNED');
runs_ok('kill -9 after REASSIGN OWNED');
counts_as('flowpg_team', 'after REASSIGN OWNED and kill -9');

# the old owner can go now; its successor cannot while it owns streams
$node->safe_psql('postgres', 'DROP OWNED BY flowpg_bob; DROP ROLE flowpg_bob');
# (the team may act as alice from now on)
$node->safe_psql('postgres', 'GRANT flowpg_alice TO flowpg_team');
($rc, $out, $err) = $node->psql('postgres', 'DROP ROLE flowpg_team');
like($err, qr/role "flowpg_team" cannot be dropped because it owns a flowpg stream/,
	'DROP ROLE of the owner of streams is refused');

# a change in a subtransaction rolled back is no change
$node->safe_psql('postgres', q{
	BEGIN;
	SAVEPOINT s;
	ALTER TABLE spend OWNER TO flowpg_alice;
	ROLLBACK TO s;
	COMMIT;
});
is(owners(), 'public.runs=flowpg_team public.spend=flowpg_team',
	'a change rolled back to a savepoint is not kept');
counts_as('flowpg_team', 'after a change rolled back to a savepoint');

# a change rolled back after kill -9 (the transaction never committed)
$node->safe_psql('postgres', 'INSERT INTO clicks (campaign, cost) VALUES (1, 1)');
my $psql = $node->background_psql('postgres', on_error_stop => 0);
$psql->query_safe('SET client_min_messages = warning');
$psql->query_safe('BEGIN');
$psql->query_safe('ALTER TABLE spend OWNER TO flowpg_alice');
crash_restart($node);
eval { $psql->quit };
is(owners(), 'public.runs=flowpg_team public.spend=flowpg_team',
	'a change that never committed is not kept');
oracle_ok($node, 'spend', $spend, 'kill -9 during an uncommitted change');
runs_ok('kill -9 during an uncommitted change');
counts_as('flowpg_team', 'after an uncommitted change');

# streams that failed (their owner lost SELECT on the source) given to a
# role that may read it, the old owner dropped while the workers wait out
# their back-off: they run again, as the new owner
$node->safe_psql('postgres', q{
	REVOKE flowpg_alice FROM flowpg_team;
	REVOKE SELECT ON clicks FROM flowpg_team;
	INSERT INTO clicks (campaign, cost) VALUES (2, 2);
});
$node->poll_query_until('postgres',
	q{SELECT bool_and(status = 'failed' AND last_error LIKE 'permission denied%') FROM flowpg.streams})
  or die 'the streams did not fail';
$node->safe_psql('postgres', q{
	GRANT flowpg_alice TO flowpg_team;
	REASSIGN OWNED BY flowpg_team TO flowpg_alice;
	DROP OWNED BY flowpg_team;
	DROP ROLE flowpg_team;
});
is(owners(), 'public.runs=flowpg_alice public.spend=flowpg_alice',
	'failed streams given away, their old owner dropped');
oracle_ok($node, 'spend', $spend, 'failed streams given away');
runs_ok('failed streams given away');
counts_as('flowpg_alice', 'failed streams given away');

# The owner of a database cannot have flowpg run its code as a superuser:
# flowpg's scan of each database as the server starts connects as the
# bootstrap superuser, with the database's settings, and an operator of
# the database owner's, first in its search_path, was found by a
# statement of flowpg's (IS DISTINCT FROM) and made its owner superuser.
$node->safe_psql('postgres', q{
	CREATE ROLE flowpg_dbowner LOGIN;
	CREATE DATABASE owned_db OWNER flowpg_dbowner;
});
$node->safe_psql('owned_db', q{
	CREATE EXTENSION flowpg;
	SET ROLE flowpg_dbowner;
	CREATE SCHEMA evil;
	CREATE FUNCTION evil.grab() RETURNS void LANGUAGE plpgsql AS $f$
	BEGIN
		IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
			EXECUTE 'ALTER ROLE flowpg_dbowner SUPERUSER';
		END IF;
	END $f$;
	CREATE FUNCTION evil.texteq(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $f$
	BEGIN PERFORM evil.grab(); RETURN a OPERATOR(pg_catalog.=) b; END $f$;
	CREATE FUNCTION evil.textne(a text, b text) RETURNS boolean LANGUAGE plpgsql AS $f$
	BEGIN PERFORM evil.grab(); RETURN a OPERATOR(pg_catalog.<>) b; END $f$;
	CREATE FUNCTION evil.int4eq(a int4, b int4) RETURNS boolean LANGUAGE plpgsql AS $f$
	BEGIN PERFORM evil.grab(); RETURN a OPERATOR(pg_catalog.=) b; END $f$;
	CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
	CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.textne);
	CREATE OPERATOR evil.= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = evil.int4eq);
	CREATE TABLE public.t (k int);
	SELECT flowpg.create_stream('public.s', 'SELECT k, count(*) AS n FROM public.t GROUP BY k');
	ALTER DATABASE owned_db SET search_path = evil, pg_catalog, public;
});
$node->restart;
$node->safe_psql('owned_db', 'INSERT INTO t SELECT g % 3 FROM generate_series(1, 30) g');
oracle_ok($node, 's', 'SELECT k, count(*) AS n FROM public.t GROUP BY k',
	'a stream of a database whose search_path names its owner\'s operators first', 'owned_db');
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'flowpg_dbowner'}),
	'f', 'the database owner\'s operators never ran as a superuser');

# The attack that rule is for: a superuser took a stream over (ALTER
# TABLE ... OWNER TO, or REASSIGN OWNED BY its owner, as when the owner
# leaves), and a trigger the old owner had put on its result table made
# the old owner a superuser at the next checkpoint (security helper).
# Refused both ways (42501); the stream goes to a role the owner may act
# as, with its trigger.
$node->safe_psql('postgres', q{
	CREATE ROLE flowpg_eve LOGIN;
	CREATE TABLE eve_clicks (campaign int, cost numeric);
	GRANT SELECT, INSERT ON eve_clicks TO flowpg_eve, flowpg_alice;
	GRANT CREATE ON SCHEMA public TO flowpg_eve;
	SET ROLE flowpg_eve;
	CREATE FUNCTION eve_grab() RETURNS trigger LANGUAGE plpgsql AS $f$
	BEGIN
		IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
			EXECUTE 'ALTER ROLE flowpg_eve SUPERUSER';
		END IF;
		RETURN NEW;
	END $f$;
	SELECT flowpg.create_stream('eve_spend', 'SELECT campaign, count(*) AS clicks FROM eve_clicks GROUP BY campaign');
	CREATE TRIGGER grab AFTER INSERT OR UPDATE ON eve_spend FOR EACH ROW EXECUTE FUNCTION eve_grab();
});
($rc, $out, $err) = $node->psql('postgres', 'ALTER TABLE eve_spend OWNER TO CURRENT_USER');
like($err, qr/ERROR:  stream "public.eve_spend" cannot be given to role \w+, whose privileges its owner flowpg_eve does not have\n.*\nHINT:  Give it to a role that flowpg_eve is a member of/,
	'a stream is not given to a superuser by ALTER TABLE ... OWNER TO');
($rc, $out, $err) = $node->psql('postgres', 'REASSIGN OWNED BY flowpg_eve TO CURRENT_USER');
like($err, qr/ERROR:  stream "public.eve_spend" cannot be given to role \w+, whose privileges its owner flowpg_eve does not have/,
	'... nor by REASSIGN OWNED');
$node->safe_psql('postgres', q{
	INSERT INTO eve_clicks (campaign, cost) SELECT g % 5, 1 FROM generate_series(1, 50) g;
	GRANT flowpg_alice TO flowpg_eve;
	REASSIGN OWNED BY flowpg_eve TO flowpg_alice;
	INSERT INTO eve_clicks (campaign, cost) SELECT g % 5, 1 FROM generate_series(1, 50) g;
});
like(owners(), qr/public\.eve_spend=flowpg_alice/, '... and goes to a role its owner may act as');
oracle_ok($node, 'eve_spend', 'SELECT campaign, count(*) AS clicks FROM eve_clicks GROUP BY campaign',
	'the stream given by REASSIGN OWNED');
is($node->safe_psql('postgres', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'flowpg_eve'}),
	'f', 'the old owner\'s trigger never ran as a superuser');

$node->stop;
done_testing();

/*-------------------------------------------------------------------------
 *
 * api.c
 *	  SQL-callable functions: create_stream, drop_stream, wait, checkpoint,
 *	  live and stream_status.
 *
 * These run in ordinary backends, as the calling user.  Stream names are
 * resolved like table names, with the caller's search_path; every SQL
 * statement these functions generate quotes and qualifies its names.
 * Catalog rows are written through catalog.c, as the extension owner.
 *
 * Locking: create_stream takes the stream's lock (FlowpgLockStream)
 * exclusively until its transaction ends, and so does drop_stream, once it
 * has locked the result table and its transaction commits (tables before
 * streams: see CatalogLockStream); wait and
 * checkpoint only read and bump counters in the stream's StreamCtl under
 * its spinlock and sleep on its condition variable; live holds the
 * stream's state_lock shared while it copies the state.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include <ctype.h>

#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xlogrecovery.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "pgstat.h"
#include "replication/origin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/rls.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/varlena.h"

#include "adopt.h"
#include "api.h"
#include "catalog.h"
#include "compile.h"
#include "control.h"
#include "decode.h"
#include "operators.h"
#include "state.h"

PG_FUNCTION_INFO_V1(flowpg_create_stream);
PG_FUNCTION_INFO_V1(flowpg_drop_stream);
PG_FUNCTION_INFO_V1(flowpg_wait);
PG_FUNCTION_INFO_V1(flowpg_checkpoint);
PG_FUNCTION_INFO_V1(flowpg_live);
PG_FUNCTION_INFO_V1(flowpg_pause_stream);
PG_FUNCTION_INFO_V1(flowpg_resume_stream);
PG_FUNCTION_INFO_V1(flowpg_set_checkpoint_interval);
PG_FUNCTION_INFO_V1(flowpg_stream_status);
PG_FUNCTION_INFO_V1(flowpg_free_stream_entries);
PG_FUNCTION_INFO_V1(flowpg_slot_origin);

/* ---------------------------------------------------------------------
 * create_stream
 * ---------------------------------------------------------------------
 */

char *
ApiTextArg(FunctionCallInfo fcinfo, int n, const char *what)
{
	char	   *str;

	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	str = text_to_cstring(PG_GETARG_TEXT_PP(n));
	if (str[strspn(str, " \t\n\r\f\v")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	return str;
}

/*
 * A positive interval argument in milliseconds; -1 if NULL and allowed.
 * Longer than INT_MAX milliseconds is an error if bounded (a checkpoint
 * interval is kept in milliseconds), else INT_MAX (a timeout: that long).
 */
static int
interval_arg(FunctionCallInfo fcinfo, int n, const char *what, bool null_ok,
			 bool bounded)
{
	Interval   *iv;
	int64		usecs;

	if (PG_ARGISNULL(n))
	{
		if (null_ok)
			return -1;
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	}
	iv = PG_GETARG_INTERVAL_P(n);
	usecs = FlowpgIntervalUsecs(iv);
	if (usecs < 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at least 1 millisecond", what),
				 errdetail("The value given was %s.",
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(iv))))));
	if (bounded && usecs / 1000 > INT_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at most %d milliseconds (about 24 days)",
						what, INT_MAX),
				 errdetail("The value given was %s.",
						   DatumGetCString(DirectFunctionCall1(interval_out,
															   IntervalPGetDatum(iv))))));
	return (int) Min(usecs / 1000, (int64) INT_MAX);
}

/*
 * The result table's RangeVar.  An identifier longer than NAMEDATALEN - 1
 * bytes is refused, where SQL would silently truncate it.
 */
static RangeVar *
result_rangevar(text *name)
{
	char	   *raw = text_to_cstring(name);
	char	   *p = raw;

	while (*p != '\0')
	{
		StringInfoData part;	/* the identifier, unquoted */

		initStringInfo(&part);
		if (*p == '"')
		{
			for (p++; *p != '\0' && !(p[0] == '"' && p[1] != '"'); p++)
			{
				if (p[0] == '"')
					p++;		/* doubled quote */
				appendStringInfoChar(&part, *p);
			}
			if (*p == '"')
				p++;
		}
		else
			for (; *p != '\0' && *p != '.' && !isspace((unsigned char) *p); p++)
				appendStringInfoChar(&part, *p);
		if (part.len >= NAMEDATALEN)
			ereport(ERROR,
					(errcode(ERRCODE_NAME_TOO_LONG),
					 errmsg("stream name \"%s\" is too long", part.data),
					 errdetail("Names can be at most %d bytes long.", NAMEDATALEN - 1)));
		while (*p != '\0' && (*p == '.' || isspace((unsigned char) *p)))
			p++;
	}
	return makeRangeVarFromNameList(textToQualifiedNameList(name));
}

/*
 * Refuse a create that would exceed flowpg.max_streams (counting streams
 * being rebuilt without a slot: they keep their entries).
 */
static void
check_stream_limit(void)
{
	if (ControlCountStreams(InvalidOid, 0) >= flowpg_max_streams)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("cannot create more than %d streams", flowpg_max_streams),
				 errdetail("The server runs at most flowpg.max_streams streams across all databases."),
				 errhint("Drop a stream, or raise flowpg.max_streams and restart the server.")));
}

/*
 * Refuse a create when no background worker slot would be left for the
 * new stream's worker: the background workers running now (the launcher
 * among them), plus the streams whose worker is not running (waiting to
 * restart), plus one.
 * Parallel query takes workers from the same pool, so this is a floor,
 * not a promise; a worker that cannot start is reported in
 * flowpg.streams.last_error.
 */
static void
check_worker_slots(void)
{
	int			running;
	int			waiting;

	if (ControlCountWorkerSlots(&running, &waiting) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("no background worker slot is free for a new stream"),
				 errdetail("%d background workers run, %d streams wait for theirs, and max_worker_processes is %d.",
						   running, waiting, max_worker_processes),
				 errhint("Raise max_worker_processes and restart the server.")));
}

/* A fresh stream id: an OID-counter value no stream of this database uses. */
static int32
new_stream_id(void)
{
	for (;;)
	{
		Oid			oid = GetNewObjectId();

		if (oid <= (Oid) PG_INT32_MAX && CatalogReadStream((int32) oid) == NULL)
			return (int32) oid;
	}
}

/* Create the result table and the unique index on its key columns. */
static Oid
create_result_table(FlowQuery *fq, RangeVar *rv, Oid nsp)
{
	TupleDesc	desc = fq->outdesc;
	char	   *table = quote_qualified_identifier(get_namespace_name(nsp), rv->relname);
	StringInfoData sql;
	int			i;

	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE TABLE %s (", table);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		appendStringInfo(&sql, "%s%s %s", i > 0 ? ", " : "",
						 quote_identifier(NameStr(att->attname)),
						 format_type_extended(att->atttypid, att->atttypmod,
											  FORMAT_TYPE_TYPEMOD_GIVEN |
											  FORMAT_TYPE_FORCE_QUALIFY));
		if (OidIsValid(att->attcollation) &&
			att->attcollation != get_typcollation(att->atttypid))
			appendStringInfo(&sql, " COLLATE %s",
							 generate_collation_name(att->attcollation));
	}
	/* room on each page, so that checkpoints update rows in place (HOT) */
	appendStringInfoString(&sql, ") WITH (fillfactor = 50)");

	SPI_connect();
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not create result table");
	/* a global aggregate's one row is unique too */
	resetStringInfo(&sql);
	appendStringInfo(&sql, "CREATE UNIQUE INDEX ON %s (", table);
	for (i = 0; i < list_length(fq->keys); i++)
		appendStringInfo(&sql, "%s%s", i > 0 ? ", " : "",
						 quote_identifier(NameStr(TupleDescAttr(desc, fq->key_outcol[i] - 1)->attname)));
	appendStringInfoString(&sql, list_length(fq->keys) > 0 ? ") NULLS NOT DISTINCT" : "(true))");
	if (SPI_execute(sql.data, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not create result table index");
	SPI_finish();
	CommandCounterIncrement();
	return get_relname_relid(rv->relname, nsp);
}

/*
 * Build the stream's operators as its worker will, and throw them away:
 * what the owner may not run there (an aggregate, a function a domain's
 * CHECK calls: checked as they are set up) is refused now, not by each
 * start of the worker, for good.
 */
static void
check_plan(FlowQuery *fq)
{
	MemoryContextDelete(PlanBuild(fq)->cxt);
}

/*
 * A query without GROUP BY has one result row even over no rows, like the
 * batch query: insert it now, computed from the aggregates' initial values.
 */
static void
insert_initial_row(FlowQuery *fq, Oid result)
{
	FlowPlan   *plan = PlanBuild(fq);
	Relation	rel = table_open(result, RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	TupleTableSlot *out;
	Oid			argtype = get_array_type(rel->rd_rel->reltype);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	Datum		row;
	Datum		array;
	char	   *sql;

	out = PlanFinalize(plan, PlanEmptyKey(plan), NULL, 0);
	PlanOutputToTable(out, desc, values, nulls);
	row = HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
	get_typlenbyvalalign(rel->rd_rel->reltype, &typlen, &typbyval, &typalign);
	array = PointerGetDatum(construct_array(&row, 1, rel->rd_rel->reltype,
											typlen, typbyval, typalign));
	sql = psprintf("INSERT INTO %s SELECT * FROM pg_catalog.unnest($1)",
				   quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											  RelationGetRelationName(rel)));
	table_close(rel, NoLock);

	SPI_connect();
	if (SPI_execute_with_args(sql, 1, &argtype, &array, NULL, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not insert the initial row");
	SPI_finish();
	MemoryContextDelete(plan->cxt);
}

/*
 * flowpg.create_stream(name text, query text, checkpoint_interval interval)
 *
 * Checks everything that can be checked first, then creates the slot
 * (which needs a transaction that has not written yet), the origin, the
 * result table and the catalog row.  All of it disappears if the
 * transaction does not commit (catalog.c).
 */
Datum
flowpg_create_stream(PG_FUNCTION_ARGS)
{
	char	   *query;
	int			interval;
	RangeVar   *rv;
	FlowQuery  *fq;
	StreamDef  *other;
	StreamDef  *def;
	Oid			nsp;
	Oid			existing;
	char		slot_name[NAMEDATALEN];

	FlowpgCheckChange(fcinfo);
	FlowpgCheckPrerequisites();
	(void) ApiTextArg(fcinfo, 0, "stream name");
	query = ApiTextArg(fcinfo, 1, "stream query");
	interval = interval_arg(fcinfo, 2, "checkpoint_interval", true, true);
	rv = result_rangevar(PG_GETARG_TEXT_PP(0));

	fq = CompileQueryText(query);
	CompileCheckPermissions(fq);
	check_plan(fq);
	other = CatalogFindByResult(fq->source);
	if (other != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" is the result table of stream \"%s\"",
						get_rel_name(fq->source), FlowpgLabel(other->name)),
				 errdetail("Result tables are updated in place, not appended to, so they cannot feed a stream.")));

	nsp = RangeVarGetAndCheckCreationNamespace(rv, NoLock, &existing);
	if (isAnyTempNamespace(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a stream's result table cannot be temporary")));
	if (OidIsValid(existing))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_TABLE),
				 errmsg("relation \"%s\" already exists", rv->relname),
				 errhint("A stream creates its result table; choose another name or drop the existing relation.")));
	CatalogCheckCanOwn(GetUserId());
	check_stream_limit();
	check_worker_slots();
	if (GetTopTransactionIdIfAny() != InvalidTransactionId)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("flowpg.create_stream must run before any other write in its transaction"),
				 errdetail("Creating a stream creates a logical replication slot, which PostgreSQL only allows in a transaction that has not written anything yet."),
				 errhint("Call flowpg.create_stream in its own transaction.")));

	def = palloc0(sizeof(StreamDef));
	def->id = new_stream_id();
	FlowpgLockStream(def->id, AccessExclusiveLock);
	FlowpgSlotName(slot_name, MyDatabaseId, def->id);
	DecodeCreateSlot(slot_name, NULL);
	CatalogPendingCreate();
	AdoptSweepOrigins();
	replorigin_create(slot_name);

	def->result = create_result_table(fq, rv, nsp);
	def->name = quote_qualified_identifier(get_namespace_name(nsp), rv->relname);
	def->source = fq->source;
	def->owner = GetUserId();
	def->query = query;
	def->definition = CompileDeparse(fq->query);
	def->plan = nodeToString(fq->query);
	def->checkpoint_interval = interval;
	def->settings = CompileCaptureSettings();
	CompileRecordDependencies(fq, def->result);
	CatalogInsertStream(def);
	if (list_length(fq->keys) == 0)
		insert_initial_row(fq, def->result);

	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------
 * drop_stream
 * ---------------------------------------------------------------------
 */

/*
 * flowpg.drop_stream(name text): drops the result table; catalog.c does
 * the rest when the transaction commits.
 */
Datum
flowpg_drop_stream(PG_FUNCTION_ARGS)
{
	StreamDef  *def;
	ObjectAddress table;

	FlowpgCheckLoaded();
	FlowpgCheckChange(fcinfo);

	/*
	 * The stream's lock comes after its table's, as it commits.  A drop of
	 * the stream that committed while this one waited for the table's lock
	 * took the table: look the name up again (it says the stream does not
	 * exist, or finds a stream created since).
	 */
	for (;;)
	{
		def = CatalogLookup(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0));
		CatalogCheckOwner(def);
		LockRelationOid(def->result, AccessExclusiveLock);
		if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(def->result)))
			break;
		UnlockRelationOid(def->result, AccessExclusiveLock);
	}
	ObjectAddressSet(table, RelationRelationId, def->result);
	performDeletion(&table, DROP_RESTRICT, 0);
	PG_RETURN_VOID();
}

void
ApiWakeWorker(StreamCtl *ctl)
{
	Latch	   *latch;

	SpinLockAcquire(&ctl->mutex);
	latch = ctl->latch;
	SpinLockRelease(&ctl->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/* ---------------------------------------------------------------------
 * pause_stream and resume_stream
 * ---------------------------------------------------------------------
 */

/*
 * The stream named by the first argument, locked until the end of the
 * transaction (which cannot be prepared, then), for the current user to
 * change.
 */
StreamDef *
ApiStreamToChange(FunctionCallInfo fcinfo)
{
	StreamDef  *def;

	FlowpgCheckLoaded();
	FlowpgCheckChange(fcinfo);
	def = CatalogLookup(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0));
	CatalogCheckOwner(def);
	FlowpgLockStream(def->id, AccessExclusiveLock);
	CatalogPendingLocked(def->id);
	return def;
}

/*
 * Write a changed catalog row and tell the worker to read it again; the
 * worker waits for this transaction's stream lock first, so it sees the
 * change once it commits.
 */
static void
update_stream(StreamDef *def)
{
	CatalogUpdateStream(def);
	ControlRequestReload(MyDatabaseId, def->id, InvalidOid);
}

/*
 * flowpg.pause_stream(name text): the worker takes a checkpoint and stops
 * applying the source; it keeps its state and its place in the WAL (which
 * the slot keeps for it).  Paused streams stay paused across restarts.
 */
Datum
flowpg_pause_stream(PG_FUNCTION_ARGS)
{
	StreamDef  *def = ApiStreamToChange(fcinfo);

	def->paused = true;
	update_stream(def);
	PG_RETURN_VOID();
}

/*
 * flowpg.resume_stream(name text): catch up from where it paused.  A
 * stream that failed for good, or lost its slot, has nothing to resume
 * from: say so, as flowpg.wait would.
 */
Datum
flowpg_resume_stream(PG_FUNCTION_ARGS)
{
	StreamDef  *def = ApiStreamToChange(fcinfo);

	ApiCheckNotFailed(def);
	def->paused = false;
	update_stream(def);
	PG_RETURN_VOID();
}

/*
 * flowpg.set_checkpoint_interval(name text, interval): takes effect at
 * commit, without restarting the stream.  NULL means the GUC.
 */
Datum
flowpg_set_checkpoint_interval(PG_FUNCTION_ARGS)
{
	StreamDef  *def = ApiStreamToChange(fcinfo);

	def->checkpoint_interval = interval_arg(fcinfo, 1, "checkpoint_interval", true, true);
	update_stream(def);
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------
 * wait and checkpoint
 * ---------------------------------------------------------------------
 */

/*
 * Raise an error if the stream failed for good (flowpg.max_retained_wal):
 * it has no slot and no worker any more.
 */
void
ApiCheckNotFailed(StreamDef *def)
{
	char		slot_name[NAMEDATALEN];

	if (def->failure != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" has failed for good", FlowpgLabel(def->name)),
				 errdetail("%s", def->failure),
				 errhint("Its result table keeps the results it had, marked stale in flowpg.streams. Rebuild the stream from its source table with flowpg.rebuild_stream, or drop it and create it again.")));
	if (def->restored)
		return;					/* its slot comes with its rebuild */
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" does not run on a standby", FlowpgLabel(def->name)),
				 errdetail("Streams run on the primary: PostgreSQL 15 keeps no logical replication slot on a standby."),
				 errhint("Query the stream on the primary.  If this standby is promoted, its streams are rebuilt from their source tables.")));

	/*
	 * Its slot went without flowpg (dropped by hand, invalidated by
	 * max_slot_wal_keep_size, not carried by pg_upgrade), or the launcher
	 * dropped it while the stream could not run (drop_unrunnable): the WAL it had not
	 * applied may be gone.  Look again once a drop or flowpg.restore that
	 * replaces the slot, under the stream's lock, is over.
	 */
	FlowpgSlotName(slot_name, MyDatabaseId, def->id);
	if (ControlSlotUsable(slot_name))
		return;
	if (def->slot_origin == NULL || strcmp(def->slot_origin, FlowpgSlotOrigin()) != 0)
	{
		/*
		 * A copy (pg_upgrade, failover, CREATE DATABASE ... TEMPLATE): the
		 * launcher's scan rebuilds it (CatalogRebuildCopies).  Ask for one,
		 * in case none is on its way.
		 */
		ControlRequestRescan();
		return;
	}
	FlowpgLockStream(def->id, AccessShareLock);
	/* a drop of the stream, committed meanwhile, dropped the slot */
	if (CatalogReadStream(def->id) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("stream \"%s\" does not exist", FlowpgLabel(def->name)),
				 errdetail("It was dropped while this call looked it up.")));
	if (ControlSlotUsable(slot_name))
	{
		/* the caller may wait for the worker: see FlowpgUnlockStream */
		FlowpgUnlockStream(def->id, AccessShareLock);
		return;
	}
	ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" has lost its replication slot", FlowpgLabel(def->name)),
				 errdetail("Replication slot \"%s\" was dropped or invalidated (max_slot_wal_keep_size) outside flowpg, or dropped by flowpg past flowpg.max_retained_wal while the stream could not run (the server log says which), so the WAL the stream had not applied may be gone.",
						   slot_name),
				 errhint("Its result table keeps the results it had, marked stale in flowpg.streams. Rebuild the stream from its source table with flowpg.rebuild_stream, rewind it to one of its savepoints with flowpg.restore, or drop it and create it again.")));
}

/*
 * A failing worker says so (ControlFail) before it exits: wait for it to
 * be gone (milliseconds, unless the machine is very slow), so that the
 * caller starts a new one at once rather than raising the error of one it
 * did not start.
 */
static void
await_failed_exit(StreamCtl *ctl, TimestampTz deadline)
{
	for (;;)
	{
		bool		exiting;

		SpinLockAcquire(&ctl->mutex);
		exiting = ctl->status == STREAM_FAILED && ctl->pid != 0;
		SpinLockRelease(&ctl->mutex);
		if (!exiting || GetCurrentTimestamp() >= deadline)
			return;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* The stream's StreamCtl, waiting until the launcher has made one. */
StreamCtl *
ApiAwaitControl(StreamDef *def, TimestampTz deadline)
{
	TimestampTz full_since = 0;

	ApiCheckNotFailed(def);
	if (def->restored)
	{
		/* restored from a dump: rebuild it, unless that is under way */
		StreamCtl  *ctl = ControlFind(MyDatabaseId, def->id);
		pid_t		pid = 0;

		if (ctl != NULL)
		{
			SpinLockAcquire(&ctl->mutex);
			pid = ctl->pid;
			SpinLockRelease(&ctl->mutex);
		}
		if (pid == 0)
		{
			StreamIdentity ident = {MyDatabaseId, def->id, def->owner};

			AdoptRequest(&ident);
		}
	}
	for (;;)
	{
		StreamCtl  *ctl = ControlFind(MyDatabaseId, def->id);
		TimestampTz now = GetCurrentTimestamp();

		if (ctl != NULL)
		{
			/* a restored stream's rebuild was asked for above */
			if (!def->restored)
			{
				await_failed_exit(ctl, deadline);
				ControlRetryNow(ctl);
			}
			return ctl;
		}

		/*
		 * No entry free for a while (the launcher frees a dropped stream's
		 * within a second): this stream is one too many.
		 */
		if (ControlFreeEntries() > 0)
			full_since = 0;
		else if (full_since == 0)
			full_since = now;
		else if (TimestampDifferenceExceeds(full_since, now, 2 * 1000))
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("stream \"%s\" cannot run: all %d flowpg.max_streams entries are taken by other streams",
							FlowpgLabel(def->name), flowpg_max_streams),
					 errdetail("The server has more streams than flowpg.max_streams allows (it was lowered after they were created, or a restore brought more); the streams without an entry do not run, and their slots keep their WAL."),
					 errhint("Raise flowpg.max_streams and restart the server, or drop streams.")));
		if (now >= deadline)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("timed out waiting for the worker of stream \"%s\" to start",
							FlowpgLabel(def->name)),
					 errhint("Check that the server has free background worker slots (max_worker_processes).")));
		CatalogReleaseLocks();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * May the current user read a stream's errors?  An error may quote a row
 * of the source, which the user may not be allowed to read: only the
 * owner's members and pg_read_all_stats do, as pg_stat_activity shows a
 * session's query.  (owner is invalid when not known yet.)
 */
static bool
may_read_errors(Oid owner)
{
	Oid			user = GetUserId();

	return has_privs_of_role(user, ROLE_PG_READ_ALL_STATS) ||
		(OidIsValid(owner) && has_privs_of_role(user, owner));
}

void
ApiRaiseIfFailed(StreamDef *def, StreamCtl *ctl)
{
	char		error[FLOWPG_ERROR_LEN];
	bool		failed;

	SpinLockAcquire(&ctl->mutex);
	failed = ctl->status == STREAM_FAILED;
	strlcpy(error, ctl->last_error, sizeof(error));
	SpinLockRelease(&ctl->mutex);
	if (failed && !may_read_errors(def->owner))
		strlcpy(error, "an error only members of the stream's owner role may read (flowpg.streams.last_error)",
				sizeof(error));
	if (failed && def->restored)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" could not be rebuilt from its source table", FlowpgLabel(def->name)),
				 errdetail("Rebuilding it from its source table failed with: %s", error),
				 errhint("flowpg tries again after a delay, and at once when flowpg.wait is called; fix the cause and check flowpg.streams.")));
	if (failed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" has failed", FlowpgLabel(def->name)),
				 errdetail("The worker stopped with: %s", error),
				 errhint("flowpg restarts the worker after a delay; fix the cause and check flowpg.streams.")));
}

/*
 * ApiRaiseIfFailed for a caller that waits for results up to target
 * (flowpg.wait, flowpg.checkpoint), which lets one failure pass: a
 * checkpoint that failed computing a row short of target, before any
 * careful worker looked for the source transaction after which the row
 * cannot be computed (see WorkerMergeBatch in worker.c).  The next worker,
 * started at once, checkpoints what came before that transaction and goes
 * on; the transactions after it, up to target, may make every row
 * computable again, as they would make the batch query succeed.  A
 * checkpoint that failed at or past target shows the rows cannot be
 * computed where the caller needs them (a careful worker would only find
 * why, perhaps transaction by transaction for long); a failure after the
 * one let pass (the checkpoint waited for fails too, or anything else) is
 * raised.  *passed: the failure let pass (fail_count), 0 for none yet.
 */
static void
raise_if_failed_for_good(StreamDef *def, StreamCtl *ctl, XLogRecPtr target,
						 uint64 *passed)
{
	bool		failed;
	bool		short_of_target;
	uint64		count;

	SpinLockAcquire(&ctl->mutex);
	failed = ctl->status == STREAM_FAILED;
	count = ctl->fail_count;
	short_of_target = !XLogRecPtrIsInvalid(ctl->careful_until) &&
		ctl->careful_until < target &&
		XLogRecPtrIsInvalid(ctl->rows_failed_at);
	SpinLockRelease(&ctl->mutex);
	if (failed && count != 0 &&
		(count == *passed || (*passed == 0 && short_of_target)))
	{
		*passed = count;
		ControlRetryNow(ctl);
		return;
	}
	ApiRaiseIfFailed(def, ctl);
}

/*
 * The caller waits no more (flowpg.wait, flowpg.checkpoint: returned or
 * raised), which the worker needs to know (see maybe_checkpoint in
 * worker.c); another caller still waiting says so again within 100 ms.  A
 * caller that exited (FATAL) was seen last WAITER_GONE_MS ago.  Not if the
 * entry is another stream's now (the stream was dropped meanwhile).
 */
static void
waiter_gone(StreamDef *def, StreamCtl *ctl)
{
	LWLockAcquire(&FlowCtl->lock, LW_SHARED);
	if (ctl->in_use && ctl->dboid == MyDatabaseId && ctl->stream_id == def->id)
	{
		SpinLockAcquire(&ctl->mutex);
		ctl->waiter_seen_at = 0;
		SpinLockRelease(&ctl->mutex);
	}
	LWLockRelease(&FlowCtl->lock);
}

/*
 * Wait for a stream's worker, as a flowpg.wait call (request 0: until the
 * results hold everything up to target) or a flowpg.checkpoint call
 * (until its request is served; *id: the checkpoint's), saying so to the
 * worker meanwhile (waiter_seen_at, wait_lsn).
 */
static void
await_worker(StreamDef *def, StreamCtl *ctl, TimestampTz deadline,
			 XLogRecPtr target, uint64 request, int64 *id)
{
	uint64		passed = 0;

	PG_TRY();
	{
		for (;;)
		{
			bool		done;
			TimestampTz now = GetCurrentTimestamp();

			SpinLockAcquire(&ctl->mutex);
			if (request == 0)
			{
				done = ctl->result_lsn >= target;
				if (ctl->wait_lsn < target)
					ctl->wait_lsn = target;
			}
			else
			{
				done = ctl->ckpt_done >= request;
				*id = ctl->checkpoint_id;
			}
			ctl->waiter_seen_at = now;
			SpinLockRelease(&ctl->mutex);
			if (done)
				break;
			raise_if_failed_for_good(def, ctl, target, &passed);
			ApiWakeWorker(ctl);
			if (request == 0)
				ApiSleepUntil(def, ctl, deadline, "the results", target);
			else
				ApiSleepUntil(def, ctl, deadline, "a checkpoint", InvalidXLogRecPtr);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_FINALLY();
	{
		waiter_gone(def, ctl);
	}
	PG_END_TRY();
	ConditionVariableCancelSleep();
}

/* Sleep on the stream's condition variable until the deadline at most. */
void
ApiSleepUntil(StreamDef *def, StreamCtl *ctl, TimestampTz deadline,
			const char *what, XLogRecPtr target)
{
	long		secs;
	int			usecs;
	long		ms;
	bool		gone;

	/* dropped while the caller waited: its entry is freed at the commit */
	LWLockAcquire(&FlowCtl->lock, LW_SHARED);
	gone = !ctl->in_use || ctl->dboid != MyDatabaseId || ctl->stream_id != def->id;
	LWLockRelease(&FlowCtl->lock);
	if (gone)
	{
		ConditionVariableCancelSleep();
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("stream \"%s\" was dropped while this call waited for %s",
						FlowpgLabel(def->name), what)));
	}
	TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
	ms = secs * 1000 + usecs / 1000;
	if (ms <= 0)
	{
		XLogRecPtr	result;

		SpinLockAcquire(&ctl->mutex);
		result = ctl->result_lsn;
		SpinLockRelease(&ctl->mutex);
		/* reached since the caller looked: it returns */
		if (!XLogRecPtrIsInvalid(target) && result >= target)
			return;
		ConditionVariableCancelSleep();
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("timed out waiting for %s of stream \"%s\"", what, FlowpgLabel(def->name)),
				 XLogRecPtrIsInvalid(target) ?
				 errdetail("The stream's worker has not taken it yet.") :
				 XLogRecPtrIsInvalid(result) ?
				 errdetail("The stream's worker has not started from its last checkpoint yet (a rebuild, or a wait for a lock: see pg_stat_activity); the wait needs WAL position %X/%X.",
						   LSN_FORMAT_ARGS(target)) :
				 errdetail("The result table is exact up to WAL position %X/%X; the wait needs %X/%X.",
						   LSN_FORMAT_ARGS(result), LSN_FORMAT_ARGS(target)),
				 errhint("Check the stream's status in flowpg.streams, or wait longer.")));
	}
	CatalogReleaseLocks();
	ConditionVariableTimedSleep(&ctl->cv, Min(ms, 100), PG_WAIT_EXTENSION);
}

/*
 * The WAL position up to which every transaction committed so far is
 * flushed.  A commit is in the WAL before any session sees it, so the
 * position up to which the WAL is inserted covers them all, asynchronous
 * commits (synchronous_commit = off, a subscription's apply worker) whose
 * WAL the WAL writer has not flushed yet included: flush up to it.  The
 * insert position, where the next record would go, is past a page header
 * when the last record ended at a page boundary; the end of that record
 * is the boundary, which is what a worker's reader reaches.
 */
XLogRecPtr
ApiCommittedLsn(void)
{
	XLogRecPtr	target = GetXLogInsertRecPtr();

	if (XLogSegmentOffset(target, wal_segment_size) == SizeOfXLogLongPHD)
		target -= SizeOfXLogLongPHD;
	else if (target % XLOG_BLCKSZ == SizeOfXLogShortPHD)
		target -= SizeOfXLogShortPHD;
	if (target > GetFlushRecPtr(NULL))
		XLogFlush(target);
	return target;
}

/*
 * Ask the worker to take its next checkpoint or savepoint only once it has
 * applied everything committed so far.
 */
XLogRecPtr
ApiRequestTarget(StreamCtl *ctl)
{
	XLogRecPtr	target = ApiCommittedLsn();

	SpinLockAcquire(&ctl->mutex);
	if (ctl->ckpt_target < target)
		ctl->ckpt_target = target;
	SpinLockRelease(&ctl->mutex);
	return target;
}

/*
 * The stream's worker waits for a transaction that created or changed the
 * stream: refuse to wait for the worker in it (it timed out, blaming the
 * background worker slots).
 */
static void
check_not_changed_here(StreamDef *def, const char *what)
{
	if (CatalogChangedHere(def->id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s stream \"%s\" in the transaction that created or changed it",
						what, FlowpgLabel(def->name)),
				 errdetail("The stream's worker waits for this transaction to end."),
				 errhint("Commit this transaction first.")));
}

/*
 * flowpg.wait(name text, timeout interval): return once every transaction
 * committed before the call is reflected in the result table.
 */
Datum
flowpg_wait(PG_FUNCTION_ARGS)
{
	StreamDef  *def;
	StreamCtl  *ctl;
	XLogRecPtr	target;
	TimestampTz deadline;
	int			timeout;
	AclResult	aclresult;

	FlowpgCheckLoaded();
	CatalogNoteLocks();
	def = CatalogLookup(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0));
	/* it waits to read the result table, and may force a checkpoint */
	aclresult = pg_class_aclcheck(def->result, GetUserId(), ACL_SELECT);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_TABLE, get_rel_name(def->result));
	timeout = interval_arg(fcinfo, 1, "timeout", false, false);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout);
	ApiCheckNotFailed(def);
	check_not_changed_here(def, "wait for");
	if (def->paused)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" is paused", FlowpgLabel(def->name)),
				 errhint("Resume it with flowpg.resume_stream.")));

	target = ApiCommittedLsn();

	ctl = ApiAwaitControl(def, deadline);
	await_worker(def, ctl, deadline, target, 0, NULL);
	/* what it waited for is durable, even from a checkpoint not flushed yet */
	(void) ApiCommittedLsn();
	PG_RETURN_VOID();
}

/* flowpg.checkpoint(name text): take a checkpoint now, return its id. */
Datum
flowpg_checkpoint(PG_FUNCTION_ARGS)
{
	StreamDef  *def;
	StreamCtl  *ctl;
	TimestampTz deadline;
	uint64		request;
	int64		id;
	XLogRecPtr	target;

	FlowpgCheckLoaded();
	CatalogNoteLocks();
	def = CatalogLookup(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0));
	CatalogCheckOwner(def);
	check_not_changed_here(def, "take a checkpoint of");
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 60 * 1000);
	ctl = ApiAwaitControl(def, deadline);
	target = ApiRequestTarget(ctl);

	SpinLockAcquire(&ctl->mutex);
	request = ++ctl->ckpt_requested;
	SpinLockRelease(&ctl->mutex);
	await_worker(def, ctl, deadline, target, request, &id);
	PG_RETURN_INT64(id);
}

/* ---------------------------------------------------------------------
 * live
 * ---------------------------------------------------------------------
 */

typedef struct LiveKey
{
	MinimalTuple key;
	char	   *image;
	Size		len;
} LiveKey;

static void
copy_key(void *arg, StateChunk *chunk)
{
	List	  **keys = (List **) arg;
	LiveKey    *copy = palloc(sizeof(LiveKey));
	MinimalTuple key = StateChunkKey(chunk);

	copy->key = palloc(key->t_len);
	memcpy(copy->key, key, key->t_len);
	copy->image = palloc(chunk->state_len);
	memcpy(copy->image, StateChunkState(chunk), chunk->state_len);
	copy->len = chunk->state_len;
	*keys = lappend(*keys, copy);
}

/* Copy every key of the stream's state, as of a transaction boundary. */
static List *
copy_state(StreamDef *def, StreamCtl *ctl)
{
	List	   *keys = NIL;
	FlowState  *st;
	bool		ready;

	LWLockAcquire(&ctl->state_lock, LW_SHARED);
	SpinLockAcquire(&ctl->mutex);
	ready = ctl->state_ready;
	SpinLockRelease(&ctl->mutex);
	st = ready ? StateAttach(ctl) : NULL;
	if (st == NULL)
	{
		LWLockRelease(&ctl->state_lock);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" has no live state right now", FlowpgLabel(def->name)),
				 errdetail("Its worker is starting or has failed; see flowpg.streams."),
				 errhint("Read the result table, or try again once the stream is running.")));
	}
	StateScan(st, copy_key, &keys);
	StateDetach(st);
	LWLockRelease(&ctl->state_lock);
	return keys;
}

/*
 * flowpg.live(NULL::result_table) RETURNS SETOF result_table: the stream's
 * current results, computed from shared memory.  Needs SELECT on the
 * result table.
 */
Datum
flowpg_live(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			argtype = get_fn_expr_argtype(fcinfo->flinfo, 0);
	Oid			relid = OidIsValid(argtype) ? get_typ_typrelid(argtype) : InvalidOid;
	StreamDef  *def;
	StreamCtl  *ctl;
	FlowQuery  *fq;
	FlowPlan   *plan;
	List	   *keys;
	ListCell   *lc;
	Datum	   *values;
	bool	   *nulls;
	AclResult	aclresult;
	int			nest;
	Oid			save_user;
	int			save_sec;

	FlowpgCheckLoaded();
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("flowpg.live expects the row type of a stream's result table"),
				 errhint("Call it as flowpg.live(NULL::stream_name).")));
	/* after a concurrent DROP TABLE of it, say so (not "could not open relation") */
	LockRelationOid(relid, AccessShareLock);
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("the result table of flowpg.live's argument was dropped")));
	def = CatalogFindByResult(relid);
	if (def == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not the result table of a stream", get_rel_name(relid))));
	aclresult = pg_class_aclcheck(relid, GetUserId(), ACL_SELECT);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_TABLE, get_rel_name(relid));
	/* the rows come from shared memory, where no policy can filter them */
	if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("flowpg.live cannot apply the row-level security of table \"%s\"",
						get_rel_name(relid)),
				 errdetail("Row security policies of the table apply to the current user."),
				 errhint("Read the result table itself.")));

	ApiCheckNotFailed(def);
	ctl = ControlFind(MyDatabaseId, def->id);
	keys = ctl != NULL ? copy_state(def, ctl) : NIL;
	if (ctl == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" has no live state right now", FlowpgLabel(def->name)),
				 errdetail("Its worker has not started yet."),
				 errhint("Read the result table, or try again once the stream is running.")));

	/*
	 * Final functions and output expressions, as the worker evaluates them:
	 * as the stream's owner, with the stream's settings, in a
	 * security-restricted operation (as REFRESH MATERIALIZED VIEW runs a
	 * view's query), so that a caller with more privileges never runs the
	 * owner's functions with them.
	 */
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(def->owner, save_sec | SECURITY_RESTRICTED_OPERATION);
	nest = NewGUCNestLevel();
	CompileApplySettings(def->settings, GUC_ACTION_SAVE);
	fq = CompileQueryTree(stringToNode(def->plan));
	/* the owner may have lost SELECT on the source since the worker checked */
	CompileCheckPermissions(fq);
	plan = PlanBuild(fq);
	plan->name = MemoryContextStrdup(plan->cxt, def->name);

	InitMaterializedSRF(fcinfo, 0);
	values = palloc(sizeof(Datum) * rsinfo->setDesc->natts);
	nulls = palloc(sizeof(bool) * rsinfo->setDesc->natts);
	if (keys == NIL && plan->nkeys == 0)
	{
		PlanOutputToTable(PlanFinalize(plan, PlanEmptyKey(plan), NULL, 0),
						  rsinfo->setDesc, values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	foreach(lc, keys)
	{
		LiveKey    *k = lfirst(lc);

		PlanOutputToTable(PlanFinalize(plan, k->key, k->image, k->len),
						  rsinfo->setDesc, values, nulls);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	MemoryContextDelete(plan->cxt);
	/* false: a SET by the owner's code does not outlive the call */
	AtEOXact_GUC(false, nest);
	SetUserIdAndSecContext(save_user, save_sec);
	return (Datum) 0;
}

/* ---------------------------------------------------------------------
 * stream_status
 * ---------------------------------------------------------------------
 */

#define STATUS_COLUMNS 23

/* flowpg.stream_status(): this database's StreamCtl entries. */
Datum
flowpg_stream_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	XLogRecPtr	flush = RecoveryInProgress() ? GetXLogReplayRecPtr(NULL) :
		GetFlushRecPtr(NULL);
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	FlowpgCheckLoaded();
	InitMaterializedSRF(fcinfo, 0);
	/* the columns are stored by position: they must be the ones declared */
	if (rsinfo->setDesc->natts != STATUS_COLUMNS)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("flowpg.stream_status() declares %d columns, and the flowpg library returns %d",
						rsinfo->setDesc->natts, STATUS_COLUMNS),
				 errdetail("The extension's SQL objects were created by another version of flowpg."),
				 errhint("Drop the extension and create it again.")));
	for (i = 0; i < FlowCtl->max_streams; i++)
	{
		StreamCtl  *ctl = &FlowCtl->streams[i];
		StreamCtl	copy;
		Datum		values[STATUS_COLUMNS];
		bool		nulls[STATUS_COLUMNS];
		bool		mine;
		int64		lag = 0;

		LWLockAcquire(&FlowCtl->lock, LW_SHARED);
		mine = ctl->in_use && ctl->dboid == MyDatabaseId;
		LWLockRelease(&FlowCtl->lock);
		if (!mine)
			continue;
		SpinLockAcquire(&ctl->mutex);
		memcpy(&copy, ctl, sizeof(StreamCtl));
		SpinLockRelease(&ctl->mutex);
		if (!XLogRecPtrIsInvalid(copy.processed_lsn) && flush > copy.processed_lsn)
			lag = (int64) (flush - copy.processed_lsn);

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(copy.stream_id);
		values[1] = Int32GetDatum(copy.pid);
		nulls[1] = copy.pid == 0;
		values[2] = CStringGetTextDatum(ControlStatusName(copy.status));
		values[3] = LSNGetDatum(copy.processed_lsn);
		nulls[3] = XLogRecPtrIsInvalid(copy.processed_lsn);
		values[4] = LSNGetDatum(copy.checkpoint_lsn);
		nulls[4] = XLogRecPtrIsInvalid(copy.checkpoint_lsn);
		values[5] = TimestampTzGetDatum(copy.last_checkpoint_at);
		nulls[5] = copy.last_checkpoint_at == 0;
		values[6] = Int64GetDatum(copy.checkpoint_id);
		nulls[6] = copy.checkpoint_id == 0;
		values[7] = Float8GetDatum(copy.checkpoint_ms);
		nulls[7] = copy.last_checkpoint_at == 0;
		values[8] = Int64GetDatum((int64) copy.checkpoints);
		values[9] = Float8GetDatum(copy.checkpoint_total_ms);
		values[10] = Int64GetDatum((int64) copy.events);
		values[11] = Float8GetDatum(copy.events_per_second);
		values[12] = Int64GetDatum(lag);
		nulls[12] = XLogRecPtrIsInvalid(copy.processed_lsn);
		/* seconds since the worker last had applied everything */
		values[13] = Float8GetDatum(lag == 0 || copy.caught_up_at == 0 ? 0.0 :
									(double) (now - copy.caught_up_at) / 1000000.0);
		nulls[13] = XLogRecPtrIsInvalid(copy.processed_lsn);
		values[14] = Int64GetDatum((int64) copy.keys);
		values[15] = Int64GetDatum((int64) copy.state_bytes);
		values[16] = Int32GetDatum(Max(copy.restarts, 0));
		values[17] = CStringGetTextDatum(may_read_errors(copy.owner) ?
										 copy.last_error : "<insufficient privilege>");
		nulls[17] = copy.last_error[0] == '\0';
		values[18] = TimestampTzGetDatum(copy.last_error_at);
		nulls[18] = copy.last_error_at == 0;
		values[19] = Int64GetDatum((int64) copy.ignored_updates);
		values[20] = Int64GetDatum((int64) copy.ignored_deletes);
		values[21] = Int64GetDatum((int64) copy.ignored_truncates);
		values[22] = Int32GetDatum(copy.writer_pid);
		nulls[22] = copy.writer_pid == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* flowpg.free_stream_entries(): see ControlFreeEntries. */
Datum
flowpg_free_stream_entries(PG_FUNCTION_ARGS)
{
	FlowpgCheckLoaded();
	PG_RETURN_INT32(ControlFreeEntries());
}

/*
 * flowpg.slot_origin(): where the slots this database makes now are (see
 * FlowpgSlotOrigin); NULL on a standby, which makes none.
 */
Datum
flowpg_slot_origin(PG_FUNCTION_ARGS)
{
	if (RecoveryInProgress())
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(FlowpgSlotOrigin()));
}

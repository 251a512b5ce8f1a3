/*-------------------------------------------------------------------------
 *
 * adopt.c
 *	  Streams rebuilt from their source tables: those that come back from
 *	  pg_dump (the flowpg.stream trigger notices them), those of a copy of
 *	  the cluster or database (pg_upgrade, a promoted standby, CREATE
 *	  DATABASE ... TEMPLATE: CatalogRebuildCopies), those rebuilt by
 *	  flowpg.rebuild_stream; and the process that rebuilds each one.
 *
 * pg_dump dumps flowpg.stream (a configuration table of the extension),
 * the source tables and the result tables.  What cannot travel in a dump
 * is a stream's replication slot, its position in the old server's WAL
 * and the object ids in its stored plan.  So a restored stream is rebuilt
 * the way a logical replication subscriber starts on a table with rows:
 *
 *	1. A flowpg.stream row that flowpg itself did not insert (pg_restore's
 *	   COPY, or an INSERT by hand) is marked `restored` by the trigger,
 *	   and when its transaction commits the launcher is asked
 *	   (AdoptRequest) to start a "flowpg adopt" background worker for it,
 *	   connected as the stream's owner (see ControlConnect).
 *	2. The adopter waits until the result table has its unique index:
 *	   pg_restore creates indexes after it has loaded the tables' data, so
 *	   from then on nothing else writes the result table.
 *	3. In one REPEATABLE READ transaction it creates the stream's slot and
 *	   takes the slot's initial snapshot (which sees exactly the
 *	   transactions committed before the slot's start), compiles the
 *	   stream's schema-qualified definition, scans the source table in
 *	   that snapshot through the stream's operators, and writes a
 *	   "rewrite" checkpoint at the slot's start: the whole result table,
 *	   the whole state.  The slot becomes persistent as it commits.
 *	4. The launcher then finds the slot and starts the stream's worker,
 *	   which decodes what was committed after the snapshot.
 *
 * So each source row is counted once, whether pg_restore loaded it
 * before or after the adopter's snapshot, and a restored stream's results
 * are its query over every row of its source table.  Its dumped
 * checkpoints and savepoints do not come back (they belong to the old
 * server's WAL).
 *
 * The other two ways in mark the stream `restored` themselves, in a
 * transaction that asks for the adopter when it commits
 * (CatalogRebuildStream), and drop its savepoints.  The stream may still
 * have its old slot then (flowpg.rebuild_stream on a running stream): the
 * launcher starts the adopter, not a worker, for a stream it is asked to
 * adopt, and the adopter drops the old slot in the transaction that makes
 * the new one; a worker that starts on a stream marked restored (after a
 * crash, before the launcher was asked again) asks for the adopter and
 * exits.  A copy is told from a slot dropped by hand by the stream's
 * slot_origin: the system identifier, timeline and database its slot was
 * made in.
 *
 * An adopter that fails (the owner may not read the source yet: pg_restore
 * grants privileges after it creates indexes; something the definition
 * names is missing) records its error in the stream's StreamCtl, where
 * flowpg.streams and flowpg.wait show it, and exits.  The launcher keeps
 * the entry of a stream being rebuilt (adopting is set) and starts the
 * next adopter after the same back-off as a worker's; flowpg.wait starts
 * one at once.  Dropping the stream, its database or flowpg ends that.
 *
 * Crash story: the StreamCtl entry is in shared memory, so after a server
 * restart the stream still marked restored is found again by its
 * database's scan (AdoptScanMain), and flowpg.wait on it asks for its
 * rebuild too (ApiAwaitControl).  A half-done rebuild leaves nothing: its
 * slot is ephemeral until its transaction commits.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tupconvert.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_index.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_replication_origin.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "replication/origin.h"
#include "replication/slot.h"
#include "replication/worker_internal.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "adopt.h"
#include "api.h"
#include "catalog.h"
#include "checkpoint.h"
#include "compile.h"
#include "decode.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(flowpg_stream_restored);
PG_FUNCTION_INFO_V1(flowpg_not_replicated);
PG_FUNCTION_INFO_V1(flowpg_rebuild_stream);

/* Source rows scanned between two merges into the shared state. */
#define ADOPT_MERGE_ROWS	100000

/*
 * flowpg.not_replicated(): BEFORE INSERT, UPDATE or DELETE row trigger of
 * flowpg's own tables, enabled ALWAYS, so that it fires in the logical
 * replication workers too (session_replication_role replica).  A
 * publication FOR ALL TABLES publishes these tables with the others;
 * applied on a subscriber that has flowpg, the publisher's streams became
 * the subscriber's (adopted at its next start as a copy of the cluster),
 * whose checkpoints then collided with the rows replicated after them, and
 * the whole subscription stopped.  A subscriber's streams are its own:
 * its replication workers skip the changes of these tables.  (A result
 * table replicates as any table.)
 */
Datum
flowpg_not_replicated(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("flowpg.not_replicated must be called as a BEFORE row trigger")));
	if (MyLogicalRepWorker != NULL)
		return PointerGetDatum(NULL);
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		return PointerGetDatum(trigdata->tg_newtuple);
	return PointerGetDatum(trigdata->tg_trigtuple);
}

/*
 * flowpg.stream_restored(): BEFORE INSERT trigger on flowpg.stream.  A row
 * flowpg did not insert itself comes from a dump: mark it restored (its
 * plan names objects of another database), give it the owner of its
 * result table (a stream belongs to that role; the dumped oid means
 * nothing here), and rebuild the stream when the transaction commits.
 * A stream that had failed for good where it was dumped (its slots were
 * gone there) is rebuilt too: its failure goes, as a rebuild clears it,
 * as the failure of a stream whose slot went without flowpg never came
 * with its row.
 */
Datum
flowpg_stream_restored(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	tuple;
	int			cols[5];
	Datum		values[5];
	bool		nulls[5] = {false, false, false, true, true};
	bool		isnull;
	int32		id;
	Oid			result;
	Oid			owner;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("flowpg.stream_restored must be called as a BEFORE INSERT row trigger")));
	/* not on a table of the caller's with the same columns */
	if (RelationGetRelid(trigdata->tg_relation) != CatalogStreamRelid())
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("flowpg.stream_restored is a trigger of flowpg.stream only")));
	tuple = trigdata->tg_trigtuple;
	if (CatalogInserting())
		return PointerGetDatum(tuple);

	desc = RelationGetDescr(trigdata->tg_relation);
	cols[0] = SPI_fnumber(desc, "plan");
	cols[1] = SPI_fnumber(desc, "restored");
	cols[2] = SPI_fnumber(desc, "owner");
	cols[3] = SPI_fnumber(desc, "failure");
	cols[4] = SPI_fnumber(desc, "failed_at");
	if (cols[0] <= 0 || cols[1] <= 0 || cols[2] <= 0 || cols[3] <= 0 || cols[4] <= 0)
		elog(ERROR, "flowpg.stream lacks its plan, restored, owner, failure or failed_at column");
	id = DatumGetInt32(heap_getattr(tuple, SPI_fnumber(desc, "id"), desc, &isnull));
	result = DatumGetObjectId(heap_getattr(tuple, SPI_fnumber(desc, "result"), desc, &isnull));
	owner = isnull ? InvalidOid : CatalogTableOwner(result);
	if (!OidIsValid(owner))
		elog(ERROR, "result table %u of stream %d does not exist", result, id);
	values[0] = CStringGetTextDatum("");
	values[1] = BoolGetDatum(true);
	values[2] = ObjectIdGetDatum(owner);
	values[3] = (Datum) 0;
	values[4] = (Datum) 0;
	if (flowpg_preloaded)
		CatalogPendingAdopt(id);
	return PointerGetDatum(heap_modify_tuple_by_cols(tuple, desc, 5, cols, values, nulls));
}

/*
 * Refuse to rebuild a stream that has no slot (a stale one) when as many
 * other streams as flowpg.max_streams take an entry (ControlCountStreams):
 * it could not run, as a new stream could not (create_stream refuses the
 * same way).
 */
static void
check_rebuild_room(StreamDef *def)
{
	int			others;

	if (ControlFindIdentity(ControlListSlots(InvalidOid), MyDatabaseId, def->id) != NULL)
		return;
	others = ControlCountStreams(MyDatabaseId, def->id);
	if (others >= flowpg_max_streams)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("cannot rebuild stream \"%s\": %d streams run already, as many as flowpg.max_streams allows",
						FlowpgLabel(def->name), others),
				 errhint("Drop a stream, or raise flowpg.max_streams and restart the server.")));
}

/*
 * flowpg.rebuild_stream(name text): rebuild the stream from its source
 * table, as a restored one, once this transaction commits.  Its results
 * become its query over every row of the table (rows from before the
 * stream was created too), exact from then on.  For a stream whose slot
 * went (stale), one that failed on a row since deleted, or a result table
 * damaged by hand.  Owner only.  Its worker stops until the transaction
 * ends; its savepoints are dropped.
 */
Datum
flowpg_rebuild_stream(PG_FUNCTION_ARGS)
{
	StreamDef  *def;

	FlowpgCheckPrerequisites();
	def = ApiStreamToChange(fcinfo);
	check_rebuild_room(def);
	/* a stream being rebuilt already is left to its adopter */
	if (!def->restored)
		StreamHold(MyDatabaseId, def->id);
	CatalogRebuildStream(def->id);
	ereport(LOG,
			(errmsg("flowpg: stream \"%s\" is to be rebuilt from its source table", FlowpgLabel(def->name))));
	PG_RETURN_VOID();
}

/*
 * Ask the launcher to rebuild a restored stream: it keeps the stream's
 * entry and starts an adopter for it, again after each failure, until
 * one succeeds or the stream is gone.  A request for a stream whose
 * adopter has failed starts the next attempt at once.
 */
void
AdoptRequest(StreamIdentity *ident)
{
	StreamCtl  *ctl = ControlAcquire(ident->dboid, ident->stream_id);

	if (ctl == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("flowpg cannot rebuild stream %d now: flowpg.max_streams (%d) entries are in use",
						ident->stream_id, flowpg_max_streams),
				 errhint("Raise flowpg.max_streams and restart the server; flowpg.wait on the stream tries again.")));
		return;
	}
	LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
	ctl->adopting = true;
	LWLockRelease(&FlowCtl->lock);
	SpinLockAcquire(&ctl->mutex);
	if (OidIsValid(ident->owner))
		ctl->owner = ident->owner;
	if (ctl->pid == 0)
	{
		ctl->status = STREAM_STARTING;
		ctl->restart_at = 0;
	}
	SpinLockRelease(&ctl->mutex);
	ControlWakeLauncher();
}

typedef enum AdoptCheck
{
	ADOPT_GONE,					/* nothing to do */
	ADOPT_RECONNECT,			/* connected as another role than the owner */
	ADOPT_WAIT,					/* the result table is not complete yet */
	ADOPT_READY
} AdoptCheck;

/* Does the table have a valid index (pg_restore built it after the data)? */
static bool
has_valid_index(Oid relid)
{
	Relation	rel = try_relation_open(relid, AccessShareLock);
	List	   *indexes;
	ListCell   *lc;
	bool		found = false;

	if (rel == NULL)
		return false;
	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));

		if (HeapTupleIsValid(tup))
		{
			Form_pg_index index = (Form_pg_index) GETSTRUCT(tup);

			found |= index->indisunique && index->indisvalid && index->indisready;
			ReleaseSysCache(tup);
		}
	}
	relation_close(rel, AccessShareLock);
	return found;
}

static AdoptCheck
adopt_check(StreamIdentity *ident)
{
	StreamDef  *def = NULL;
	AdoptCheck	result;

	FlowpgStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (OidIsValid(get_extension_oid("flowpg", true)))
		def = CatalogReadStream(ident->stream_id);
	if (def == NULL || !def->restored)
		result = ADOPT_GONE;
	else if (def->owner != ident->owner)
	{
		result = ADOPT_RECONNECT;
		ident->owner = def->owner;
	}
	else
		result = has_valid_index(def->result) ? ADOPT_READY : ADOPT_WAIT;
	PopActiveSnapshot();
	CommitTransactionCommand();
	return result;
}

/*
 * Feed every row of a table, in the active snapshot, to the state; with
 * map, the rows of a partition whose layout is not its source's.
 */
static void
scan_table(FlowWorker *w, Relation rel, TupleConversionMap *map, uint64 *rows)
{
	TableScanDesc scan = table_beginscan(rel, GetActiveSnapshot(), 0, NULL);
	HeapTuple	tuple;

	/*
	 * The stream's functions may not write here either (a worker refuses
	 * their writes as it decodes): this transaction commits, and their
	 * writes with it.
	 */
	bool		read_only = PlanReadOnlyBegin();

	PG_TRY();
	{
		while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			FlowpgExitIfOrphaned();
			if (map != NULL)
			{
				HeapTuple	converted = execute_attr_map_tuple(tuple, map);

				BatchAdd(w->batch, w->state, converted);
				heap_freetuple(converted);
			}
			else
				BatchAdd(w->batch, w->state, tuple);
			w->events++;
			if (++*rows % ADOPT_MERGE_ROWS == 0)
			{
				WorkerMergeBatch(w);
				CHECK_FOR_INTERRUPTS();
			}
		}
	}
	PG_CATCH();
	{
		PlanReadOnlyEnd(w->plan, read_only, true);
	}
	PG_END_TRY();
	PlanReadOnlyEnd(w->plan, read_only, false);
	table_endscan(scan);
}

/* Feed every row of the source table (of each partition) to the state. */
static void
scan_source(FlowWorker *w)
{
	Relation	source = table_open(w->fq->source, AccessShareLock);
	uint64		rows = 0;
	ListCell   *lc;

	if (!w->fq->partitioned)
		scan_table(w, source, NULL, &rows);
	else
		foreach(lc, find_all_inheritors(w->fq->source, AccessShareLock, NULL))
		{
			Relation	rel;

			if (get_rel_relkind(lfirst_oid(lc)) != RELKIND_RELATION)
				continue;
			rel = table_open(lfirst_oid(lc), NoLock);
			scan_table(w, rel, convert_tuples_by_name(RelationGetDescr(rel),
													  RelationGetDescr(source)),
					   &rows);
			table_close(rel, NoLock);
		}
	table_close(source, AccessShareLock);
	WorkerMergeBatch(w);
}

/*
 * Steps 3 and 4 of the banner, in one transaction.  Returns ADOPT_READY
 * once done, or what adopt_check would say now if the stream changed
 * while the adopter waited for its lock.
 */
static AdoptCheck
adopt(FlowWorker *w, StreamIdentity *ident)
{
	MemoryContext oldcxt;
	Snapshot	snapshot;
	int64		id;

	FlowpgStartTransaction();
	XactIsoLevel = XACT_REPEATABLE_READ;
	/* a stream rebuilt on its server (flowpg.rebuild_stream) has one */
	DecodeDropSlot(w->slot_name);
	DecodeCreateSlot(w->slot_name, &snapshot);
	CatalogPendingCreate();
	RestoreTransactionSnapshot(snapshot, MyProc);
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();

	oldcxt = MemoryContextSwitchTo(w->cxt);
	w->def = CatalogLockStream(ident->stream_id, AccessExclusiveLock);
	if (w->def == NULL || !w->def->restored || w->def->owner != ident->owner)
	{
		/* dropped (rebuilt, given away) while we waited for its lock */
		AdoptCheck	check = ADOPT_GONE;

		if (w->def != NULL && w->def->restored)
		{
			check = ADOPT_RECONNECT;
			ident->owner = w->def->owner;
		}
		MemoryContextSwitchTo(oldcxt);
		SPI_finish();
		PopActiveSnapshot();
		AbortCurrentTransaction();
		return check;
	}
	CompileApplySettings(w->def->settings, GUC_ACTION_SET);
	w->fq = CompileDefinition(w->def->definition);
	if (w->fq->source != w->def->source)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("restored stream \"%s\" does not read its source table \"%s\"",
						FlowpgLabel(w->def->name), get_rel_name(w->def->source)),
				 errdetail("Its definition is: %s", w->def->definition)));
	CompileCheckPermissions(w->fq);
	w->plan = PlanBuild(w->fq);
	w->plan->name = MemoryContextStrdup(w->plan->cxt, w->def->name);
	w->batch = BatchCreate(w->plan);
	w->def->plan = nodeToString(w->fq->query);
	MemoryContextSwitchTo(oldcxt);
	CheckpointPrepare(w);

	SetConfigOption("application_name", w->def->name, PGC_USERSET, PGC_S_SESSION);
	pgstat_report_activity(STATE_RUNNING, "rebuilding a stream from its source table");
	ereport(LOG,
			(errmsg("flowpg: rebuilding stream \"%s\" from its source table",
					FlowpgLabel(w->def->name))));

	ControlApplyStateLimit();
	LWLockAcquire(&w->ctl->state_lock, LW_EXCLUSIVE);
	oldcxt = MemoryContextSwitchTo(w->cxt);
	w->state = StateCreate(w->ctl);
	MemoryContextSwitchTo(oldcxt);
	LWLockRelease(&w->ctl->state_lock);
	scan_source(w);

	w->processed_lsn = MyReplicationSlot->data.confirmed_flush;
	CatalogAdoptStream(w->def);
	if (replorigin_by_name(w->slot_name, true) == InvalidRepOriginId)
		replorigin_create(w->slot_name);
	CompileRecordDependencies(w->fq, w->def->result);
	CheckpointPrepareIdentity(w);
	CatalogRepairCheckpointIds(w->def->id);
	id = CheckpointStore(w, "rewrite");

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	ereport(LOG,
			(errmsg("flowpg: stream \"%s\" rebuilt from " UINT64_FORMAT " source rows into " UINT64_FORMAT " keys (checkpoint " INT64_FORMAT " at %X/%X)",
					FlowpgLabel(w->def->name), w->events, StateKeys(w->state), id,
					LSN_FORMAT_ARGS(w->processed_lsn))));
	return ADOPT_READY;
}

/*
 * Drop the replication origins of streams whose database is gone, and of
 * this database's streams that have no slot.  A stream's origin goes with
 * the stream (drop_stream, DROP EXTENSION, its orphaned slot's worker) or
 * when it fails for good, but a database may be dropped with streams that
 * have no slot left (PostgreSQL refuses to drop a database only while it
 * has slots), and a slot may be dropped by hand: their origins stayed,
 * each taking one of the server's max_replication_slots replication
 * states, and new streams found a slot but no state, failing at every
 * start.  A stream without a slot needs no origin until it has a slot
 * again (a rebuild or restore), and its worker then makes one.
 * pg_replication_origin is a shared catalog, which only a process
 * connected to a database reads: each scan does it (the launcher has the
 * databases scanned after a DROP DATABASE commits), and create_stream
 * before it makes the new stream's.  In a transaction.
 */
void
AdoptSweepOrigins(void)
{
	List	   *gone = NIL;
	ListCell   *lc;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	rel = table_open(ReplicationOriginRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_replication_origin origin = (Form_pg_replication_origin) GETSTRUCT(tuple);
		char	   *name = text_to_cstring(&origin->roname);
		Oid			dboid;
		int32		stream_id;

		if (!FlowpgParseSlotName(name, &dboid, &stream_id))
			continue;
		if (!SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(dboid)))
		{
			ereport(LOG,
					(errmsg("flowpg: dropping replication origin \"%s\": its database does not exist",
							name)));
			gone = lappend(gone, name);
		}
		else if (dboid == MyDatabaseId && SearchNamedReplicationSlot(name, true) == NULL)
		{
			ereport(LOG,
					(errmsg("flowpg: dropping replication origin \"%s\": its stream has no replication slot",
							name)));
			gone = lappend(gone, name);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	foreach(lc, gone)
		replorigin_drop_by_name(lfirst(lc), true, false);
}

/*
 * Main of a "flowpg scan" worker (see next_scan in launcher.c): ask for
 * the rebuild of the restored streams of one database.  Connects as the
 * bootstrap superuser, reads only flowpg's catalog, runs no stream.
 */
void
AdoptScanMain(Datum main_arg)
{
	Oid			dboid;
	ListCell   *lc;

	memcpy(&dboid, MyBgworkerEntry->bgw_extra, sizeof(dboid));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	FlowpgSetProcessSettings();

	FlowpgStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	AdoptSweepOrigins();
	if (OidIsValid(get_extension_oid("flowpg", true)))
	{
		foreach(lc, CatalogListRestored())
			AdoptRequest(lfirst(lc));
		/* their rebuilds are asked for when this commits */
		CatalogRebuildCopies();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	proc_exit(0);
}

/* On exit: the state goes (the stream's worker restores it). */
static void
adopt_on_exit(int code, Datum arg)
{
	StreamCtl  *ctl = (StreamCtl *) DatumGetPointer(arg);

	LWLockAcquire(&ctl->state_lock, LW_EXCLUSIVE);
	StateDestroy(ctl);
	LWLockRelease(&ctl->state_lock);
	SpinLockAcquire(&ctl->mutex);
	if (ctl->pid == MyProcPid)
		ctl->pid = 0;
	SpinLockRelease(&ctl->mutex);
	ConditionVariableBroadcast(&ctl->cv);
	ControlWakeLauncher();
}

/*
 * The stream is rebuilt, or gone: the launcher lets go of its entry, or
 * starts its worker.
 */
static void
adopt_finished(StreamCtl *ctl)
{
	LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
	ctl->adopting = false;
	LWLockRelease(&FlowCtl->lock);
	SpinLockAcquire(&ctl->mutex);
	ctl->status = STREAM_STARTING;
	ctl->failures = 0;
	ctl->restart_at = 0;
	SpinLockRelease(&ctl->mutex);
}

/*
 * Rebuilding failed (the owner may not read the source yet, something the
 * definition names is missing, ...): keep the error for flowpg.streams
 * and flowpg.wait; the launcher tries again after a back-off.  A
 * serialization failure is no failure of the stream's: the rebuild reads
 * the catalog in the snapshot of its new slot, taken before it waits for
 * the stream's lock, and a change of the stream committed in between
 * (flowpg.set_checkpoint_interval, ...) fails its update of the row; the
 * next adopter starts at once.
 */
static void
adopt_failed(StreamCtl *ctl)
{
	if (geterrcode() == ERRCODE_T_R_SERIALIZATION_FAILURE)
		ControlFailOver(ctl);
	else
		ControlFail(ctl);
	ControlScheduleRestart(ctl);
}

/* Wait for the result table's index, unless the stream needs us no more. */
static AdoptCheck
adopt_wait_ready(StreamIdentity *ident)
{
	bool		said = false;

	for (;;)
	{
		AdoptCheck	check = adopt_check(ident);

		if (check != ADOPT_WAIT)
			return check;
		if (!said)
			ereport(LOG,
					(errmsg("flowpg: restored stream %d waits for its result table's unique index (pg_restore creates it after the data)",
							ident->stream_id)));
		said = true;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Main of an adopter, which the launcher starts for a StreamCtl entry it
 * keeps for a restored stream (AdoptRequest).
 */
void
FlowAdoptMain(Datum main_arg)
{
	StreamCtl  *ctl = &FlowCtl->streams[DatumGetInt32(main_arg)];
	StreamIdentity ident;
	FlowWorker *w;
	bool		ours;
	AdoptCheck	check;

	memcpy(&ident, MyBgworkerEntry->bgw_extra, sizeof(ident));
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* one process per stream: the adopter holds the stream's entry */
	LWLockAcquire(&FlowCtl->lock, LW_SHARED);
	ours = ctl->in_use && !ctl->dropping && ctl->dboid == ident.dboid &&
		ctl->stream_id == ident.stream_id && ctl->adopting;
	LWLockRelease(&FlowCtl->lock);
	if (!ours)
		proc_exit(0);
	SpinLockAcquire(&ctl->mutex);
	ours = ctl->pid == 0;
	if (ours)
	{
		ctl->pid = MyProcPid;
		if (ctl->status != STREAM_FAILED)
			ctl->status = STREAM_STARTING;
	}
	SpinLockRelease(&ctl->mutex);
	if (!ours)
		proc_exit(0);
	/* before the dsa segments are detached: it frees the state */
	before_shmem_exit(adopt_on_exit, PointerGetDatum(ctl));

	PG_TRY();
	{
		ControlConnect(ctl, &ident);
		flowpg_decoding_allowed = true;
		check = adopt_wait_ready(&ident);
		if (check == ADOPT_READY)
		{
			w = MemoryContextAllocZero(TopMemoryContext, sizeof(FlowWorker));
			w->cxt = AllocSetContextCreate(TopMemoryContext, "flowpg adopt",
										   ALLOCSET_DEFAULT_SIZES);
			w->ctl = ctl;
			FlowpgSlotName(w->slot_name, ident.dboid, ident.stream_id);
			check = adopt(w, &ident);
		}
		/* connect again as the stream's owner (see ControlConnect) */
		if (check == ADOPT_RECONNECT)
			ControlReconnectAs(ctl, ident.owner);
		else
			adopt_finished(ctl);
	}
	PG_CATCH();
	{
		adopt_failed(ctl);
		PG_RE_THROW();
	}
	PG_END_TRY();
	proc_exit(0);
}

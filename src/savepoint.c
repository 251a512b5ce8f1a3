/*-------------------------------------------------------------------------
 *
 * savepoint.c
 *	  Savepoints: flowpg.savepoint, flowpg.restore, flowpg.drop_savepoint,
 *	  and flowpg.retained_wal.
 *
 * A savepoint is a checkpoint that is kept: its state, fully copied into
 * flowpg.savepoint_state, and its position, kept by a copy of the stream's
 * slot taken right after the checkpoint (flowpg_sp_<db>_<stream>_<id>).
 * That slot never decodes; it only keeps the WAL since the savepoint, so
 * that the stream's own slot moves on and a restart of the worker costs
 * nothing extra.  The worker takes savepoints (checkpoint.c), since only
 * it knows a consistent state; flowpg.savepoint asks and waits.
 *
 * Restore rewinds a stream: with its worker stopped (StreamHold), the
 * stream's slot is replaced by a copy of the savepoint's slot, and, in the
 * caller's transaction, the state log is replaced by the savepoint's state
 * under a new checkpoint row at the savepoint's position, and the stream
 * is flagged to rewrite its result table.  When the transaction ends the
 * launcher starts a new worker, which restores that state, rewrites the
 * result table from it in its first checkpoint, and decodes from the
 * savepoint's position on: everything committed since is applied again,
 * once.  If the transaction aborts instead, the new worker restores the
 * latest checkpoint as usual, and the copied slot (which lies before it)
 * only makes it skip more transactions already in that checkpoint.
 *
 * A savepoint's slot counts against flowpg.max_retained_wal; when the WAL
 * it needs is gone (its slot was dropped) restore refuses.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "replication/slot.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"

#include "api.h"
#include "catalog.h"
#include "control.h"
#include "decode.h"

PG_FUNCTION_INFO_V1(flowpg_savepoint);
PG_FUNCTION_INFO_V1(flowpg_restore);
PG_FUNCTION_INFO_V1(flowpg_drop_savepoint);
PG_FUNCTION_INFO_V1(flowpg_retained_wal);

/* A savepoint's row in flowpg.savepoint. */
typedef struct Savepoint
{
	int64		id;
	XLogRecPtr	lsn;
} Savepoint;

/* The savepoint name argument: not null, not empty, fits a name. */
static char *
savepoint_arg(FunctionCallInfo fcinfo)
{
	char	   *name = ApiTextArg(fcinfo, 1, "savepoint name");

	if (strlen(name) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("savepoint name \"%s\" is too long", name),
				 errdetail("Savepoint names are at most %d bytes.", NAMEDATALEN - 1)));
	return name;
}

/* Look a savepoint up by stream and name; false if there is none. */
static bool
savepoint_find(StreamDef *def, const char *name, Savepoint *sp)
{
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2] = {Int32GetDatum(def->id), CStringGetTextDatum(name)};
	CatalogPrivilege priv;
	bool		found;

	SPI_connect();
	CatalogBecomeOwner(&priv);
	if (SPI_execute_with_args("SELECT id, lsn FROM flowpg.savepoint "
							  "WHERE stream_id OPERATOR(pg_catalog.=) $1 "
							  "AND name OPERATOR(pg_catalog.=) $2",
							  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read flowpg.savepoint");
	found = SPI_processed == 1;
	if (found)
	{
		bool		isnull;

		sp->id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
		sp->lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 2, &isnull));
	}
	CatalogRestoreUser(&priv);
	SPI_finish();
	return found;
}

static void
savepoint_missing(StreamDef *def, const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("savepoint \"%s\" of stream \"%s\" does not exist", name, FlowpgLabel(def->name)),
			 errhint("The savepoints of this database are listed in flowpg.savepoints.")));
}

/*
 * A stream being rebuilt (rebuild_stream, a restore, a copy) has no worker
 * to take a savepoint until its adopter is done, and the adopter waits for
 * the stream lock a savepoint holds: refuse, rather than wait out the
 * timeout and hold the rebuild back meanwhile.
 */
static void
check_not_rebuilding(StreamDef *def, StreamCtl *ctl)
{
	bool		adopting;

	LWLockAcquire(&FlowCtl->lock, LW_SHARED);
	adopting = ctl->adopting;
	LWLockRelease(&FlowCtl->lock);
	if (adopting || def->restored)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" is being rebuilt from its source table", FlowpgLabel(def->name)),
				 errdetail("A savepoint is a checkpoint that the stream's worker takes, and the worker starts once the rebuild is done."),
				 errhint("Wait for the rebuild with flowpg.wait, then take the savepoint.")));
}

/*
 * Take back a savepoint request that failed (a timeout, a cancel, the
 * stream failing or being rebuilt) if the worker has not begun it, so that
 * no worker takes the savepoint after its caller was told it failed: it
 * counts as abandoned, which a worker checks as it begins one.
 */
static void
withdraw_request(StreamCtl *ctl, uint64 request)
{
	SpinLockAcquire(&ctl->mutex);
	if (ctl->sp_attempted < request && ctl->sp_abandoned < request)
		ctl->sp_abandoned = request;
	SpinLockRelease(&ctl->mutex);
}

static pg_attribute_noreturn() void
no_free_slot(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("all replication slots are in use"),
			 errdetail("A savepoint keeps a replication slot of its own."),
			 errhint("Free one or increase max_replication_slots.")));
}

/*
 * flowpg.savepoint(stream text, savepoint text) RETURNS bigint: the
 * worker takes a checkpoint and keeps it as the savepoint.  Like
 * flowpg.checkpoint it takes effect at once, whatever becomes of the
 * calling transaction.  Owner only.
 */
Datum
flowpg_savepoint(PG_FUNCTION_ARGS)
{
	StreamDef  *def;
	StreamCtl  *ctl;
	char	   *name;
	Savepoint	sp;
	TimestampTz deadline;
	uint64		request;
	int64		id;

	FlowpgCheckPrerequisites();
	FlowpgCheckNotStandby(fcinfo);
	CatalogNoteLocks();
	def = CatalogLookup(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0));
	CatalogCheckOwner(def);
	name = savepoint_arg(fcinfo);
	ApiCheckNotFailed(def);
	if (CatalogPendingChanges(def->id))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot take a savepoint of stream \"%s\" in a transaction that changed the stream or dropped one of its savepoints",
						FlowpgLabel(def->name)),
				 errdetail("The stream's worker takes the savepoint, in a transaction that would wait for this one."),
				 errhint("Commit this transaction first.")));
	/* one savepoint of a stream at a time: a lock of their own */
	FlowpgLockSavepoints(def->id);
	/* the stream's, for the checks (not held while the worker takes it) */
	FlowpgLockStream(def->id, ShareUpdateExclusiveLock);
	CatalogPendingLocked(def->id);
	if (savepoint_find(def, name, &sp))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("savepoint \"%s\" of stream \"%s\" already exists", name, FlowpgLabel(def->name)),
				 errhint("Drop it with flowpg.drop_savepoint first, or choose another name.")));

	/* the worker copies its slot for the savepoint: fail here, not there */
	if (ControlFreeReplicationSlots() == 0)
		no_free_slot();
	/* see FlowpgUnlockStream */
	FlowpgUnlockStream(def->id, ShareUpdateExclusiveLock);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 60 * 1000);
	ctl = ApiAwaitControl(def, deadline);
	check_not_rebuilding(def, ctl);
	ApiRequestTarget(ctl);
	SpinLockAcquire(&ctl->mutex);
	strlcpy(ctl->sp_name, name, NAMEDATALEN);
	request = ++ctl->sp_requested;
	SpinLockRelease(&ctl->mutex);
	PG_TRY();
	{
		for (;;)
		{
			bool		done;
			bool		abandoned;

			SpinLockAcquire(&ctl->mutex);
			done = ctl->sp_done >= request;
			id = ctl->sp_id;
			abandoned = ctl->sp_abandoned >= request;
			SpinLockRelease(&ctl->mutex);
			if (done)
				break;
			ApiRaiseIfFailed(def, ctl);
			if (abandoned)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("the worker of stream \"%s\" restarted while taking savepoint \"%s\"",
								FlowpgLabel(def->name), name),
						 errhint("See last_error in flowpg.streams, then take the savepoint again.")));
			check_not_rebuilding(def, ctl);
			ApiWakeWorker(ctl);
			ApiSleepUntil(def, ctl, deadline, "a savepoint", InvalidXLogRecPtr);
			CHECK_FOR_INTERRUPTS();
		}
	}
	PG_CATCH();
	{
		withdraw_request(ctl, request);
		PG_RE_THROW();
	}
	PG_END_TRY();
	ConditionVariableCancelSleep();
	/* another session took the free slot before the worker could */
	if (id == 0)
		no_free_slot();
	PG_RETURN_INT64(id);
}

/*
 * Replace the stream's state log with the savepoint's state, under a new
 * checkpoint row at the savepoint's position, and flag the result table
 * for rewriting.
 */
static void
restore_catalog(StreamDef *def, Savepoint *sp)
{
	static const char *const sql[] = {
		"DELETE FROM flowpg.state WHERE stream_id OPERATOR(pg_catalog.=) $1",
		"INSERT INTO flowpg.state (stream_id, checkpoint_id, seq, keys, data) "
		"SELECT $1, $2, seq, keys, data FROM flowpg.savepoint_state "
		"WHERE savepoint_id OPERATOR(pg_catalog.=) $3",
		"INSERT INTO flowpg.checkpoint (id, stream_id, lsn, started_at, finished_at, keys, bytes, kind, state_keys) "
		"SELECT $2, $1, lsn, pg_catalog.now(), pg_catalog.clock_timestamp(), keys, bytes, 'restore', keys "
		"FROM flowpg.savepoint WHERE id OPERATOR(pg_catalog.=) $3",
		"UPDATE flowpg.stream SET rewrite = true WHERE id OPERATOR(pg_catalog.=) $1",
	};
	static const int expected[] = {SPI_OK_DELETE, SPI_OK_INSERT, SPI_OK_INSERT, SPI_OK_UPDATE};
	Oid			types[3] = {INT4OID, INT8OID, INT8OID};
	Datum		values[3];
	CatalogPrivilege priv;
	bool		isnull;
	int			i;

	CatalogRepairCheckpointIds(def->id);
	SPI_connect();
	CatalogBecomeOwner(&priv);
	if (SPI_execute("SELECT pg_catalog.nextval('flowpg.checkpoint_id_seq')", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not get a checkpoint id");
	values[0] = Int32GetDatum(def->id);
	values[1] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	values[2] = Int64GetDatum(sp->id);
	for (i = 0; i < lengthof(sql); i++)
		if (SPI_execute_with_args(sql[i], 3, types, values, NULL, false, 0) != expected[i])
			elog(ERROR, "could not restore stream %d: %s", def->id, sql[i]);
	CatalogRestoreUser(&priv);
	SPI_finish();
}

/*
 * flowpg.restore(stream text, savepoint text): rewind the stream to the
 * savepoint.  Owner only; it must be the first write of its transaction
 * (a stale stream's restore creates a replication slot; the slot of one
 * that has its own is rewound: see DecodeRewindSlot).  Takes effect at
 * commit: the result
 * table is rewritten by the stream's next worker, and flowpg.wait then
 * waits until everything committed since the savepoint is applied again.
 */
Datum
flowpg_restore(PG_FUNCTION_ARGS)
{
	StreamDef  *def;
	char	   *name;
	Savepoint	sp;
	char		slot_name[NAMEDATALEN];
	char		sp_slot[NAMEDATALEN];

	FlowpgCheckPrerequisites();
	def = ApiStreamToChange(fcinfo);
	name = savepoint_arg(fcinfo);
	if (!savepoint_find(def, name, &sp))
		savepoint_missing(def, name);
	if (GetTopTransactionIdIfAny() != InvalidTransactionId)
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("flowpg.restore must run before any other write in its transaction"),
				 errdetail("Restoring a savepoint may create a logical replication slot, which PostgreSQL only allows in a transaction that has not written anything yet."),
				 errhint("Call flowpg.restore in its own transaction.")));

	/* the worker stops first: it may be dropping the slots right now */
	StreamHold(MyDatabaseId, def->id);
	FlowpgSavepointSlotName(sp_slot, MyDatabaseId, def->id, sp.id);
	if (def->failure != NULL || !ControlSlotUsable(sp_slot))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("savepoint \"%s\" of stream \"%s\" can no longer be restored",
						name, FlowpgLabel(def->name)),
				 SearchNamedReplicationSlot(sp_slot, true) != NULL ?
				 errdetail("The WAL since its position %X/%X is no longer kept: PostgreSQL invalidated its replication slot \"%s\" (max_slot_wal_keep_size).",
						   LSN_FORMAT_ARGS(sp.lsn), sp_slot) :
				 errdetail("The WAL since its position %X/%X is no longer kept: its replication slot \"%s\" is gone.",
						   LSN_FORMAT_ARGS(sp.lsn), sp_slot),
				 def->failure != NULL ?
				 errhint("The stream failed for good: rebuild it from its source table with flowpg.rebuild_stream, or drop it and create it again.") :
				 errhint("Drop the savepoint; take savepoints again from now on.")));
	FlowpgSlotName(slot_name, MyDatabaseId, def->id);
	DecodeRewindSlot(sp_slot, slot_name);
	restore_catalog(def, &sp);
	ereport(LOG,
			(errmsg("flowpg: stream \"%s\" restored to savepoint \"%s\" at %X/%X",
					FlowpgLabel(def->name), name, LSN_FORMAT_ARGS(sp.lsn))));
	PG_RETURN_VOID();
}

/*
 * flowpg.drop_savepoint(stream text, savepoint text): delete the
 * savepoint; its slot goes when the transaction commits.  Owner only.
 */
Datum
flowpg_drop_savepoint(PG_FUNCTION_ARGS)
{
	StreamDef  *def;
	char	   *name;
	Savepoint	sp;
	Oid			type = INT8OID;
	Datum		value;

	FlowpgCheckLoaded();
	FlowpgCheckChange(fcinfo);
	def = CatalogLookup(PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0));
	CatalogCheckOwner(def);
	name = savepoint_arg(fcinfo);
	FlowpgLockStream(def->id, ShareUpdateExclusiveLock);
	if (!savepoint_find(def, name, &sp))
		savepoint_missing(def, name);

	value = Int64GetDatum(sp.id);
	CatalogExec("DELETE FROM flowpg.savepoint_state WHERE savepoint_id OPERATOR(pg_catalog.=) $1",
				1, &type, &value, SPI_OK_DELETE);
	CatalogExec("DELETE FROM flowpg.savepoint WHERE id OPERATOR(pg_catalog.=) $1",
				1, &type, &value, SPI_OK_DELETE);
	CatalogPendingSlotDrop(MyDatabaseId, def->id, sp.id);
	PG_RETURN_VOID();
}

/*
 * flowpg.retained_wal(stream_id integer) RETURNS bigint: bytes of WAL the
 * stream's slots keep from removal; NULL if it has none.
 */
Datum
flowpg_retained_wal(PG_FUNCTION_ARGS)
{
	int64		retained;

	FlowpgCheckLoaded();
	retained = ControlRetainedWal(MyDatabaseId, PG_GETARG_INT32(0));
	if (retained < 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(retained);
}

/*-------------------------------------------------------------------------
 *
 * checkpoint.c
 *	  A stream's checkpoints: writing one, and restoring from the latest.
 *
 * The checkpoint protocol (Flink's four steps, for a single-input stream):
 *
 *	1. Initiate.  The worker takes a checkpoint only between source
 *	   transactions: after a decoding round, once its batch is merged into
 *	   the shared state, the state holds exactly the transactions that end
 *	   at or before processed_lsn.  Source transactions are the barriers.
 *	2. Store.  ONE transaction writes the keys changed since the previous
 *	   checkpoint (flowpg.state, upserted by key id), their rows of the
 *	   result table, and a flowpg.checkpoints row holding processed_lsn.
 *	   The transaction carries the worker's replication origin, so the
 *	   decoder skips it.
 *	3. Confirm.  Only after that commit is flushed is processed_lsn
 *	   confirmed on the slot, which lets the slot release older WAL.
 *	4. Clean up.  Older flowpg.checkpoints rows beyond
 *	   flowpg.checkpoints_retained are deleted in the same transaction.
 *
 * Recovery (CheckpointRestore) runs every time a worker starts: it rebuilds
 * the shared state from flowpg.state, which holds exactly the state as of
 * the newest flowpg.checkpoints row, and sets restored_lsn to that row's
 * position; decoding resumes from the slot (which may lie before it, if
 * the server crashed between steps 2 and 3) and skips every transaction
 * that ends at or before restored_lsn.  So each committed source row is in
 * the state once.  The result table is written in the checkpoint's
 * transaction, so it always matches some checkpoint.
 *
 * When nothing changed since the last checkpoint the worker writes none;
 * it may still confirm its decoded position on the slot, because the
 * transactions it skipped over changed nothing (see worker.c).
 *
 * The catalog statements run as the extension owner with every name,
 * function and operator schema-qualified; the result table is written as
 * the stream's owner.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "checkpoint.h"
#include "decode.h"

/* Keys written per statement: bounds the arrays a checkpoint builds. */
#define CHECKPOINT_CHUNK	10000

static SPIPlanPtr
prepare_kept(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * Check that the result table still has the query's columns, and keep its
 * descriptor.  Returns the table's qualified name.
 */
static char *
check_result_table(FlowWorker *w)
{
	Relation	rel = table_open(w->def->result, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	TupleDesc	outdesc = w->plan->outslot->tts_tupleDescriptor;
	char	   *name = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												  RelationGetRelationName(rel));
	int			n = 0;
	int			i;
	MemoryContext oldcxt;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		if (n >= outdesc->natts ||
			att->atttypid != TupleDescAttr(outdesc, n)->atttypid)
			break;
		n++;
	}
	if (i < desc->natts || n != outdesc->natts)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("result table %s no longer has the columns of stream \"%s\"",
						name, w->def->name),
				 errdetail("Its columns were altered after the stream was created."),
				 errhint("Drop the stream and create it again; do not alter its result table.")));

	oldcxt = MemoryContextSwitchTo(w->cxt);
	w->resultdesc = CreateTupleDescCopy(desc);
	w->result_rowtype = rel->rd_rel->reltype;
	name = pstrdup(name);
	MemoryContextSwitchTo(oldcxt);
	table_close(rel, AccessShareLock);
	return name;
}

/* Table column name of output column `outcol` (1-based). */
static const char *
result_column(FlowWorker *w, int outcol)
{
	int			i;

	for (i = 0; i < w->resultdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(w->resultdesc, i);

		if (!att->attisdropped && --outcol == 0)
			return quote_identifier(NameStr(att->attname));
	}
	elog(ERROR, "result column %d not found", outcol);
	return NULL;
}

/* Is output column outcol (1-based) a key? */
static bool
is_key_column(FlowWorker *w, int outcol)
{
	int			k;

	for (k = 0; k < w->plan->nkeys; k++)
		if (w->plan->fq->key_outcol[k] == outcol)
			return true;
	return false;
}

static void
prepare_result_upsert(FlowWorker *w, const char *table)
{
	Oid			argtype = get_array_type(w->result_rowtype);
	StringInfoData sql;
	int			ncols = w->plan->outslot->tts_tupleDescriptor->natts;
	int			col;
	bool		first = true;

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s SELECT * FROM pg_catalog.unnest($1)",
					 table);
	if (w->plan->nkeys == 0)
	{
		char	   *del = psprintf("DELETE FROM %s", table);

		w->result_delete = prepare_kept(del, 0, NULL);
		w->result_upsert = prepare_kept(sql.data, 1, &argtype);
		return;
	}

	appendStringInfoString(&sql, " ON CONFLICT (");
	for (col = 0; col < w->plan->nkeys; col++)
		appendStringInfo(&sql, "%s%s", col > 0 ? ", " : "",
						 result_column(w, w->plan->fq->key_outcol[col]));
	appendStringInfoString(&sql, ") DO ");
	for (col = 1; col <= ncols; col++)
	{
		const char *name;

		if (is_key_column(w, col))
			continue;
		name = result_column(w, col);
		appendStringInfo(&sql, "%s%s = EXCLUDED.%s",
						 first ? "UPDATE SET " : ", ", name, name);
		first = false;
	}
	if (first)
		appendStringInfoString(&sql, "NOTHING");
	w->result_upsert = prepare_kept(sql.data, 1, &argtype);
}

/*
 * Prepare the checkpoint's statements.  Called by the worker once, inside
 * a transaction with SPI connected.
 */
void
CheckpointPrepare(FlowWorker *w)
{
	char	   *table = check_result_table(w);
	Oid			state_types[4] = {INT4OID, INT8ARRAYOID, BYTEAARRAYOID, BYTEAARRAYOID};
	Oid			ckpt_types[5] = {INT4OID, PG_LSNOID, TIMESTAMPTZOID, INT8OID, TEXTOID};
	Oid			trim_types[2] = {INT4OID, INT8OID};

	prepare_result_upsert(w, table);
	w->state_upsert = prepare_kept(
								   "INSERT INTO flowpg.state (stream_id, key_id, key, state) "
								   "SELECT $1, u.k, u.key, u.st FROM ROWS FROM (pg_catalog.unnest($2), "
								   "pg_catalog.unnest($3), pg_catalog.unnest($4)) AS u(k, key, st) "
								   "ON CONFLICT (stream_id, key_id) DO UPDATE SET state = EXCLUDED.state",
								   4, state_types);
	w->checkpoint_insert = prepare_kept(
										"INSERT INTO flowpg.checkpoints (stream_id, lsn, started_at, finished_at, keys, kind) "
										"VALUES ($1, $2, $3, pg_catalog.clock_timestamp(), $4, $5) RETURNING id",
										5, ckpt_types);
	w->checkpoint_trim = prepare_kept(
									  "DELETE FROM flowpg.checkpoints WHERE stream_id OPERATOR(pg_catalog.=) $1 "
									  "AND id OPERATOR(pg_catalog.<) (SELECT c.id FROM flowpg.checkpoints c "
									  "WHERE c.stream_id OPERATOR(pg_catalog.=) $1 ORDER BY c.id DESC "
									  "OFFSET $2 LIMIT 1)",
									  2, trim_types);
}

static Datum
bytes_datum(const void *data, Size len)
{
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), data, len);
	return PointerGetDatum(b);
}

/* The result table row of a dirty key, as a composite datum. */
static Datum
result_row(FlowWorker *w, StateChunk *chunk, Datum *values, bool *nulls)
{
	TupleTableSlot *out = PlanFinalize(w->plan, StateChunkKey(chunk),
									   StateChunkState(chunk), chunk->state_len);

	PlanOutputToTable(out, w->resultdesc, values, nulls);
	return HeapTupleGetDatum(heap_form_tuple(w->resultdesc, values, nulls));
}

static void
execute(SPIPlanPtr plan, Datum *args, int expected)
{
	int			rc = SPI_execute_plan(plan, args, NULL, false, 0);

	if (rc != expected)
		elog(ERROR, "checkpoint statement failed: %s", SPI_result_code_string(rc));
}

/* Write dirty keys [from, to) of the state: result rows, then state rows. */
static void
write_keys(FlowWorker *w, int from, int to)
{
	FlowState  *st = w->state;
	int			n = to - from;
	Datum	   *rows = palloc(sizeof(Datum) * n);
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *keys = palloc(sizeof(Datum) * n);
	Datum	   *states = palloc(sizeof(Datum) * n);
	Datum	   *values = palloc(sizeof(Datum) * (w->resultdesc->natts + 1));
	bool	   *nulls = palloc(sizeof(bool) * (w->resultdesc->natts + 1));
	int16		typlen;
	bool		typbyval;
	char		typalign;
	Datum		args[4];
	CatalogPrivilege priv;
	int			i;

	for (i = 0; i < n; i++)
	{
		StateChunk *chunk = StateGetChunk(st, st->dirty[from + i]);

		rows[i] = result_row(w, chunk, values, nulls);
		ids[i] = Int64GetDatum(chunk->key_id);
		keys[i] = bytes_datum(StateChunkKey(chunk), chunk->key_len);
		states[i] = bytes_datum(StateChunkState(chunk), chunk->state_len);
	}

	get_typlenbyvalalign(w->result_rowtype, &typlen, &typbyval, &typalign);
	args[0] = PointerGetDatum(construct_array(rows, n, w->result_rowtype,
											  typlen, typbyval, typalign));
	if (w->result_delete != NULL)
		execute(w->result_delete, NULL, SPI_OK_DELETE);
	execute(w->result_upsert, args, SPI_OK_INSERT);

	args[0] = Int32GetDatum(w->def->id);
	args[1] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	args[2] = PointerGetDatum(construct_array(keys, n, BYTEAOID, -1, false, TYPALIGN_INT));
	args[3] = PointerGetDatum(construct_array(states, n, BYTEAOID, -1, false, TYPALIGN_INT));
	CatalogBecomeOwner(&priv);
	execute(w->state_upsert, args, SPI_OK_INSERT);
	CatalogRestoreUser(&priv);
}

/* Insert the checkpoint's row and trim old ones; returns its id. */
static int64
record_checkpoint(FlowWorker *w, XLogRecPtr lsn, TimestampTz started,
				  int nkeys, const char *kind)
{
	Datum		args[5];
	bool		isnull;
	int64		id;
	CatalogPrivilege priv;

	args[0] = Int32GetDatum(w->def->id);
	args[1] = LSNGetDatum(lsn);
	args[2] = TimestampTzGetDatum(started);
	args[3] = Int64GetDatum(nkeys);
	args[4] = CStringGetTextDatum(kind);
	CatalogBecomeOwner(&priv);
	execute(w->checkpoint_insert, args, SPI_OK_INSERT_RETURNING);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	args[1] = Int64GetDatum((int64) flowpg_checkpoints_retained - 1);
	execute(w->checkpoint_trim, args, SPI_OK_DELETE);
	CatalogRestoreUser(&priv);
	return id;
}

/*
 * Take a checkpoint of the worker's state at processed_lsn (the batch is
 * merged).  kind is "periodic" or "forced".  Returns the checkpoint's id.
 */
int64
CheckpointWrite(FlowWorker *w, const char *kind)
{
	FlowState  *st = w->state;
	StreamCtl  *ctl = w->ctl;
	XLogRecPtr	lsn = w->processed_lsn;
	TimestampTz started = GetCurrentTimestamp();
	MemoryContext cxt = AllocSetContextCreate(w->cxt, "flowpg checkpoint",
											  ALLOCSET_DEFAULT_SIZES);
	int			nkeys = st->ndirty;
	int64		id;
	int			from;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	for (from = 0; from < nkeys; from += CHECKPOINT_CHUNK)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);

		write_keys(w, from, Min(nkeys, from + CHECKPOINT_CHUNK));
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(cxt);
	}
	id = record_checkpoint(w, lsn, started, nkeys, kind);
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	MemoryContextDelete(cxt);

	/* the commit must be durable before the slot lets go of the WAL */
	XLogFlush(XactLastCommitEnd);
	StateClearDirty(st);
	DecodeConfirm(w, lsn);
	w->checkpoint_lsn = lsn;
	w->last_checkpoint = GetCurrentTimestamp();

	SpinLockAcquire(&ctl->mutex);
	ctl->checkpoint_lsn = lsn;
	ctl->checkpoint_id = id;
	ctl->last_checkpoint_at = w->last_checkpoint;
	if (lsn > ctl->result_lsn)
		ctl->result_lsn = lsn;
	ctl->failures = 0;
	SpinLockRelease(&ctl->mutex);
	ConditionVariableBroadcast(&ctl->cv);
	return id;
}

/* Load the rows of flowpg.state into the (empty) shared state. */
static void
restore_keys(FlowWorker *w, Datum stream_id)
{
	Oid			argtypes[1] = {INT4OID};
	Portal		portal;

	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT key_id, key, state FROM flowpg.state "
									   "WHERE stream_id OPERATOR(pg_catalog.=) $1",
									   1, argtypes, &stream_id, NULL, true, 0);
	for (;;)
	{
		uint64		i;

		SPI_cursor_fetch(portal, true, CHECKPOINT_CHUNK);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			int64		key_id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
			bytea	   *key = DatumGetByteaPP(SPI_getbinval(tuple, desc, 2, &isnull));
			bytea	   *image = DatumGetByteaPP(SPI_getbinval(tuple, desc, 3, &isnull));
			MinimalTuple keytup = palloc(VARSIZE_ANY_EXHDR(key));

			memcpy(keytup, VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key));
			BatchRestoreKey(w->batch, w->state, key_id, keytup,
							VARDATA_ANY(image), VARSIZE_ANY_EXHDR(image));
			pfree(keytup);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
}

/*
 * Rebuild the worker's shared state from its latest checkpoint and set
 * restored_lsn.  Called inside a transaction with SPI connected and the
 * stream's state_lock held exclusively, on an empty state.
 */
void
CheckpointRestore(FlowWorker *w)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		stream_id = Int32GetDatum(w->def->id);
	CatalogPrivilege priv;
	int			rc;

	CatalogBecomeOwner(&priv);
	rc = SPI_execute_with_args("SELECT id, lsn FROM flowpg.checkpoints "
							   "WHERE stream_id OPERATOR(pg_catalog.=) $1 "
							   "ORDER BY id DESC LIMIT 1",
							   1, argtypes, &stream_id, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read checkpoints: %s", SPI_result_code_string(rc));
	w->restored_lsn = InvalidXLogRecPtr;
	if (SPI_processed == 1)
	{
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1, &isnull));

		w->restored_lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, 2, &isnull));
		SpinLockAcquire(&w->ctl->mutex);
		w->ctl->checkpoint_id = id;
		SpinLockRelease(&w->ctl->mutex);
	}
	restore_keys(w, stream_id);
	CatalogRestoreUser(&priv);
	w->checkpoint_lsn = w->restored_lsn;
}

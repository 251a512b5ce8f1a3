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
 *	   checkpoint, their rows of the result table, and a flowpg.checkpoint
 *	   row holding processed_lsn.  flowpg.state is a log: the changed keys
 *	   are appended to it as a few packed segments (no per-key index
 *	   lookups); when the log holds more than twice the keys in state, the
 *	   next checkpoints also append the other keys, a slice at a time,
 *	   and the older segments are then deleted (write_state).
 *	   The transaction carries the worker's replication origin, so the
 *	   decoder skips it.  A key's result row is updated where the previous
 *	   checkpoint wrote it (its TID, kept in the key's chunk), if the row
 *	   there still holds the key; a row not there is looked up by its key
 *	   through the unique index.  Rows not found either way, and new keys,
 *	   are inserted (through the table AM, in a subtransaction); if one of
 *	   them has a row after all, the insert fails on the unique index, is
 *	   taken back, and they go through INSERT ... ON CONFLICT instead.
 *	   Either way the worker keeps where each row is now.
 *	   (The TIDs are hints: wrong after VACUUM FULL or CLUSTER of the
 *	   result table, and then the key check catches it.  They go into the
 *	   state log with the keys, so that a worker that starts has them too.)
 *	3. Confirm.  Only after that commit is flushed is processed_lsn
 *	   confirmed on the slot, which lets the slot release older WAL.
 *	   Periodic checkpoints do not wait for the flush: the WAL writer
 *	   does it, and the worker confirms once it is done (CheckpointDone).
 *	4. Clean up.  Older flowpg.checkpoint rows beyond
 *	   flowpg.checkpoints_retained are deleted in the same transaction.
 *
 * Recovery (CheckpointRestore) runs every time a worker starts: it rebuilds
 * the shared state from flowpg.state (a key's latest entry wins: the log
 * is read newest first, and older entries of a key read are skipped),
 * which gives exactly the state as of the
 * newest flowpg.checkpoint row, and sets restored_lsn to that row's
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

#include "access/genam.h"
#include "access/heapam.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_am.h"
#include "catalog/pg_index.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_publication.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "pgstat.h"
#include "portability/instr_time.h"
#include "replication/origin.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/pmsignal.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/relcache.h"
#include "utils/ruleutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "checkpoint.h"
#include "compile.h"
#include "decode.h"
#include "writer.h"

/* Result rows written per statement: bounds the arrays a checkpoint builds. */
#define CHECKPOINT_CHUNK	10000

/*
 * Dirty keys beyond which the writer writes a checkpoint from the keys'
 * own chunks while the worker waits, rather than from a copy while the
 * worker goes on: the copy would cost a good part of what writing it does
 * (the first copy of 1,000,000 keys faults in some 100 MB of fresh
 * memory, in the worker and again in the writer: a fresh stream's
 * catch-up of 1,000,000 distinct keys went from 184 k to 116-162 k
 * events/s, 2026-12-06), and such checkpoints come when a stream starts
 * or catches up on new keys, not while it keeps up.  The writer still
 * writes them, so that the worker never touches the result table's and
 * the state log's pages: a process's first touch of a shared buffer's
 * pages costs a page fault, about 10 us a 4 kB page on these VMs, and
 * when the worker wrote these checkpoints itself the writer's next ones
 * paid for every page it had written (a checkpoint of 10,000 keys among
 * 1,000,000 took 200 ms, then 30-39 ms for several more, against 15-21 ms
 * in the worker; development cluster, 2026-12-06).
 */
#define HANDOFF_MAX_KEYS	100000

/* Bytes of key entries per flowpg.state segment. */
#define SEGMENT_BYTES		(4 * 1024 * 1024)

/*
 * Log entries allowed beyond twice the keys before a compaction begins;
 * also the keys a compaction's step may write beyond the dirty ones.
 */
#define COMPACT_SLACK		1000

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
 * Check that the result table (qualified name `name`) still has the
 * query's columns, and keep its descriptor.
 */
static void
check_result_table(FlowWorker *w, Relation rel, const char *name)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TupleDesc	outdesc = w->plan->outslot->tts_tupleDescriptor;
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
						name, FlowpgLabel(w->def->name)),
				 errdetail("Its columns were altered after the stream was created."),
				 errhint("Drop the stream and create it again; do not alter its result table.")));

	oldcxt = MemoryContextSwitchTo(w->cxt);
	if (w->resultdesc != NULL)
		FreeTupleDesc(w->resultdesc);
	w->resultdesc = CreateTupleDescCopy(desc);
	w->result_rowtype = rel->rd_rel->reltype;
	MemoryContextSwitchTo(oldcxt);
}

/* Index in the result table's descriptor of output column outcol (1-based). */
static int
result_attindex(FlowWorker *w, int outcol)
{
	int			n = outcol;
	int			i;

	for (i = 0; i < w->resultdesc->natts; i++)
		if (!TupleDescAttr(w->resultdesc, i)->attisdropped && --n == 0)
			return i;
	elog(ERROR, "result column %d not found", outcol);
	return -1;
}

/* Table column name of output column `outcol` (1-based). */
static const char *
result_column(FlowWorker *w, int outcol)
{
	int			i = result_attindex(w, outcol);

	return quote_identifier(NameStr(TupleDescAttr(w->resultdesc, i)->attname));
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

/* OPERATOR(schema.name) for an operator, whatever the search_path. */
static char *
qualified_operator(Oid opno)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	Form_pg_operator op;
	char	   *result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for operator %u", opno);
	op = (Form_pg_operator) GETSTRUCT(tup);
	result = psprintf("OPERATOR(%s.%s)",
					  quote_identifier(get_namespace_name(op->oprnamespace)),
					  NameStr(op->oprname));
	ReleaseSysCache(tup);
	return result;
}

/*
 * The update of result rows by their last known TIDs: no index lookup,
 * no tuple lock, just the row (checking that it still holds its key: the
 * table may have been rewritten, or the row changed by hand).  Rows it
 * does not find go through the upsert.  The ordinality says which rows
 * it found, and RETURNING where they went.
 */
static void
prepare_tid_update(FlowWorker *w, const char *table)
{
	Oid			argtypes[2] = {get_array_type(TIDOID), get_array_type(w->result_rowtype)};
	StringInfoData sql;
	int			ncols = w->plan->outslot->tts_tupleDescriptor->natts;
	int			col;
	int			k;
	bool		first = true;
	ListCell   *lc;

	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE ONLY %s r SET ", table);
	for (col = 1; col <= ncols; col++)
	{
		if (is_key_column(w, col))
			continue;
		appendStringInfo(&sql, "%s%s = u.c%d", first ? "" : ", ",
						 result_column(w, col), col);
		first = false;
	}
	appendStringInfoString(&sql, " FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) WITH ORDINALITY u(t");
	for (col = 1; col <= ncols; col++)
		appendStringInfo(&sql, ", c%d", col);
	appendStringInfoString(&sql, ", o) WHERE r.ctid OPERATOR(pg_catalog.=) u.t");
	k = 0;
	foreach(lc, w->plan->fq->key_eqops)
	{
		Oid			eqop = lfirst_oid(lc);
		int			outcol = w->plan->fq->key_outcol[k++];
		const char *name = result_column(w, outcol);

		appendStringInfo(&sql, " AND (r.%s %s u.c%d OR (r.%s IS NULL AND u.c%d IS NULL))",
						 name, qualified_operator(eqop), outcol, name, outcol);
	}
	appendStringInfoString(&sql, " RETURNING u.o, r.ctid");
	w->result_tid_update = prepare_kept(sql.data, 2, argtypes);
}

/*
 * The conflict target of the upsert: the key columns, each with the key
 * index's collation and operator class.  Named bare, the columns would
 * make every unique index on them an arbiter, one with a looser collation
 * (case-insensitive over a text key) too: a new key equal to another
 * under it would have updated the other key's row, silently.  Named so,
 * a conflict on such an index is the unique violation it should be.
 */
static char *
conflict_target(FlowWorker *w, Oid indexoid)
{
	Relation	index = index_open(indexoid, AccessShareLock);
	HeapTuple	tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
	oidvector  *opclasses;
	bool		isnull;
	StringInfoData sql;
	int			j;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for index %u", indexoid);
	opclasses = (oidvector *) DatumGetPointer(SysCacheGetAttr(INDEXRELID, tuple,
															  Anum_pg_index_indclass,
															  &isnull));
	initStringInfo(&sql);
	for (j = 0; j < w->plan->nkeys; j++)
	{
		Form_pg_attribute att = TupleDescAttr(w->resultdesc,
											  index->rd_index->indkey.values[j] - 1);

		appendStringInfo(&sql, "%s%s", j > 0 ? ", " : "",
						 quote_identifier(NameStr(att->attname)));
		if (OidIsValid(index->rd_indcollation[j]))
			appendStringInfo(&sql, " COLLATE %s",
							 generate_collation_name(index->rd_indcollation[j]));
		appendStringInfo(&sql, " %s", generate_opclass_name(opclasses->values[j]));
	}
	ReleaseSysCache(tuple);
	index_close(index, AccessShareLock);
	return sql.data;
}

static void
prepare_result_upsert(FlowWorker *w, const char *table, const char *target)
{
	Oid			argtype = get_array_type(w->result_rowtype);
	StringInfoData sql;
	int			ncols = w->plan->outslot->tts_tupleDescriptor->natts;
	int			col;
	bool		first = true;

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s SELECT * FROM pg_catalog.unnest($1)",
					 table);
	/* ONLY: a table may inherit from the result table (its rows are not ours) */
	w->result_delete = prepare_kept(psprintf("DELETE FROM ONLY %s", table), 0, NULL);
	if (w->plan->nkeys == 0)
	{
		w->result_upsert = prepare_kept(sql.data, 1, &argtype);
		return;
	}

	appendStringInfo(&sql, " ON CONFLICT (%s) DO ", target);
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
	else
	{
		/* one row back per row in, in order: where each key's row is now */
		appendStringInfoString(&sql, " RETURNING ctid");
		prepare_tid_update(w, table);
	}
	w->result_upsert = prepare_kept(sql.data, 1, &argtype);
}

/*
 * A stream is named by its result table (`name`, qualified): after a
 * rename of the table or its schema, the worker's messages and
 * application_name use the new name.
 */
static void
follow_result_name(FlowWorker *w, const char *name)
{
	if (strcmp(name, w->def->name) != 0)
	{
		MemoryContext cxt = GetMemoryChunkContext(w->def->name);

		pfree(w->def->name);
		w->def->name = MemoryContextStrdup(cxt, name);
		SetConfigOption("application_name", w->def->name, PGC_USERSET, PGC_S_SESSION);
	}
}

/*
 * The statements that write the result table name it and its columns, and
 * PostgreSQL parses a kept statement again, from its text, when a table it
 * uses changes: after the result table or one of its columns is renamed
 * (or moved to another schema) they would fail.  So any invalidation of
 * the result table's definition has the next checkpoint check the table
 * and prepare them again (see prepare_result).
 */
static FlowWorker *invalidated_worker;

static void
result_invalidated(Datum arg, Oid relid)
{
	FlowWorker *w = invalidated_worker;

	if (w != NULL && (relid == InvalidOid || relid == w->def->result))
		w->result_changed = w->key_index_stale = true;
}

/*
 * Is index the unique index that makes a key's result row unique: valid,
 * immediate, not partial, on exactly the key columns with NULLs not
 * distinct (on the constant true for a global aggregate), each compared
 * as the stream compares its key (the key's collation, and an operator
 * class whose equality is the key's)?  If so, and cols is not NULL,
 * cols[j] is the key in its column j.  A unique index with a collation
 * that ignores case over a text key would keep two of the stream's keys
 * from having a row each.
 */
static bool
same_equality(FlowWorker *w, Relation index, int j, int k)
{
	Oid			eqop;

	if (index->rd_rel->relam != BTREE_AM_OID ||
		index->rd_indcollation[j] != w->plan->key_coll[k])
		return false;
	eqop = get_opfamily_member(index->rd_opfamily[j], index->rd_opcintype[j],
							   index->rd_opcintype[j], BTEqualStrategyNumber);
	return eqop == list_nth_oid(w->plan->fq->key_eqops, k);
}

static bool
is_key_index(FlowWorker *w, Relation index, int *cols)
{
	Form_pg_index form = index->rd_index;
	int			nkeys = w->plan->nkeys;
	List	   *exprs;
	int			k;

	if (!form->indisunique || !form->indisvalid || !form->indimmediate ||
		RelationGetIndexPredicate(index) != NIL)
		return false;
	if (nkeys == 0)
	{
		exprs = RelationGetIndexExpressions(index);
		return form->indnkeyatts == 1 && form->indkey.values[0] == 0 &&
			list_length(exprs) == 1 && IsA(linitial(exprs), Const);
	}
	if (form->indnkeyatts != nkeys || !form->indnullsnotdistinct)
		return false;
	for (k = 0; k < nkeys; k++)
	{
		AttrNumber	attnum = result_attindex(w, w->plan->fq->key_outcol[k]) + 1;
		int			j;

		for (j = 0; j < nkeys; j++)
			if (form->indkey.values[j] == attnum)
				break;
		if (j == nkeys || !same_equality(w, index, j, k))
			return false;
		if (cols != NULL)
			cols[j] = k;
	}
	return true;
}

/*
 * Find the result table's key index (is_key_index), and give it to the
 * plan, whose operators check each new key against it (PlanSetKeyIndex);
 * false if there is none.
 */
static Oid
find_key_index(FlowWorker *w, Relation rel)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			found = InvalidOid;
	int			map[INDEX_MAX_KEYS];

	w->key_index_stale = false;
	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);

		if (is_key_index(w, index, map))
		{
			PlanSetKeyIndex(w->plan, index, map);
			found = RelationGetRelid(index);
		}
		index_close(index, AccessShareLock);
		if (OidIsValid(found))
			break;
	}
	list_free(indexes);
	if (!OidIsValid(found))
		PlanSetKeyIndex(w->plan, NULL, NULL);
	return found;
}

/*
 * The worker checks each new key against the result table's key index as
 * it decodes (check_key_size in operators.c).  While its checkpoint writer
 * writes the checkpoints, the worker does not prepare the result table
 * itself (prepare_result), and checked new keys against an index dropped
 * since (the error named it): after an invalidation of the result table,
 * it finds the key index again here, between two rounds.
 */
void
CheckpointRefreshKeyIndex(FlowWorker *w)
{
	Relation	rel;

	/* a table dropped meanwhile: its stream's worker is told to stop */
	w->key_index_stale = false;
	FlowpgStartTransaction();
	rel = try_relation_open(w->def->result, AccessShareLock);
	if (rel != NULL)
	{
		(void) find_key_index(w, rel);
		relation_close(rel, AccessShareLock);
	}
	CommitTransactionCommand();
}

/*
 * A checkpoint inserts the rows of keys it knows no row of, and relies on
 * the unique index on the key columns to turn an insert of a key that has
 * a row after all into an update (see insert_in_place): without it, that
 * key would have two rows.  DROP INDEX of it only warns (catalog.c), and
 * a restored result table may lack it: refuse to write such a table.
 */
static Oid
check_key_index(FlowWorker *w, Relation rel, const char *table)
{
	StringInfoData cols;
	int			k;
	Oid			index = find_key_index(w, rel);

	if (OidIsValid(index))
		return index;

	initStringInfo(&cols);
	for (k = 0; k < w->plan->nkeys; k++)
		appendStringInfo(&cols, "%s%s", k > 0 ? ", " : "",
						 result_column(w, w->plan->fq->key_outcol[k]));
	if (w->plan->nkeys > 0)
		appendStringInfoString(&cols, ") NULLS NOT DISTINCT");
	else
		appendStringInfoString(&cols, "(true))");
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("result table %s lacks the unique index (%s that its stream needs",
					table, cols.data),
			 errdetail("The stream finds each key's row through that index; without it a key could get two rows."),
			 errhint("Create it: CREATE UNIQUE INDEX ON %s (%s", table, cols.data)));
	return InvalidOid;
}

/*
 * A publication that publishes a table's updates or deletes needs the
 * table to have a replica identity, or PostgreSQL refuses them: a
 * publication FOR ALL TABLES (or FOR TABLES IN SCHEMA of the result's)
 * would stop every checkpoint.  A result table has no primary key (its
 * keys may be NULL), so give such a published table REPLICA IDENTITY FULL
 * then, and say so.  One that has an identity, or was set to NOTHING by
 * hand, is left alone.  Costs nothing to tables no publication publishes.
 */
static bool
needs_replica_identity(Relation rel)
{
	PublicationDesc pubdesc;

	if (rel->rd_rel->relreplident != REPLICA_IDENTITY_DEFAULT ||
		OidIsValid(RelationGetReplicaIndex(rel)))
		return false;
	RelationBuildPublicationDesc(rel, &pubdesc);
	return pubdesc.pubactions.pubupdate || pubdesc.pubactions.pubdelete;
}

static void
set_replica_identity_full(const char *table)
{
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute(psprintf("ALTER TABLE %s REPLICA IDENTITY FULL", table),
					false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not set the replica identity of %s", table);
	PopActiveSnapshot();
	ereport(LOG,
			(errmsg("flowpg: result table %s is published with its updates: set its REPLICA IDENTITY FULL",
					table),
			 errdetail("A publication publishes the table's updates or deletes, which PostgreSQL refuses for a table without a replica identity.")));
}

/*
 * Will prepare_result set the result table's replica identity?  A look
 * without the table's lock, taken before any lock of it (see
 * lock_for_identity); a publication that comes after it is found by
 * prepare_result, which then takes the lock over the weaker one.
 */
static bool
identity_wanted(FlowWorker *w)
{
	Relation	rel = RelationIdGetRelation(w->def->result);
	bool		wanted;

	if (!RelationIsValid(rel))
		return false;
	wanted = needs_replica_identity(rel);
	RelationClose(rel);
	return wanted;
}

/*
 * Setting the replica identity takes the result table's ACCESS EXCLUSIVE
 * lock.  Queued behind a long transaction that read the table, the
 * request held every later reader of the table behind it until that
 * transaction ended; taken over the ROW EXCLUSIVE lock a checkpoint holds,
 * it deadlocked with the stream's other process doing the same (the
 * checkpoint writer failed, and the worker wrote its checkpoints itself
 * from then on).  So take it first, when it is free, trying again every
 * 10 ms: the checkpoint waits, the readers do not.  Readers that overlap
 * without end would hold the stream back for good: after
 * IDENTITY_LOCK_TRIES_MS, the request queues as any other.
 */
#define IDENTITY_LOCK_TRIES_MS	5000

static void
lock_for_identity(FlowWorker *w)
{
	TimestampTz since = GetCurrentTimestamp();

	while (!ConditionalLockRelationOid(w->def->result, AccessExclusiveLock))
	{
		if (TimestampDifferenceExceeds(since, GetCurrentTimestamp(),
									   IDENTITY_LOCK_TRIES_MS))
		{
			ereport(LOG,
					(errmsg("flowpg: stream \"%s\" waits for the lock of its result table to set its replica identity",
							FlowpgLabel(w->def->name)),
					 errdetail("A publication publishes the table's updates or deletes; other sessions have held a lock on the table for %d ms.",
							   IDENTITY_LOCK_TRIES_MS)));
			LockRelationOid(w->def->result, AccessExclusiveLock);
			return;
		}
		pg_usleep(10000L);
		if (!PostmasterIsAlive())
			proc_exit(1);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Check the result table again and prepare the statements that write it.
 * The caller calls again while w->result_changed: setting the replica
 * identity changes the table.  As the process starts (`at_start`), it
 * holds the table's ACCESS SHARE lock already: the replica identity is
 * left to its first checkpoint (see lock_for_identity), which finds
 * w->result_changed set.
 */
static void
prepare_result(FlowWorker *w, bool at_start)
{
	Relation	rel;
	char	   *table;
	bool		needs_identity;
	Oid			index;
	char	   *target = NULL;

	if (w->result_delete != NULL)
		SPI_freeplan(w->result_delete);
	if (w->result_upsert != NULL)
		SPI_freeplan(w->result_upsert);
	if (w->result_tid_update != NULL)
		SPI_freeplan(w->result_tid_update);
	w->result_delete = w->result_upsert = w->result_tid_update = NULL;
	w->result_changed = false;
	rel = table_open(w->def->result, AccessShareLock);
	table = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									   RelationGetRelationName(rel));
	follow_result_name(w, table);
	check_result_table(w, rel, table);
	index = check_key_index(w, rel, table);
	if (w->plan->nkeys > 0)
		target = conflict_target(w, index);
	needs_identity = needs_replica_identity(rel);
	w->result_triggers = rel->trigdesc != NULL;
	table_close(rel, AccessShareLock);
	if (needs_identity && at_start)
		w->result_changed = true;
	else if (needs_identity)
		set_replica_identity_full(table);
	prepare_result_upsert(w, table, target);
}

/*
 * Set the replica identity a publication wants of the result table, if
 * it does (prepare_result at the process's start leaves it), before the
 * adopter's rewrite.  checkpoint_begin does the same in two steps, with
 * its ROW EXCLUSIVE lock between them.
 */
void
CheckpointPrepareIdentity(FlowWorker *w)
{
	if (w->result_changed && identity_wanted(w))
		lock_for_identity(w);
	while (w->result_changed)
		prepare_result(w, false);
}

/*
 * Prepare the checkpoint's statements.  Called by the worker once, inside
 * a transaction with SPI connected.
 */
void
CheckpointPrepare(FlowWorker *w)
{
	Oid			state_types[5] = {INT4OID, INT8OID, INT4OID, INT4OID, BYTEAOID};
	Oid			compact_types[3] = {INT4OID, INT8OID, INT8OID};
	Oid			ckpt_types[8] = {INT4OID, PG_LSNOID, TIMESTAMPTZOID, INT8OID, TEXTOID, INT8OID, INT8OID, INT8OID};
	Oid			sp_types[6] = {INT8OID, INT4OID, TEXTOID, PG_LSNOID, INT8OID, INT8OID};
	Oid			sp_state_types[4] = {INT8OID, INT4OID, INT4OID, BYTEAOID};
	Oid			rewrite_types[1] = {INT4OID};
	Oid			trim_types[2] = {INT4OID, INT8OID};
	CatalogPrivilege priv;

	if (invalidated_worker == NULL)
		CacheRegisterRelcacheCallback(result_invalidated, (Datum) 0);
	invalidated_worker = w;
	prepare_result(w, true);

	/*
	 * The catalog's statements run as the extension owner, with its pinned
	 * search_path (CatalogBecomeOwner): prepared with the same, or each
	 * execution would plan them again.
	 */
	CatalogBecomeOwner(&priv);
	w->state_append = prepare_kept(
								   "INSERT INTO flowpg.state (stream_id, checkpoint_id, seq, keys, data) "
								   "VALUES ($1, $2, $3, $4, $5)",
								   5, state_types);
	w->state_compact = prepare_kept(
									"WITH dead AS (SELECT checkpoint_id, seq, "
									"pg_catalog.sum(keys) OVER (ORDER BY checkpoint_id, seq) "
									"OPERATOR(pg_catalog.-) keys AS before FROM flowpg.state "
									"WHERE stream_id OPERATOR(pg_catalog.=) $1 "
									"AND checkpoint_id OPERATOR(pg_catalog.<) $2) "
									"DELETE FROM flowpg.state s USING dead d "
									"WHERE s.stream_id OPERATOR(pg_catalog.=) $1 "
									"AND s.checkpoint_id OPERATOR(pg_catalog.=) d.checkpoint_id "
									"AND s.seq OPERATOR(pg_catalog.=) d.seq "
									"AND d.before OPERATOR(pg_catalog.<) $3 RETURNING s.keys",
									3, compact_types);
	w->checkpoint_next = prepare_kept("SELECT pg_catalog.nextval('flowpg.checkpoint_id_seq')",
									  0, NULL);
	w->checkpoint_insert = prepare_kept(
										"INSERT INTO flowpg.checkpoint (id, stream_id, lsn, started_at, finished_at, keys, bytes, kind, state_keys) "
										"VALUES ($6, $1, $2, $3, pg_catalog.clock_timestamp(), $4, $7, $5, $8)",
										8, ckpt_types);
	w->checkpoint_trim = prepare_kept(
									  "DELETE FROM flowpg.checkpoint WHERE stream_id OPERATOR(pg_catalog.=) $1 "
									  "AND id OPERATOR(pg_catalog.<) (SELECT c.id FROM flowpg.checkpoint c "
									  "WHERE c.stream_id OPERATOR(pg_catalog.=) $1 ORDER BY c.id DESC "
									  "OFFSET $2 LIMIT 1)",
									  2, trim_types);
	w->savepoint_insert = prepare_kept(
									   "INSERT INTO flowpg.savepoint (id, stream_id, name, lsn, created_at, keys, bytes) "
									   "VALUES ($1, $2, $3, $4, pg_catalog.now(), $5, $6)",
									   6, sp_types);
	w->savepoint_state_append = prepare_kept(
											 "INSERT INTO flowpg.savepoint_state (savepoint_id, seq, keys, data) "
											 "VALUES ($1, $2, $3, $4)",
											 4, sp_state_types);
	w->rewrite_done = prepare_kept(
								   "UPDATE flowpg.stream SET rewrite = false "
								   "WHERE id OPERATOR(pg_catalog.=) $1",
								   1, rewrite_types);
	CatalogRestoreUser(&priv);
}

/*
 * The result table row of a key and its state image (NULL for the
 * aggregates' initial values), as a composite datum.
 */
static Datum
result_row(FlowWorker *w, MinimalTuple key, const char *image, Size len,
		   Datum *values, bool *nulls)
{
	TupleTableSlot *out = PlanFinalize(w->plan, key, image, len);

	PlanOutputToTable(out, w->resultdesc, values, nulls);
	return HeapTupleGetDatum(heap_form_tuple(w->resultdesc, values, nulls));
}

/*
 * The result rows of the chunks listed in `which`, as composite datums in
 * sub[], for the statements that take rows so.  rows[] keeps those formed
 * (0 until then) for the next statement that needs them.
 */
static void
chunk_rows(FlowWorker *w, StateChunk **chunks, Datum *rows, int *which, int n,
		   Datum *sub)
{
	Datum	   *values = palloc(sizeof(Datum) * (w->resultdesc->natts + 1));
	bool	   *nulls = palloc(sizeof(bool) * (w->resultdesc->natts + 1));
	int			i;

	for (i = 0; i < n; i++)
	{
		StateChunk *chunk = chunks[which[i]];

		if (rows[which[i]] == (Datum) 0)
			rows[which[i]] = result_row(w, StateChunkKey(chunk), StateChunkState(chunk),
										chunk->state_len, values, nulls);
		sub[i] = rows[which[i]];
	}
	pfree(values);
	pfree(nulls);
}

/*
 * The result row of a dirty key in a slot of the result table, its values
 * not yet stored (the caller stores them), for the writes through the
 * table AM: computed straight into the slot, without the composite datum
 * the statements take (forming it and taking it apart again was about 8%
 * of a checkpoint).  By-reference values stay valid until the next
 * PlanFinalize; a caller that keeps the row longer materializes the slot.
 */
static void
chunk_row_to_slot(FlowWorker *w, StateChunk *chunk, TupleTableSlot *slot)
{
	TupleTableSlot *out = PlanFinalizeChunk(w->plan, chunk);

	ExecClearTuple(slot);
	PlanOutputToTable(out, w->resultdesc, slot->tts_values, slot->tts_isnull);
}

static void
execute(SPIPlanPtr plan, Datum *args, int expected)
{
	int			rc = SPI_execute_plan(plan, args, NULL, false, 0);

	if (rc != expected)
		elog(ERROR, "checkpoint statement failed: %s", SPI_result_code_string(rc));
}

typedef struct DirtyKey
{
	int64		key_id;
	dsa_pointer chunk;
} DirtyKey;

/* sort_dirty_keys: a quicksort of DirtyKey by key id, comparisons inlined */
#define ST_SORT sort_dirty_keys
#define ST_ELEMENT_TYPE DirtyKey
#define ST_COMPARE(a, b) (((a)->key_id > (b)->key_id) - ((a)->key_id < (b)->key_id))
#define ST_SCOPE static
#define ST_DECLARE
#define ST_DEFINE
#include "lib/sort_template.h"

/*
 * Put the dirty keys in key id order: keys get their ids in the order
 * they first appear, which is the order their rows went into the result
 * table, so the upserts then visit its pages in order rather than at
 * random.  The dirty list is cleared after the checkpoint anyway.
 */
static void
sort_dirty(FlowState *st)
{
	DirtyKey   *keys = palloc(sizeof(DirtyKey) * (st->ndirty + 1));
	int			i;

	for (i = 0; i < st->ndirty; i++)
	{
		keys[i].key_id = StateGetChunk(st, st->dirty[i])->key_id;
		keys[i].chunk = st->dirty[i];
	}
	sort_dirty_keys(keys, st->ndirty);
	for (i = 0; i < st->ndirty; i++)
	{
		st->dirty[i] = keys[i].chunk;
		StateGetChunk(st, keys[i].chunk)->dirty_index = i;
	}
	pfree(keys);
}

/* An array of n datums of the result table's row type. */
static Datum
row_array(FlowWorker *w, Datum *rows, int n)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;

	get_typlenbyvalalign(w->result_rowtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_array(rows, n, w->result_rowtype,
										   typlen, typbyval, typalign));
}

/* sort_blocks: a quicksort of block numbers, comparisons inlined */
#define ST_SORT sort_blocks
#define ST_ELEMENT_TYPE BlockNumber
#define ST_COMPARE(a, b) ((*(a) > *(b)) - (*(a) < *(b)))
#define ST_SCOPE static
#define ST_DECLARE
#define ST_DEFINE
#include "lib/sort_template.h"

/*
 * Prune the result table's pages that hold several of the rows about to be
 * updated by TID.  An update through an index or a sequential scan prunes
 * the pages it reads (heap_page_prune_opt); a TID scan does not, so without
 * this the dead versions left by the previous checkpoints would fill the
 * pages of keys that change all the time, and every update of those would
 * leave its page (not HOT): an index entry, a tuple lock and a second
 * record in the WAL for each key, and a growing index.  A page where only
 * a row or two change is left alone here: pruning every page a checkpoint
 * writes costs more than the updates it saves (a checkpoint of 10,000
 * keys spread over 1,000,000 took twice as long, 2026-12-06); such a page
 * is pruned when it has no room left for the update (page_lacks_room).
 */
#define PRUNE_MIN_ROWS 4

static void
prune_result_pages(Relation rel, StateChunk **chunks, int *which, int n,
				   BlockNumber nblocks)
{
	BlockNumber *blocks;
	int			i;
	int			run;

	if (rel->rd_rel->relam != HEAP_TABLE_AM_OID)
		return;
	blocks = palloc(sizeof(BlockNumber) * n);
	for (i = 0; i < n; i++)
		blocks[i] = ItemPointerGetBlockNumber(&chunks[which[i]]->tid);
	sort_blocks(blocks, n);
	for (i = 0; i < n; i += run)
	{
		Buffer		buffer;

		for (run = 1; i + run < n && blocks[i + run] == blocks[i]; run++)
			;
		if (run < PRUNE_MIN_ROWS || blocks[i] >= nblocks)
			continue;
		buffer = ReadBuffer(rel, blocks[i]);
		heap_page_prune_opt(rel, buffer);
		ReleaseBuffer(buffer);
	}
	pfree(blocks);
}

/*
 * May update_in_place write this result table?  Only a plain heap table
 * that nothing else hooks into, with the columns the worker knows, and
 * on which the owner holds UPDATE and SELECT: what the statement would
 * check or fire otherwise (triggers, row-level security, constraints,
 * partitions, generated columns, column privileges) stays the
 * statement's job.  A global aggregate's one row is deleted and written
 * again instead.
 */
static bool
in_place_allowed(FlowWorker *w, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	TupleConstr *constr = desc->constr;
	int			i;

	if (w->plan->nkeys == 0 ||
		rel->rd_rel->relkind != RELKIND_RELATION ||
		rel->rd_rel->relispartition ||
		rel->rd_rel->relam != HEAP_TABLE_AM_OID ||
		rel->trigdesc != NULL ||
		rel->rd_rel->relrowsecurity ||
		(constr != NULL && (constr->num_check > 0 || constr->has_not_null ||
							constr->has_generated_stored)) ||
		desc->natts != w->resultdesc->natts)
		return false;
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute a = TupleDescAttr(desc, i);
		Form_pg_attribute b = TupleDescAttr(w->resultdesc, i);

		if (a->attisdropped != b->attisdropped || a->atttypid != b->atttypid)
			return false;
	}
	return pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_UPDATE) == ACLCHECK_OK &&
		pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_SELECT) == ACLCHECK_OK;
}

/*
 * What update_in_place and insert_in_place share: an executor state over
 * the result table with its indexes open, a slot of its row type, and the
 * command id and snapshot of a new statement.
 */
typedef struct InPlace
{
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	Snapshot	snapshot;
	CommandId	cid;
} InPlace;

static void
in_place_begin(Relation rel, InPlace *ip)
{
	RangeTblEntry *rte;

	/* see what the statements before saw, as the next statement would */
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	ip->snapshot = GetActiveSnapshot();
	ip->cid = GetCurrentCommandId(true);

	ip->estate = CreateExecutorState();
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(ip->estate, list_make1(rte));
	ip->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(ip->rri, rel, 1, NULL, 0);
	ExecOpenIndices(ip->rri, false);
	ip->estate->es_output_cid = ip->cid;
	ip->slot = table_slot_create(rel, &ip->estate->es_tupleTable);
}

static void
in_place_end(InPlace *ip)
{
	ExecCloseIndices(ip->rri);
	ExecResetTupleTable(ip->estate->es_tupleTable, false);
	FreeExecutorState(ip->estate);
	PopActiveSnapshot();
	CommandCounterIncrement();
}

/*
 * Has the page of the row version in `slot` (a heap buffer slot) no room
 * for another version of it?  Then the update would leave the page (not
 * HOT: a new page, an index entry, a second WAL record) unless the page
 * is pruned of the versions earlier checkpoints left there.  Pages where
 * several rows change are pruned anyway (prune_result_pages); this
 * catches the pages of keys that change one at a time, which fill up
 * after some dozens of checkpoints (10,000 keys changed at random among
 * 1,000,000, a result row of 60 bytes on pages half full: about 100) and
 * then made every update of theirs cost twice as much and more.  Read
 * without a lock, as heap_page_prune_opt does: only a hint.
 */
static bool
page_lacks_room(TupleTableSlot *slot, Size needed)
{
	BufferHeapTupleTableSlot *bslot = (BufferHeapTupleTableSlot *) slot;

	if (!TTS_IS_BUFFERTUPLE(slot) || !BufferIsValid(bslot->buffer) ||
		bslot->base.tuple == NULL)
		return false;
	return PageGetHeapFreeSpace(BufferGetPage(bslot->buffer)) < needed;
}

/*
 * The room the new version of a row takes on a page: a row that grows
 * (max(text)) did not fit where the old version's size did, and left its
 * page without the pruning that would have made room.  Before TOAST
 * compresses anything: at most more than it takes.
 */
static Size
new_row_size(TupleTableSlot *slot)
{
	TupleDesc	desc = slot->tts_tupleDescriptor;
	Size		header = offsetof(HeapTupleHeaderData, t_bits);
	int			i;

	for (i = 0; i < desc->natts; i++)
		if (slot->tts_isnull[i])
		{
			header += BITMAPLEN(desc->natts);
			break;
		}
	return MAXALIGN(MAXALIGN(header) +
					heap_compute_data_size(desc, slot->tts_values, slot->tts_isnull));
}

/*
 * The update of result_tid_update without the statement: for each row,
 * fetch the row version at its TID, check that it still holds its key
 * (keeping the key's stored bytes, as the statement does), update it
 * through the table AM and, when the update is not HOT, insert its index
 * entries, as the executor's UPDATE does.  Planning and running the join
 * of the statement (a TID scan restarted for every row) took two thirds
 * of a checkpoint's time.  A row changed or deleted meanwhile counts as
 * not found and goes through the upsert.  The caller has checked
 * in_place_allowed.
 */
static void
update_in_place(FlowWorker *w, Relation rel, StateChunk **chunks, Datum *rows,
				int *which, int n, bool *found, BlockNumber nblocks)
{
	FlowPlan   *plan = w->plan;
	int		   *keyatt = palloc(sizeof(int) * (plan->nkeys + 1));
	Datum	   *oldkey = palloc(sizeof(Datum) * (plan->nkeys + 1));
	bool	   *oldnull = palloc(sizeof(bool) * (plan->nkeys + 1));
	Datum	   *newkey = palloc(sizeof(Datum) * (plan->nkeys + 1));
	bool	   *newnull = palloc(sizeof(bool) * (plan->nkeys + 1));
	InPlace		ip;
	TupleTableSlot *oldslot;
	TupleTableSlot *newslot;
	int			natts = 0;		/* of the old row: up to its last key column */
	int			i;
	int			k;

	for (k = 0; k < plan->nkeys; k++)
	{
		keyatt[k] = result_attindex(w, plan->fq->key_outcol[k]);
		natts = Max(natts, keyatt[k] + 1);
	}
	CheckCmdReplicaIdentity(rel, CMD_UPDATE);

	in_place_begin(rel, &ip);
	newslot = ip.slot;
	oldslot = table_slot_create(rel, &ip.estate->es_tupleTable);

	for (i = 0; i < n; i++)
	{
		StateChunk *chunk = chunks[which[i]];
		ItemPointerData tid = chunk->tid;
		TM_FailureData tmfd;
		LockTupleMode lockmode;
		bool		update_indexes;
		TM_Result	result;

		/* no executor here to see a shutdown's SIGTERM: a large one took seconds */
		CHECK_FOR_INTERRUPTS();
		ResetPerTupleExprContext(ip.estate);
		if (ItemPointerGetBlockNumber(&tid) >= nblocks ||
			!table_tuple_fetch_row_version(rel, &tid, ip.snapshot, oldslot))
			continue;
		chunk_row_to_slot(w, chunk, newslot);
		if (page_lacks_room(oldslot, new_row_size(newslot)))
		{
			/* prune it first, the row's version moving on the page */
			Buffer		buffer;

			ExecClearTuple(oldslot);
			buffer = ReadBuffer(rel, ItemPointerGetBlockNumber(&tid));
			heap_page_prune_opt(rel, buffer);
			ReleaseBuffer(buffer);
			if (!table_tuple_fetch_row_version(rel, &tid, ip.snapshot, oldslot))
				continue;
		}
		slot_getsomeattrs(oldslot, natts);
		for (k = 0; k < plan->nkeys; k++)
		{
			oldkey[k] = oldslot->tts_values[keyatt[k]];
			oldnull[k] = oldslot->tts_isnull[keyatt[k]];
			newkey[k] = newslot->tts_values[keyatt[k]];
			newnull[k] = newslot->tts_isnull[keyatt[k]];
		}
		if (!PlanKeysEqual(plan, oldkey, oldnull, newkey, newnull))
			continue;			/* the row no longer holds this key */
		for (k = 0; k < plan->nkeys; k++)
			newslot->tts_values[keyatt[k]] = oldkey[k];
		ExecStoreVirtualTuple(newslot);

		result = table_tuple_update(rel, &tid, newslot, ip.cid, ip.snapshot,
									InvalidSnapshot, true, &tmfd, &lockmode,
									&update_indexes);
		if (result == TM_Updated || result == TM_Deleted)
			continue;			/* changed meanwhile: the upsert writes it */
		if (result != TM_Ok)
			elog(ERROR, "unexpected result %d updating a row of result table \"%s\"",
				 (int) result, RelationGetRelationName(rel));
		if (update_indexes && ip.rri->ri_NumIndices > 0)
			(void) ExecInsertIndexTuples(ip.rri, newslot, ip.estate, true, false,
										 NULL, NIL);
		chunk->tid = newslot->tts_tid;
		found[which[i]] = true;
	}
	in_place_end(&ip);
}

/* rows inserted at once by insert_in_place, as COPY batches them */
#define INSERT_BATCH 1000

/*
 * Insert the rows listed in `which` through the table AM, as COPY does
 * (heap rows INSERT_BATCH at a time, then their index entries, unique
 * ones checked), in a subtransaction, and keep their TIDs.  These are the
 * rows of keys with no known row: almost always keys new since the last
 * checkpoint, which have none, so the upsert's speculative insertion (an
 * index probe and a lock before each row, then its confirmation: about
 * half of the cost of a new key's checkpoint) buys nothing.  When a key
 * does have a row after all (someone inserted one by hand), the insert
 * fails on the unique index, the subtransaction rolls back, and the
 * caller upserts the lot.  Returns whether the rows are in.  The caller
 * has checked in_place_allowed and the owner's INSERT privilege.
 */
static bool
insert_in_place(FlowWorker *w, Relation rel, StateChunk **chunks, Datum *rows,
				int *which, int n)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ItemPointerData *tids = palloc(sizeof(ItemPointerData) * n);
	bool		inserted = true;
	int			i;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		InPlace		ip;
		TupleTableSlot *slots[INSERT_BATCH];
		int			nslots = Min(n, INSERT_BATCH);
		int			done;

		in_place_begin(rel, &ip);
		for (i = 0; i < nslots; i++)
			slots[i] = table_slot_create(rel, &ip.estate->es_tupleTable);
		/* as COPY does: the heap rows of a batch at once, then their index entries */
		for (done = 0; done < n; done += nslots)
		{
			int			m = Min(nslots, n - done);

			CHECK_FOR_INTERRUPTS();

			for (i = 0; i < m; i++)
			{
				chunk_row_to_slot(w, chunks[which[done + i]], slots[i]);
				ExecStoreVirtualTuple(slots[i]);
				ExecMaterializeSlot(slots[i]);	/* past the next key's values */
			}
			table_multi_insert(rel, slots, m, ip.cid, 0, NULL);
			for (i = 0; i < m; i++)
			{
				ResetPerTupleExprContext(ip.estate);
				if (ip.rri->ri_NumIndices > 0)
					(void) ExecInsertIndexTuples(ip.rri, slots[i], ip.estate, false,
												 false, NULL, NIL);
				tids[done + i] = slots[i]->tts_tid;
			}
		}
		in_place_end(&ip);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		RepOriginId origin = replorigin_session_origin;

		if (geterrcode() != ERRCODE_UNIQUE_VIOLATION)
			PG_RE_THROW();
		MemoryContextSwitchTo(cxt);
		FlushErrorState();

		/*
		 * An abort record advances the origin of the session, which the
		 * checkpoint writer tags its changes with but does not hold (see
		 * writer.c): the rollback's record goes without it.
		 */
		replorigin_session_origin = InvalidRepOriginId;
		RollbackAndReleaseCurrentSubTransaction();
		replorigin_session_origin = origin;
		inserted = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;

	if (inserted)
		for (i = 0; i < n; i++)
			chunks[which[i]]->tid = tids[i];
	return inserted;
}

/* The same update through result_tid_update, for any result table. */
static void
update_by_statement(FlowWorker *w, StateChunk **chunks, Datum *rows,
					int *which, int n, bool *found)
{
	Datum	   *tids = palloc(sizeof(Datum) * n);
	Datum	   *sub = palloc(sizeof(Datum) * n);
	Datum		args[2];
	int			nest;
	int			rc;
	uint64		i;

	for (i = 0; i < n; i++)
		tids[i] = PointerGetDatum(&chunks[which[i]]->tid);
	chunk_rows(w, chunks, rows, which, n, sub);
	args[0] = PointerGetDatum(construct_array(tids, n, TIDOID,
											  sizeof(ItemPointerData), false, TYPALIGN_SHORT));
	args[1] = row_array(w, sub, n);

	/* the join must be by TID, whatever the planner thinks of n */
	nest = NewGUCNestLevel();
	(void) set_config_option("enable_hashjoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("enable_mergejoin", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	rc = SPI_execute_plan(w->result_tid_update, args, NULL, false, 0);
	AtEOXact_GUC(false, nest);
	if (rc != SPI_OK_UPDATE_RETURNING)
		elog(ERROR, "checkpoint statement failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		int64		ord = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													  SPI_tuptable->tupdesc, 1, &isnull));
		ItemPointer tid = (ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[i],
																	  SPI_tuptable->tupdesc, 2, &isnull));

		if (ord < 1 || ord > n)
			elog(ERROR, "unexpected row number " INT64_FORMAT " from the result update", ord);
		found[which[ord - 1]] = true;
		chunks[which[ord - 1]]->tid = *tid;
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * Update the rows of the chunks listed in `which` (indexes into `chunks`)
 * by TID; mark those it found in `found`, and keep their new TIDs.
 */
static void
update_by_tid(FlowWorker *w, StateChunk **chunks, Datum *rows, int *which,
			  int n, bool *found)
{
	Relation	rel = table_open(w->def->result, RowExclusiveLock);
	BlockNumber nblocks = RelationGetNumberOfBlocks(rel);

	prune_result_pages(rel, chunks, which, n, nblocks);
	if (in_place_allowed(w, rel))
		update_in_place(w, rel, chunks, rows, which, n, found, nblocks);
	else
		update_by_statement(w, chunks, rows, which, n, found);
	table_close(rel, NoLock);
}

/*
 * Find through the key index the result rows of the chunks listed in
 * `probe`: keys whose rows are in the table, but not where their TIDs say
 * (moved by VACUUM FULL or CLUSTER, or changed by hand), or restored from
 * state log entries that carry no TID.  Keeps the TIDs found, lists those
 * chunks in `located`, and returns how many.  Without this such keys
 * were inserted, failed on the unique index, and were all upserted, at
 * several times the cost of an update in place.  The TIDs found are
 * checked as any other (update_in_place), and only tables update_in_place
 * may write are probed.
 */
static int
find_rows_by_key(FlowWorker *w, StateChunk **chunks, Datum *rows, int *probe,
				 int n, int *located)
{
	Relation	rel = table_open(w->def->result, RowExclusiveLock);
	Relation	index = NULL;
	List	   *indexes;
	ListCell   *lc;
	int			nfound = 0;

	if (w->plan->nkeys == 0 || !in_place_allowed(w, rel))
	{
		table_close(rel, NoLock);
		return 0;
	}
	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		Relation	candidate = index_open(lfirst_oid(lc), AccessShareLock);

		if (is_key_index(w, candidate, NULL))
		{
			index = candidate;
			break;
		}
		index_close(candidate, AccessShareLock);
	}
	list_free(indexes);
	if (index != NULL && index->rd_rel->relam == BTREE_AM_OID)
	{
		int			nkeys = IndexRelationGetNumberOfKeyAttributes(index);
		ScanKeyData *skey = palloc(sizeof(ScanKeyData) * nkeys);
		RegProcedure *eqproc = palloc(sizeof(RegProcedure) * nkeys);
		TupleTableSlot *rowslot = table_slot_create(rel, NULL);
		TupleTableSlot *slot = table_slot_create(rel, NULL);
		IndexScanDesc scan;
		int			i,
					k;

		for (k = 0; k < nkeys; k++)
		{
			Oid			eqop = get_opfamily_member(index->rd_opfamily[k],
												   index->rd_opcintype[k],
												   index->rd_opcintype[k],
												   BTEqualStrategyNumber);

			if (!OidIsValid(eqop))
				elog(ERROR, "missing equality operator for column %d of index \"%s\"",
					 k + 1, RelationGetRelationName(index));
			eqproc[k] = get_opcode(eqop);
		}
		PushActiveSnapshot(GetTransactionSnapshot());
		scan = index_beginscan(rel, index, GetActiveSnapshot(), nkeys, 0);
		for (i = 0; i < n; i++)
		{
			chunk_row_to_slot(w, chunks[probe[i]], rowslot);
			for (k = 0; k < nkeys; k++)
			{
				int			att = index->rd_index->indkey.values[k] - 1;

				if (rowslot->tts_isnull[att])
					ScanKeyEntryInitialize(&skey[k], SK_ISNULL | SK_SEARCHNULL, k + 1,
										   InvalidStrategy, InvalidOid, InvalidOid,
										   InvalidOid, (Datum) 0);
				else
					ScanKeyEntryInitialize(&skey[k], 0, k + 1, BTEqualStrategyNumber,
										   index->rd_opcintype[k],
										   index->rd_indcollation[k], eqproc[k],
										   rowslot->tts_values[att]);
			}
			index_rescan(scan, skey, nkeys, NULL, 0);
			if (index_getnext_slot(scan, ForwardScanDirection, slot))
			{
				chunks[probe[i]]->tid = slot->tts_tid;
				located[nfound++] = probe[i];
			}
		}
		index_endscan(scan);
		PopActiveSnapshot();
		ExecDropSingleTupleTableSlot(rowslot);
		ExecDropSingleTupleTableSlot(slot);
	}
	if (index != NULL)
		index_close(index, AccessShareLock);
	table_close(rel, NoLock);
	return nfound;
}

/*
 * Upsert the rows of the chunks listed in `which`, keeping their TIDs when
 * the statement returns them (one per row, in order).
 */
static void
upsert(FlowWorker *w, StateChunk **chunks, Datum *rows, int *which, int n)
{
	Datum	   *sub = palloc(sizeof(Datum) * n);
	Datum		arg;
	int			rc;
	uint64		i;

	chunk_rows(w, chunks, rows, which, n, sub);
	arg = row_array(w, sub, n);
	rc = SPI_execute_plan(w->result_upsert, &arg, NULL, false, 0);
	if (rc != SPI_OK_INSERT && rc != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "checkpoint statement failed: %s", SPI_result_code_string(rc));
	for (i = 0; i < n; i++)
	{
		bool		isnull;

		if (rc == SPI_OK_INSERT_RETURNING && SPI_processed == n)
			chunks[which[i]]->tid =
				*(ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc, 1, &isnull));
		else
			ItemPointerSetInvalid(&chunks[which[i]]->tid);
	}
	if (SPI_tuptable != NULL)
		SPI_freetuptable(SPI_tuptable);
}

/*
 * Insert the rows of the chunks listed in `which` through insert_in_place,
 * if the result table allows it; returns whether they are in (if not, the
 * caller upserts them).
 */
static bool
insert_new_rows(FlowWorker *w, StateChunk **chunks, Datum *rows, int *which,
				int n)
{
	Relation	rel = table_open(w->def->result, RowExclusiveLock);
	bool		inserted = false;

	if (in_place_allowed(w, rel) &&
		pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_INSERT) == ACLCHECK_OK)
		inserted = insert_in_place(w, rel, chunks, rows, which, n);
	table_close(rel, NoLock);
	return inserted;
}

/*
 * Write the result rows of the n keys in chunks[]: by TID those whose row
 * is known (unless the table was just emptied), after looking up by key
 * the rows of keys restored without a TID and of those their TID did not
 * find; the others are inserted, or upserted.
 */
static void
write_rows(FlowWorker *w, StateChunk **chunks, int n, bool rewrite,
		   int64 restored_keys_end)
{
	Datum	   *rows = palloc0(sizeof(Datum) * n);	/* formed when needed */
	bool	   *found = palloc0(sizeof(bool) * n);
	int		   *which = palloc(sizeof(int) * n);
	int		   *probe = palloc(sizeof(int) * n);
	int			nwhich = 0;
	int			nprobe = 0;
	int			i;

	for (i = 0; i < n; i++)
	{
		if (rewrite)
			ItemPointerSetInvalid(&chunks[i]->tid);
		else if (w->result_tid_update == NULL)
			continue;
		else if (ItemPointerIsValid(&chunks[i]->tid))
			which[nwhich++] = i;
		else if (chunks[i]->key_id < restored_keys_end)
			probe[nprobe++] = i;
	}
	if (w->plan->nkeys == 0)
		execute(w->result_delete, NULL, SPI_OK_DELETE);
	if (nprobe > 0)
		nwhich += find_rows_by_key(w, chunks, rows, probe, nprobe, which + nwhich);
	if (nwhich > 0)
	{
		update_by_tid(w, chunks, rows, which, nwhich, found);

		/*
		 * Rows that were not where their TIDs said (moved by VACUUM FULL
		 * or CLUSTER, or changed by hand): look them up by key, so that
		 * they are updated rather than sent through the upsert.
		 */
		nprobe = 0;
		for (i = 0; i < nwhich; i++)
			if (!found[which[i]])
				probe[nprobe++] = which[i];
		if (nprobe > 0)
		{
			nwhich = find_rows_by_key(w, chunks, rows, probe, nprobe, which);
			if (nwhich > 0)
				update_by_tid(w, chunks, rows, which, nwhich, found);
		}
	}
	nwhich = 0;
	for (i = 0; i < n; i++)
		if (!found[i])
			which[nwhich++] = i;
	if (nwhich > 0 && !insert_new_rows(w, chunks, rows, which, nwhich))
		upsert(w, chunks, rows, which, nwhich);
}

/*
 * A global aggregate (no GROUP BY) over no rows still has its one result
 * row, computed from the aggregates' initial values.
 */
static void
write_initial_row(FlowWorker *w)
{
	Datum	   *values = palloc(sizeof(Datum) * (w->resultdesc->natts + 1));
	bool	   *nulls = palloc(sizeof(bool) * (w->resultdesc->natts + 1));
	Datum		row = result_row(w, PlanEmptyKey(w->plan), NULL, 0, values, nulls);
	Datum		arg = row_array(w, &row, 1);

	execute(w->result_upsert, &arg, SPI_OK_INSERT);
}

/*
 * A segment of key entries being filled, for flowpg.state (whose rows
 * start with stream id and checkpoint id) or flowpg.savepoint_state
 * (savepoint id): `prefix` holds those leading arguments of `insert`.
 * The segment is built as a bytea, its header first, in the worker's
 * buffer, which lives as long as the worker: a new buffer of a few
 * megabytes each checkpoint (and a copy of it as a bytea) cost a page
 * fault every 4 kB, a third of the time a checkpoint spent on its
 * segment on this project's VMs (some 1,200 faults for 21,000 entries,
 * about 10 us each).
 */
typedef struct Segment
{
	SPIPlanPtr	insert;
	Datum		prefix[2];
	int			nprefix;
	int			seq;
	int			keys;
	int64		written;		/* keys */
	int64		bytes;
	StringInfo	buf;
} Segment;

static void
segment_init(FlowWorker *w, Segment *seg, SPIPlanPtr insert, int nprefix,
			 Datum a, Datum b)
{
	memset(seg, 0, sizeof(Segment));
	seg->insert = insert;
	seg->nprefix = nprefix;
	seg->prefix[0] = a;
	seg->prefix[1] = b;
	/* (a huge entry grew it beyond what segments need: let it go) */
	if (w->segment.data != NULL && w->segment.maxlen > 2 * SEGMENT_BYTES)
	{
		pfree(w->segment.data);
		w->segment.data = NULL;
	}
	if (w->segment.data == NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(w->cxt);

		initStringInfo(&w->segment);
		MemoryContextSwitchTo(oldcxt);
	}
	seg->buf = &w->segment;
	resetStringInfo(seg->buf);
	appendStringInfoSpaces(seg->buf, VARHDRSZ);
}

/* Append the segment to its table and empty it. */
static void
segment_flush(Segment *seg)
{
	Datum		args[5];
	CatalogPrivilege priv;
	int			n = seg->nprefix;

	if (seg->keys == 0)
		return;
	SET_VARSIZE(seg->buf->data, seg->buf->len);
	memcpy(args, seg->prefix, sizeof(Datum) * n);
	args[n] = Int32GetDatum(seg->seq++);
	args[n + 1] = Int32GetDatum(seg->keys);
	args[n + 2] = PointerGetDatum(seg->buf->data);
	CatalogBecomeOwner(&priv);
	execute(seg->insert, args, SPI_OK_INSERT);
	CatalogRestoreUser(&priv);
	seg->written += seg->keys;
	seg->bytes += seg->buf->len - VARHDRSZ;
	seg->keys = 0;
	resetStringInfo(seg->buf);
	appendStringInfoSpaces(seg->buf, VARHDRSZ);
}

/*
 * A segment's entry: key id, key length, image length, the key's row in
 * the result table if known (ENTRY_TID set in the key length), key,
 * image.  The row's TID spares a restarted worker the lookup of the row
 * by its key through the index (about 3 us a key, once for each key
 * after a restart; a checkpoint of 10,000 keys that had not changed
 * since took several times as long as the next of the same keys).  It is
 * a hint like the TID a chunk keeps: checked against the key before use.
 */
#define ENTRY_HEADER (sizeof(int64) + 2 * sizeof(uint32))
#define ENTRY_TID	((uint32) 1 << 31)

/* Append a key's entry.  A StateScanFn, so that a checkpoint can write every key. */
static void
segment_add(void *arg, StateChunk *chunk)
{
	Segment    *seg = (Segment *) arg;
	int64		key_id = chunk->key_id;
	uint32		key_len = chunk->key_len;
	bool		tid = ItemPointerIsValid(&chunk->tid);

	if (tid)
		key_len |= ENTRY_TID;
	appendBinaryStringInfo(seg->buf, (char *) &key_id, sizeof(key_id));
	appendBinaryStringInfo(seg->buf, (char *) &key_len, sizeof(key_len));
	appendBinaryStringInfo(seg->buf, (char *) &chunk->state_len, sizeof(chunk->state_len));
	if (tid)
		appendBinaryStringInfo(seg->buf, (char *) &chunk->tid, sizeof(ItemPointerData));
	appendBinaryStringInfo(seg->buf, (char *) StateChunkKey(chunk), chunk->key_len);
	appendBinaryStringInfo(seg->buf, StateChunkState(chunk), chunk->state_len);
	seg->keys++;
	if (seg->buf->len - VARHDRSZ >= SEGMENT_BYTES)
		segment_flush(seg);
}

/*
 * One step of the state log's compaction: pass to `add` the keys of the
 * next slots of the directory that its sweep has not written yet, at most
 * `budget` of them.  Returns whether the sweep has visited every slot:
 * then each key has an entry in a checkpoint since the sweep began (one
 * it wrote, or one written because the key changed, whose chunk carries
 * the sweep's number), and the segments older than that are dead.  Keys
 * added meanwhile take the slots at the end, which the sweep reaches too.
 */
static bool
sweep_state(FlowWorker *w, StateScanFn add, void *arg, int64 budget)
{
	FlowState  *st = w->state;

	while (w->sweep_pos < StateKeys(st))
	{
		StateChunk *chunk = StateGetSlot(st, w->sweep_pos);

		if (chunk->swept != w->sweep)
		{
			if (budget-- <= 0)
				return false;
			add(arg, chunk);
			chunk->swept = w->sweep;
		}
		w->sweep_pos++;
	}
	return true;
}

/*
 * Delete segments of the state log older than checkpoint `below`, oldest
 * first, as many as hold fewer than `budget` entries before the last one
 * (so at least one, if there is any).  Returns the entries deleted.
 */
static int64
delete_dead(FlowWorker *w, int64 below, int64 budget)
{
	Datum		args[3] = {Int32GetDatum(w->def->id), Int64GetDatum(below),
	Int64GetDatum(budget)};
	CatalogPrivilege priv;
	int64		gone = 0;
	uint64		i;

	CatalogBecomeOwner(&priv);
	execute(w->state_compact, args, SPI_OK_DELETE_RETURNING);
	CatalogRestoreUser(&priv);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		gone += DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i],
											SPI_tuptable->tupdesc, 1, &isnull));
	}
	return gone;
}

/*
 * Stands for the id of the checkpoint being chosen, which the writing
 * process draws, in the account of the state log (sweep_from, dead_below)
 * until it is written (checkpoint_written).
 */
#define THIS_CHECKPOINT		(-1)

/* Keys chosen for a checkpoint (a StateScanFn's argument). */
typedef struct Chosen
{
	StateChunk **chunks;
	int			n;
} Chosen;

static void
choose_chunk(void *arg, StateChunk *chunk)
{
	Chosen	   *chosen = (Chosen *) arg;

	chosen->chunks[chosen->n++] = chunk;
}

/*
 * Choose what the next checkpoint writes (see CheckpointOrder): the dirty
 * keys, in key id order, and the state log's part.  The dirty keys are
 * appended to the log, or every key when `full` is asked for (then the
 * older segments go at once).  When the log has grown to more than twice
 * the keys in state, a compaction begins: a sweep over the keys that
 * appends, at each checkpoint, as many keys it has not written yet as the
 * checkpoint has dirty keys (and COMPACT_SLACK more).  Once it has been
 * everywhere, the segments older than its start are dead, and each
 * checkpoint deletes some of them, the oldest first, about four times the
 * entries it writes.  So a checkpoint costs what its dirty keys cost,
 * about twice at most, whatever the state holds; writing every key at
 * once and deleting the whole older log, as compaction did until
 * 2026-12-06, made one checkpoint in a hundred (10,000 keys changed among
 * 1,000,000) cost as much as the state.  The log stays under about four
 * times the state (twice, then what the sweep adds), and the restore
 * skips old entries by their key ids.
 *
 * The worker's account of the log is kept as if the checkpoint were
 * written (one that fails ends the worker), but for the entries it
 * deletes (checkpoint_written).  Returns the chosen chunks, in the
 * current memory context.
 */
static StateChunk **
checkpoint_choose(FlowWorker *w, bool full, CheckpointOrder *order)
{
	FlowState  *st = w->state;
	Chosen		chosen;
	int64		swept_from = 0; /* a sweep that ended: where it began */
	int			i;

	memset(order, 0, sizeof(CheckpointOrder));
	sort_dirty(st);
	chosen.chunks = MemoryContextAllocHuge(CurrentMemoryContext,
										   sizeof(StateChunk *) *
										   (2 * (Size) st->ndirty + COMPACT_SLACK + 1));
	chosen.n = 0;
	if (!full && w->sweep_from == 0 &&
		w->log_entries - w->dead_entries + st->ndirty >
		2 * (int64) StateKeys(st) + COMPACT_SLACK)
	{
		w->sweep_from = THIS_CHECKPOINT;
		w->sweep_pos = 0;
		w->sweep_entries = 0;
		w->sweep++;
	}
	for (i = 0; i < st->ndirty; i++)
	{
		StateChunk *chunk = StateGetChunk(st, st->dirty[i]);

		choose_chunk(&chosen, chunk);
		if (!full)
			chunk->swept = w->sweep;
	}
	order->nrows = chosen.n;
	if (full)
		w->sweep_from = 0;
	else if (w->sweep_from != 0 &&
			 sweep_state(w, choose_chunk, &chosen, (int64) st->ndirty + COMPACT_SLACK))
	{
		swept_from = w->sweep_from;
		w->sweep_from = 0;
	}
	order->nlog = chosen.n;

	w->log_entries += chosen.n;
	w->sweep_entries += chosen.n;
	if (full)
	{
		/* every older segment is dead, and goes at once */
		w->log_entries = chosen.n;
		w->dead_below = 0;
		w->dead_entries = 0;
	}
	else
	{
		if (swept_from != 0)
		{
			w->dead_below = swept_from;
			w->dead_entries = w->log_entries - w->sweep_entries;
		}
		order->dead_below = w->dead_below;
		order->dead_budget = 4 * (int64) chosen.n + 1;
	}
	order->lsn = w->processed_lsn;
	order->started = w->ckpt_started;
	order->state_keys = (int64) StateKeys(st);
	order->restored_keys_end = w->restored_keys_end;
	return chosen.chunks;
}

/*
 * The worker's account of the state log once the checkpoint of `order` is
 * written: the entries it deleted, and its id where THIS_CHECKPOINT
 * stood for it.
 */
static void
checkpoint_written(FlowWorker *w, CheckpointOrder *order)
{
	if (order->dead_below != 0)
	{
		w->log_entries -= order->gone;
		w->dead_entries -= order->gone;
		if (order->gone == 0 || w->dead_entries <= 0)
			w->dead_below = 0;
	}
	if (w->sweep_from == THIS_CHECKPOINT)
		w->sweep_from = order->id;
	if (w->dead_below == THIS_CHECKPOINT)
		w->dead_below = order->id;
}

/* A new checkpoint id, from flowpg.checkpoint_id_seq. */
static int64
next_checkpoint_id(FlowWorker *w)
{
	CatalogPrivilege priv;
	bool		isnull;
	int64		id;

	CatalogBecomeOwner(&priv);
	execute(w->checkpoint_next, NULL, SPI_OK_SELECT);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	CatalogRestoreUser(&priv);
	return id;
}

/* Insert the checkpoint's row and trim old ones. */
static void
record_checkpoint(FlowWorker *w, CheckpointOrder *order, int64 nkeys,
				  const char *kind)
{
	Datum		args[8];
	CatalogPrivilege priv;

	args[0] = Int32GetDatum(w->def->id);
	args[1] = LSNGetDatum(order->lsn);
	args[2] = TimestampTzGetDatum(order->started);
	args[3] = Int64GetDatum(nkeys);
	args[4] = CStringGetTextDatum(kind);
	args[5] = Int64GetDatum(order->id);
	args[6] = Int64GetDatum(order->bytes);
	args[7] = Int64GetDatum(order->state_keys);
	CatalogBecomeOwner(&priv);
	execute(w->checkpoint_insert, args, SPI_OK_INSERT);
	args[1] = Int64GetDatum((int64) flowpg_checkpoints_retained - 1);
	execute(w->checkpoint_trim, args, SPI_OK_DELETE);
	CatalogRestoreUser(&priv);
}

/*
 * Write the checkpoint `order` describes, of the keys in chunks[] (the
 * worker's own, or the writer's copies of them), in the current
 * transaction, which has SPI connected and a snapshot pushed: the result
 * rows, the state log's entries and deletions, the checkpoint's row.
 * Fills in the order's id, bytes and gone.  A rewrite has emptied the
 * result table; its log replaces every older entry.
 */
static void
checkpoint_run(FlowWorker *w, StateChunk **chunks, CheckpointOrder *order,
			   bool rewrite, const char *kind)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "flowpg checkpoint rows",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt;
	Segment		seg;
	int			from;
	int			i;

	for (from = 0; from < order->nrows; from += CHECKPOINT_CHUNK)
	{
		oldcxt = MemoryContextSwitchTo(cxt);
		write_rows(w, chunks + from, Min(CHECKPOINT_CHUNK, order->nrows - from),
				   rewrite, order->restored_keys_end);
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(cxt);
	}
	order->id = next_checkpoint_id(w);
	oldcxt = MemoryContextSwitchTo(cxt);
	segment_init(w, &seg, w->state_append, 2, Int32GetDatum(w->def->id),
				 Int64GetDatum(order->id));
	for (i = 0; i < order->nlog; i++)
	{
		if ((i & 1023) == 0)
			CHECK_FOR_INTERRUPTS();
		segment_add(&seg, chunks[i]);
	}
	segment_flush(&seg);
	MemoryContextSwitchTo(oldcxt);
	order->bytes = seg.bytes;
	if (rewrite)
		order->gone = delete_dead(w, order->id, PG_INT64_MAX);
	else if (order->dead_below != 0)
		order->gone = delete_dead(w, order->dead_below == THIS_CHECKPOINT ?
								  order->id : order->dead_below,
								  order->dead_budget);
	record_checkpoint(w, order, seg.written, kind);
	MemoryContextDelete(cxt);
}

/*
 * Store a checkpoint of the worker's state at processed_lsn (the batch is
 * merged) in the current transaction, which has SPI connected and a
 * snapshot pushed.  kind is "periodic", "forced", "savepoint" or
 * "rewrite"; a rewrite replaces the whole result table and writes every
 * key (after flowpg.restore, or when a restored dump is rebuilt).  The
 * dirty keys stay marked until CheckpointDone.  Returns the id.
 */
int64
CheckpointStore(FlowWorker *w, const char *kind)
{
	FlowState  *st = w->state;
	bool		rewrite = strcmp(kind, "rewrite") == 0;
	MemoryContext cxt = AllocSetContextCreate(w->cxt, "flowpg checkpoint",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt;
	CheckpointOrder order;
	StateChunk **chunks;

	w->ckpt_started = GetCurrentTimestamp();
	if (rewrite)
		StateMarkAllDirty(st);
	oldcxt = MemoryContextSwitchTo(cxt);
	chunks = checkpoint_choose(w, rewrite, &order);
	if (rewrite)
	{
		CatalogPrivilege priv;
		Datum		arg = Int32GetDatum(w->def->id);

		execute(w->result_delete, NULL, SPI_OK_DELETE);
		if (w->plan->nkeys == 0 && order.nrows == 0)
			write_initial_row(w);
		CatalogBecomeOwner(&priv);
		execute(w->rewrite_done, &arg, SPI_OK_UPDATE);
		CatalogRestoreUser(&priv);
	}
	checkpoint_run(w, chunks, &order, rewrite, kind);
	MemoryContextSwitchTo(oldcxt);
	checkpoint_written(w, &order);
	MemoryContextDelete(cxt);
	return order.id;
}

/*
 * A checkpoint of source position `lsn`, taken since `started`, is
 * committed (its commit record ends at commit_end): let the slot release
 * the WAL before it once the commit is durable, and publish it.  A
 * periodic checkpoint (lazy) commits without waiting for its WAL to be
 * flushed: the WAL writer flushes it, on another core, within
 * wal_writer_delay, and the worker confirms it on the slot after that
 * (CheckpointConfirm).  Until then a crash may take the checkpoint back
 * (the rows it wrote with it), never the slot's position past it, so the
 * worker restores the one before and decodes again what came after.  The
 * flush was 2 to 7 ms of a 10,000-key checkpoint's 25 to 45 here, spent
 * waiting in the worker while it could decode.  Checkpoints someone waits
 * for (forced, savepoints, rewrites) are flushed before they are
 * published, and flowpg.wait flushes what it saw.  worker_ms is the time
 * the worker itself spent on it (all of it, unless the writer wrote it).
 */
static void
checkpoint_published(FlowWorker *w, int64 id, XLogRecPtr lsn,
					 XLogRecPtr commit_end, bool lazy, TimestampTz started,
					 double worker_ms)
{
	StreamCtl  *ctl = w->ctl;
	double		ms;

	if (lazy)
	{
		/* confirmed by the worker's next round at the earliest */
		w->unconfirmed_commit = commit_end;
		w->unconfirmed_lsn = lsn;
	}
	else
	{
		/* the commit must be durable before the slot lets go of the WAL */
		XLogFlush(commit_end);
		w->unconfirmed_commit = InvalidXLogRecPtr;
		DecodeConfirm(w, lsn);
	}

	/*
	 * Report the rows written to the statistics (at most once a second), as
	 * a backend does between statements: autovacuum decides from them when
	 * the result table and flowpg's own tables need vacuuming.
	 */
	pgstat_report_stat(false);
	w->last_checkpoint = GetCurrentTimestamp();
	ms = (double) (w->last_checkpoint - started) / 1000.0;
	if (worker_ms < 0)
		worker_ms = ms;

	SpinLockAcquire(&ctl->mutex);
	ctl->checkpoint_lsn = lsn;
	ctl->checkpoint_id = id;
	ctl->last_checkpoint_at = w->last_checkpoint;
	ctl->checkpoint_ms = ms;
	ctl->checkpoints++;
	ctl->checkpoint_total_ms += worker_ms;
	if (lsn > ctl->result_lsn)
		ctl->result_lsn = lsn;
	ctl->failures = 0;
	ctl->ckpt_failures = 0;
	/* past the transaction that made a row uncomputable: suspect no more */
	if (lsn > ctl->rows_failed_at)
	{
		ctl->rows_failed_at = InvalidXLogRecPtr;
		w->suspect = false;
	}
	SpinLockRelease(&ctl->mutex);
	w->postponed_since = 0;
	w->verify_retry_at = 0;
	ConditionVariableBroadcast(&ctl->cv);
}

/* After the transaction of CheckpointStore committed (see checkpoint_published). */
void
CheckpointDone(FlowWorker *w, int64 id, bool lazy)
{
	StateClearDirty(w->state);
	checkpoint_published(w, id, w->processed_lsn, XactLastCommitEnd, lazy,
						 w->ckpt_started, -1);
}

/*
 * Confirm on the slot the last checkpoint committed lazily (see
 * checkpoint_published) once its commit is flushed; with force, flush it
 * first.  Nothing may be confirmed past it before that, not even a
 * position with no change since (maybe_checkpoint in worker.c): the slot
 * would then lie beyond the checkpoint a crash could restore.  The time
 * this takes is the checkpoint's, and counts in checkpoint_total_ms.
 */
void
CheckpointConfirm(FlowWorker *w, bool force)
{
	TimestampTz start;

	if (XLogRecPtrIsInvalid(w->unconfirmed_commit))
		return;
	if (GetFlushRecPtr(NULL) < w->unconfirmed_commit && !force)
		return;
	start = GetCurrentTimestamp();
	XLogFlush(w->unconfirmed_commit);	/* nothing to do if already flushed */
	w->unconfirmed_commit = InvalidXLogRecPtr;
	DecodeConfirm(w, w->unconfirmed_lsn);
	SpinLockAcquire(&w->ctl->mutex);
	w->ctl->checkpoint_total_ms += (double) (GetCurrentTimestamp() - start) / 1000.0;
	SpinLockRelease(&w->ctl->mutex);
}

/*
 * Make the last checkpoint committed lazily durable for a caller that
 * confirms a later position itself: flush its commit and forget it.
 * Confirming it first would save the slot's file twice in a row.
 */
void
CheckpointFlushUnconfirmed(FlowWorker *w)
{
	if (XLogRecPtrIsInvalid(w->unconfirmed_commit))
		return;
	XLogFlush(w->unconfirmed_commit);
	w->unconfirmed_commit = InvalidXLogRecPtr;
}

/* The replication origin of the worker's session, while a checkpoint runs */
static RepOriginId origin_before_checkpoint = InvalidRepOriginId;

/*
 * The replication origin a checkpoint's changes carry: the worker's, so
 * that its decoding drops them unread, unless the result table has
 * triggers.  A trigger may write rows into the stream's own source, in
 * the checkpoint's transaction, which the stream must count: the stream
 * then decodes its checkpoints' changes too, and ignores the rest of them
 * (rows of its result table and of flowpg's tables).
 */
static RepOriginId
checkpoint_origin(FlowWorker *w)
{
	return w->result_triggers ? InvalidRepOriginId : w->origin;
}

/*
 * Begin a checkpoint's transaction, as the worker or the writer: lazy
 * ones commit without waiting for their flush; the owner must still be
 * allowed to read the source; the result table's definition is current.
 * SPI is connected and a snapshot pushed.  In the worker, whose session
 * has its origin, the transaction, commit included, carries
 * checkpoint_origin's (a commit with the worker's origin would drop the
 * whole transaction from its decoding).
 */
static void
checkpoint_begin(FlowWorker *w, bool lazy)
{
	w->ckpt_covering = w->processed_lsn;
	FlowpgStartTransaction();
	WorkerCheckCompiled(w);
	origin_before_checkpoint = replorigin_session_origin;
	if (lazy)
		(void) set_config_option("synchronous_commit", "off", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	/* the owner may have lost SELECT on the source: stop reading it then */
	CompileCheckPermissions(w->fq);
	SPI_connect();
	if (w->result_changed && identity_wanted(w))
		lock_for_identity(w);
	/* the lock holds off renames, and brings in invalidations before it */
	LockRelationOid(w->def->result, RowExclusiveLock);
	while (w->result_changed)
		prepare_result(w, false);
	if (replorigin_session_origin != InvalidRepOriginId)
		replorigin_session_origin = checkpoint_origin(w);
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
checkpoint_commit(FlowWorker *w)
{
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	replorigin_session_origin = origin_before_checkpoint;
	w->ckpt_covering = InvalidXLogRecPtr;
}

/*
 * Before a checkpoint is taken: one checkpoint at a time waits for its
 * flush.  Before another lazy one, confirm it (were it only replaced,
 * checkpoints taken faster than the WAL writer flushes would never be
 * confirmed); one that is flushed at once confirms its own later
 * position.
 */
static void
checkpoint_settle_unconfirmed(FlowWorker *w, bool lazy)
{
	if (lazy)
		CheckpointConfirm(w, true);
	else
		CheckpointFlushUnconfirmed(w);
}

/* Take a checkpoint in a transaction of its own (see CheckpointStore). */
int64
CheckpointWrite(FlowWorker *w, const char *kind)
{
	bool		lazy = strcmp(kind, "periodic") == 0;
	int64		id;

	/* one writes at a time: the writer's first */
	(void) CheckpointCollect(w, true);
	checkpoint_settle_unconfirmed(w, lazy);
	checkpoint_begin(w, lazy);
	id = CheckpointStore(w, kind);
	checkpoint_commit(w);
	CheckpointDone(w, id, lazy);
	return id;
}

/* The bytes of a chunk in use: its header, key and state image. */
static inline Size
chunk_used(StateChunk *chunk)
{
	return offsetof(StateChunk, data) + MAXALIGN(chunk->key_len) + chunk->state_len;
}

/* A job's copies of chunks, one after the other, each MAXALIGNed. */
static inline StateChunk *
job_first(CheckpointJob *job)
{
	return (StateChunk *) ((char *) job + CHECKPOINT_JOB_CHUNKS);
}

static inline StateChunk *
job_next(StateChunk *copy)
{
	return (StateChunk *) ((char *) copy + MAXALIGN(chunk_used(copy)));
}

/* An in-place job's directory slots. */
static inline uint32 *
job_slots(CheckpointJob *job)
{
	return (uint32 *) job_first(job);
}

/*
 * Take a periodic or forced checkpoint: hand it to the stream's
 * checkpoint writer (writer.c) if it has one ready, else write it here.
 * Handing it off costs the worker the choice of its keys and a copy of
 * their chunks (about 1 ms for 10,000 keys), and it goes on decoding while
 * the writer writes them on the other core; the worker collects it at its
 * next rounds (CheckpointCollect), and hands off the next one after that.
 * A forced checkpoint is committed synchronously, and published once
 * collected.  One of more than HANDOFF_MAX_KEYS keys is written from the
 * chunks themselves, and the worker waits for it.  The caller has
 * collected the one before.
 */
void
CheckpointHandOff(FlowWorker *w, const char *kind)
{
	bool		lazy = strcmp(kind, "periodic") == 0;
	FlowState  *st = w->state;
	bool		in_place = st->ndirty > HANDOFF_MAX_KEYS;
	MemoryContext cxt;
	MemoryContext oldcxt;
	CheckpointOrder order;
	StateChunk **chunks;
	CheckpointJob *job;
	Size		size;
	StateChunk *copy;
	int			i;

	Assert(!w->job_inflight);
	if (!WriterReady(w))
	{
		CheckpointWrite(w, kind);
		return;
	}
	checkpoint_settle_unconfirmed(w, lazy);
	w->ckpt_started = GetCurrentTimestamp();
	cxt = AllocSetContextCreate(w->cxt, "flowpg checkpoint",
								ALLOCSET_DEFAULT_SIZES);
	oldcxt = MemoryContextSwitchTo(cxt);
	chunks = checkpoint_choose(w, false, &order);
	size = CHECKPOINT_JOB_CHUNKS;
	if (in_place)
		size += sizeof(uint32) * order.nlog;
	else
		for (i = 0; i < order.nlog; i++)
			size += MAXALIGN(chunk_used(chunks[i]));
	job = WriterJobBuffer(w, size);
	if (job == NULL)
	{
		/* no room in the shared area for the copy: write it here */
		if (!w->job_no_room)
			ereport(LOG,
					(errmsg("stream \"%s\" writes its checkpoints itself: flowpg.state_memory has no room for its checkpoint writer's copy of %d keys (%zu bytes)",
							FlowpgLabel(w->def->name), order.nlog, size),
					 errhint("Raise flowpg.state_memory; with its checkpoints written by its writer, the worker goes on decoding while they are written.")));
		w->job_no_room = true;
		checkpoint_begin(w, lazy);
		checkpoint_run(w, chunks, &order, false, kind);
		checkpoint_commit(w);
		MemoryContextSwitchTo(oldcxt);
		checkpoint_written(w, &order);
		MemoryContextDelete(cxt);
		CheckpointDone(w, order.id, lazy);
		return;
	}
	w->job_no_room = false;
	job->order = order;
	job->lazy = lazy;
	job->in_place = in_place;
	strlcpy(job->kind, kind, sizeof(job->kind));
	job->commit_end = InvalidXLogRecPtr;
	job->failed = false;
	job->recompile = false;
	job->error[0] = '\0';
	if (in_place)
	{
		uint32	   *slots = job_slots(job);

		for (i = 0; i < order.nlog; i++)
			slots[i] = chunks[i]->slot;
	}
	else
	{
		copy = job_first(job);
		for (i = 0; i < order.nlog; i++)
		{
			Size		len = chunk_used(chunks[i]);

			memcpy(copy, chunks[i], len);
			copy->capacity = len - offsetof(StateChunk, data);
			copy = job_next(copy);
		}
	}
	StateClearDirty(st);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(cxt);
	WriterPost(w);
	w->job_inflight = true;
	w->job_worker_ms = (double) (GetCurrentTimestamp() - w->ckpt_started) / 1000.0;
	/* the writer writes from the chunks: leave them be until it is done */
	if (in_place)
		(void) CheckpointCollect(w, true);
}

/*
 * Collect the checkpoint handed to the writer, if it is written: give its
 * keys' chunks the TIDs of their rows, account for the state log's
 * entries it deleted, and publish it (lazily committed).  With wait,
 * wait for it.  Returns whether one is still being written.  A writer
 * that failed, or exited, ends the worker with an error: the next one
 * starts from the last checkpoint committed.
 */
bool
CheckpointCollect(FlowWorker *w, bool wait)
{
	FlowState  *st = w->state;
	CheckpointJob *job;
	TimestampTz start;
	double		worker_ms;
	StateChunk *copy;
	int			i;

	if (!w->job_inflight)
		return false;
	if (!WriterJobDone(w, wait))
		return true;
	start = GetCurrentTimestamp();
	w->job_inflight = false;
	job = WriterJob(w);
	/* the writer's error is the worker's, as if it had written it */
	if (job->failed)
	{
		w->ckpt_covering = job->order.lsn;
		/* the worker compiled the same: it starts again too (record_error) */
		w->recompile = job->recompile;
		ereport(ERROR,
				(errcode(job->sqlerrcode),
				 errmsg_internal("%s", job->error),
				 job->detail[0] ? errdetail_internal("%s", job->detail) : 0,
				 job->hint[0] ? errhint("%s", job->hint) : 0,
				 errcontext("checkpoint written by the stream's checkpoint writer")));
	}
	/* in place, the writer has given the chunks their TIDs */
	if (!job->in_place)
	{
		LWLockAcquire(&w->ctl->state_lock, LW_EXCLUSIVE);
		copy = job_first(job);
		for (i = 0; i < job->order.nrows; i++)
		{
			StateChunk *chunk = StateGetSlot(st, copy->slot);

			if (chunk->key_id == copy->key_id)
				chunk->tid = copy->tid;
			copy = job_next(copy);
		}
		LWLockRelease(&w->ctl->state_lock);
	}
	/* the stream goes by its result table's name (see prepare_result) */
	follow_result_name(w, job->result_name);
	checkpoint_written(w, &job->order);
	/* the worker's time: handing it off and collecting it, or, in place, all */
	if (job->in_place)
		worker_ms = (double) (GetCurrentTimestamp() - w->ckpt_started) / 1000.0;
	else
		worker_ms = w->job_worker_ms +
			(double) (GetCurrentTimestamp() - start) / 1000.0;
	checkpoint_published(w, job->order.id, job->order.lsn, job->commit_end,
						 job->lazy, job->order.started, worker_ms);
	return false;
}

/*
 * The writer's part (writer.c): write the checkpoint of `job`, in a
 * transaction of its own (a periodic one committed without waiting for
 * its flush), and fill in its results.  The TIDs of the keys' new rows go
 * into the job's copies, or, in place, into the chunks themselves.
 */
void
CheckpointRunJob(FlowWorker *w, CheckpointJob *job)
{
	StateChunk **chunks = palloc(sizeof(StateChunk *) * (job->order.nlog + 1));
	StateChunk *copy = job_first(job);
	int			i;

	if (job->in_place)
	{
		/* the worker waits: its directory and chunks stay as they are */
		uint32	   *slots = job_slots(job);
		FlowState  *st;

		LWLockAcquire(&w->ctl->state_lock, LW_SHARED);
		st = StateAttach(w->ctl);
		if (st == NULL)
			elog(ERROR, "stream \"%s\" has no state in shared memory", FlowpgLabel(w->def->name));
		for (i = 0; i < job->order.nlog; i++)
			chunks[i] = StateGetSlot(st, slots[i]);
		StateDetach(st);
		LWLockRelease(&w->ctl->state_lock);
	}
	else
		for (i = 0; i < job->order.nlog; i++)
		{
			chunks[i] = copy;
			copy = job_next(copy);
		}
	checkpoint_begin(w, job->lazy);
	/* the worker's origin on the changes, not the commit (see writer.c) */
	replorigin_session_origin = checkpoint_origin(w);
	PG_TRY();
	{
		checkpoint_run(w, chunks, &job->order, false, job->kind);
	}
	PG_FINALLY();
	{
		replorigin_session_origin = InvalidRepOriginId;
	}
	PG_END_TRY();
	checkpoint_commit(w);
	job->commit_end = XactLastCommitEnd;
	strlcpy(job->result_name, w->def->name, sizeof(job->result_name));
	pgstat_report_stat(false);
	pfree(chunks);
}

/*
 * Take a savepoint named `name`: a checkpoint, then a copy of the stream's
 * slot (which keeps the WAL from the checkpoint's position on), then a
 * full copy of the state under the savepoint's row.  The savepoint's id is
 * its checkpoint's.  A crash before the last step leaves a slot without a
 * savepoint row; the next worker drops it (worker.c).  Returns 0 when no
 * replication slot was free for the copy (the checkpoint stays, as any).
 */
int64
CheckpointSavepoint(FlowWorker *w, const char *name)
{
	int64		id = CheckpointWrite(w, "savepoint");
	XLogRecPtr	lsn = w->processed_lsn;
	char		sp_slot[NAMEDATALEN];
	MemoryContext cxt = AllocSetContextCreate(w->cxt, "flowpg savepoint",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt;
	CatalogPrivilege priv;
	Segment		seg;
	Datum		args[6];

	FlowpgSavepointSlotName(sp_slot, MyDatabaseId, w->def->id, id);
	FlowpgStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!DecodeCopyOwnSlot(w, sp_slot))
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextDelete(cxt);
		return 0;
	}
	PopActiveSnapshot();
	CommitTransactionCommand();

	FlowpgStartTransaction();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	oldcxt = MemoryContextSwitchTo(cxt);
	segment_init(w, &seg, w->savepoint_state_append, 1, Int64GetDatum(id), (Datum) 0);
	StateScan(w->state, segment_add, &seg);
	segment_flush(&seg);
	args[0] = Int64GetDatum(id);
	args[1] = Int32GetDatum(w->def->id);
	args[2] = CStringGetTextDatum(name);
	args[3] = LSNGetDatum(lsn);
	args[4] = Int64GetDatum(seg.written);
	args[5] = Int64GetDatum(seg.bytes);
	CatalogBecomeOwner(&priv);
	execute(w->savepoint_insert, args, SPI_OK_INSERT);
	CatalogRestoreUser(&priv);
	MemoryContextSwitchTo(oldcxt);
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	MemoryContextDelete(cxt);
	return id;
}

static pg_attribute_noreturn() void
restore_corrupted(FlowWorker *w)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("checkpointed state of stream \"%s\" is corrupted", FlowpgLabel(w->def->name)),
			 errhint("Restore the stream from a savepoint with flowpg.restore, or rebuild it from its source table with flowpg.rebuild_stream.")));
}

/* How many entries a restore reads ahead of the one it inserts. */
#define RESTORE_AHEAD 16

typedef struct RestoreEntry
{
	int64		key_id;
	MinimalTuple key;
	const char *image;
	uint32		image_len;
	uint32		hash;
	ItemPointerData tid;		/* invalid if the entry has none */
} RestoreEntry;

/*
 * The key ids a restore has put in, one bit each: key ids are dense (given
 * out one after another), so a million keys take 125 kB, and telling an
 * older entry of a key from a new key costs a bit test, where the key
 * index would cost a hash and a probe of its bucket.
 */
typedef struct RestoreSeen
{
	uint64	   *words;
	Size		nwords;
} RestoreSeen;

/* Mark key_id seen; returns whether it was already. */
static bool
restore_seen(FlowWorker *w, RestoreSeen *seen, int64 key_id)
{
	Size		word = (uint64) key_id / 64;
	uint64		bit = UINT64CONST(1) << ((uint64) key_id % 64);
	bool		was;

	/* a key id beyond any a bitmap can hold is not one the worker gave */
	if (key_id <= 0 || key_id / 8 >= MaxAllocSize)
		restore_corrupted(w);
	if (word >= seen->nwords)
	{
		Size		n = Max(seen->nwords * 2, 1024);

		while (n <= word)
			n *= 2;
		n = Min(n, MaxAllocSize / sizeof(uint64));
		seen->words = repalloc(seen->words, n * sizeof(uint64));
		memset(seen->words + seen->nwords, 0, (n - seen->nwords) * sizeof(uint64));
		seen->nwords = n;
	}
	was = (seen->words[word] & bit) != 0;
	seen->words[word] |= bit;
	return was;
}

/*
 * Replay one segment of flowpg.state into the shared state: the entries
 * of keys not seen yet (the log is read newest first).
 */
static void
restore_segment(FlowWorker *w, bytea *segment, RestoreSeen *seen)
{
	const char *p = VARDATA_ANY(segment);
	const char *end = p + VARSIZE_ANY_EXHDR(segment);
	RestoreEntry ahead[RESTORE_AHEAD];

	while (p < end)
	{
		int			n = 0;
		int			i;

		/* read a few entries, their keys' buckets of the index prefetched */
		while (n < RESTORE_AHEAD && p < end)
		{
			RestoreEntry *e = &ahead[n];
			uint32		key_len;

			if (end - p < ENTRY_HEADER)
				restore_corrupted(w);
			memcpy(&e->key_id, p, sizeof(e->key_id));
			memcpy(&key_len, p + 8, sizeof(key_len));
			memcpy(&e->image_len, p + 12, sizeof(e->image_len));
			p += ENTRY_HEADER;
			ItemPointerSetInvalid(&e->tid);
			if (key_len & ENTRY_TID)
			{
				if (end - p < sizeof(ItemPointerData))
					restore_corrupted(w);
				memcpy(&e->tid, p, sizeof(ItemPointerData));
				p += sizeof(ItemPointerData);
				key_len &= ~ENTRY_TID;
			}
			if (key_len < SizeofMinimalTupleHeader ||
				key_len > end - p || e->image_len > end - p - key_len)
				restore_corrupted(w);
			w->log_entries++;
			if (!restore_seen(w, seen, e->key_id))
			{
				e->key = palloc(key_len);	/* aligned, unlike the segment */
				memcpy(e->key, p, key_len);
				e->image = p + key_len;
				e->hash = BatchPrefetchKey(w->batch, e->key);
				n++;
			}
			p += key_len + e->image_len;
		}
		for (i = 0; i < n; i++)
		{
			RestoreEntry *e = &ahead[i];

			/* a key the log holds under two ids is not one the worker wrote */
			if (!BatchRestoreKey(w->batch, w->state, e->key_id, e->key,
								 e->hash, e->image, e->image_len, &e->tid))
				restore_corrupted(w);
			pfree(e->key);
		}
	}
}

/*
 * Replay flowpg.state into the (empty) state, newest segment first: a
 * checkpoint writes a key at most once, so the first entry of a key read
 * is its latest, and the older ones are skipped by their key ids, without
 * hashing the key or touching its chunk.  Oldest first, every older entry
 * was put in and replaced again: on a dev cluster, a log of 1.9 M entries
 * for 1,000,000 keys took 1.0 to 1.6 s to restore, 0.75 to 0.88 s now
 * (0.65 s for a log of the keys once each).
 */
static void
restore_keys(FlowWorker *w, Datum stream_id, int64 state_keys)
{
	Oid			argtypes[1] = {INT4OID};
	Portal		portal;
	RestoreSeen seen;

	w->log_entries = 0;
	seen.nwords = 1024;
	seen.words = palloc0(seen.nwords * sizeof(uint64));
	/*
	 * Make room for the keys the checkpoint's row says its state holds,
	 * taking as many bytes each as the log's entries do on average
	 * (length() reads the size of a compressed segment without
	 * decompressing it).
	 */
	if (state_keys > 0 &&
		SPI_execute_with_args("SELECT pg_catalog.sum(keys), "
							  "pg_catalog.sum(pg_catalog.length(data)) FROM flowpg.state "
							  "WHERE stream_id OPERATOR(pg_catalog.=) $1",
							  1, argtypes, &stream_id, NULL, true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
	{
		bool		keys_null;
		bool		bytes_null;
		Datum		keys = SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &keys_null);
		Datum		bytes = SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 2, &bytes_null);

		BatchReserveKeys(w->batch, state_keys);
		if (!keys_null && !bytes_null && DatumGetInt64(keys) > 0 &&
			DatumGetInt64(bytes) >= DatumGetInt64(keys) * ENTRY_HEADER)
			StateReserve(w->state, state_keys,
						 (uint64) ((double) (DatumGetInt64(bytes) -
											 DatumGetInt64(keys) * ENTRY_HEADER) /
								   DatumGetInt64(keys) * state_keys));
	}
	portal = SPI_cursor_open_with_args(NULL,
									   "SELECT data FROM flowpg.state "
									   "WHERE stream_id OPERATOR(pg_catalog.=) $1 "
									   "ORDER BY checkpoint_id DESC, seq DESC",
									   1, argtypes, &stream_id, NULL, true, 0);
	for (;;)
	{
		uint64		i;

		SPI_cursor_fetch(portal, true, 8);
		if (SPI_processed == 0)
			break;
		for (i = 0; i < SPI_processed; i++)
		{
			bool		isnull;
			Datum		data = SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull);
			bytea	   *segment = DatumGetByteaPP(data);

			restore_segment(w, segment, &seen);
			if ((Pointer) segment != DatumGetPointer(data))
				pfree(segment);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	pfree(seen.words);
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
	instr_time	start;
	instr_time	elapsed;
	int64		state_keys = 0;

	CatalogRepairCheckpointIds(w->def->id);
	CatalogBecomeOwner(&priv);
	rc = SPI_execute_with_args("SELECT id, lsn, state_keys FROM flowpg.checkpoint "
							   "WHERE stream_id OPERATOR(pg_catalog.=) $1 "
							   "ORDER BY id DESC LIMIT 1",
							   1, argtypes, &stream_id, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read checkpoints: %s", SPI_result_code_string(rc));
	w->restored_lsn = InvalidXLogRecPtr;
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		keys;
		int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 1, &isnull));

		w->restored_lsn = DatumGetLSN(SPI_getbinval(SPI_tuptable->vals[0],
													SPI_tuptable->tupdesc, 2, &isnull));
		keys = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3, &isnull);
		if (!isnull)
			state_keys = DatumGetInt64(keys);
		SpinLockAcquire(&w->ctl->mutex);
		w->ctl->checkpoint_id = id;
		SpinLockRelease(&w->ctl->mutex);
	}
	INSTR_TIME_SET_CURRENT(start);
	restore_keys(w, stream_id, state_keys);
	INSTR_TIME_SET_CURRENT(elapsed);
	INSTR_TIME_SUBTRACT(elapsed, start);
	ereport(DEBUG1,
			(errmsg_internal("flowpg: stream \"%s\" restored %llu keys from %llu entries of its state log in %.1f ms",
							 FlowpgLabel(w->def->name), (unsigned long long) StateKeys(w->state),
							 (unsigned long long) w->log_entries,
							 INSTR_TIME_GET_MILLISEC(elapsed))));
	w->restored_keys_end = w->state->next_key_id;
	CatalogRestoreUser(&priv);
}

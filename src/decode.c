/*-------------------------------------------------------------------------
 *
 * decode.c
 *	  A stream's replication slot, flowpg's output plugin, and the logical
 *	  decoding loop that feeds the operators.
 *
 * Each stream owns one logical replication slot whose output plugin is
 * this very library.  The worker runs the decoding loop itself, as
 * pg_logical_slot_get_changes does internally, and the plugin's change
 * callback hands each decoded source row straight to the operators
 * (operators.c): no text encoding, no walsender.  Decoding delivers
 * committed transactions only, whole and in commit order, and can replay
 * them from the slot after any failure; that is what exactly-once rests on.
 *
 * Rules this file keeps (see DESIGN.md's known traps):
 *	- The callbacks run only in flowpg workers, and in create_stream while
 *	  it creates the slot (flowpg_decoding_allowed); anywhere else, e.g.
 *	  pg_logical_slot_get_changes on a slot someone made with this plugin,
 *	  they raise an error before reading anything.
 *	- The decoding context is created inside a transaction, so the worker
 *	  is not flagged PROC_IN_LOGICAL_DECODING.
 *	- Callbacks run under a historic snapshot inside a transaction the
 *	  reorder buffer aborts: they only compute into worker-local memory;
 *	  everything durable happens in the main loop (checkpoint.c).  The
 *	  stream's own expressions and aggregates see the catalog as it is,
 *	  though (add_row).
 *	- Every batch of reading is bounded by the WAL flush position, and the
 *	  page reader waits for WAL on the worker's latch, so that the worker
 *	  exits when the postmaster dies.
 *	- The worker's own transactions carry its replication origin, and so
 *	  do the changes its checkpoint writer makes (writer.c): they are
 *	  filtered out before they reach the reorder buffer.
 *	- A decoded row is read with the source's columns as they were when it
 *	  was written (the relation decoding passes, from the historic
 *	  catalog), never with the worker's own idea of them: a table rewrite
 *	  can change the row layout.  So the relcache entry of the source that
 *	  the worker's own transactions may have built is dropped before
 *	  decoding resumes (see own_xact_since_decoding).
 *	- For a partitioned source, which tables are its partitions, and how
 *	  their rows map onto its columns, is read from the historic catalog
 *	  too: a row counts if its table was a partition of the source when
 *	  the row was written (part_lookup).
 *	- No stream_* callbacks and no two-phase: only committed transactions.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "access/tupconvert.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xact.h"
#include "access/xlogutils.h"
#include "catalog/partition.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/standby.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "replication/slot.h"
#include "replication/snapbuild.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"

#include "decode.h"

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

/* The worker whose operators the callbacks feed; NULL elsewhere. */
static FlowWorker *decode_worker = NULL;

/*
 * Whether the operators read source rows with the source's descriptor as
 * of the change being decoded (see PlanSetSourceDesc).  Cleared at the
 * start and whenever decoding invalidates the source's relcache entry,
 * which it does as it passes a transaction that changed the table.
 */
static bool source_desc_current = false;

/*
 * A partitioned source: the tables whose changes decoding passes, each
 * with whether it is a partition of the source (at any level) as of the
 * change being decoded, and how to read its rows as the source's.  A
 * partition created with PARTITION OF lays out its rows as the source
 * does; one attached, or with dropped or added columns, may not, and its
 * rows are converted to the source's layout by column name.  The whole
 * cache is dropped when decoding invalidates the source or a table in it
 * (ATTACH and DETACH PARTITION invalidate both tables).
 */
typedef struct PartEntry
{
	Oid			relid;			/* hash key */
	bool		member;			/* a partition of the source */
	TupleConversionMap *map;	/* its rows to the source's layout, or NULL */
} PartEntry;

static HTAB *parts = NULL;
static MemoryContext parts_cxt = NULL;
static MemoryContext parts_tuple_cxt = NULL;
static TupleDesc parts_sourcedesc = NULL;	/* the source's, in parts_cxt */
static bool parts_valid = false;

/* Relcache invalidations seen, and whether one was of every entry (add_row). */
static uint64 relcache_invals = 0;
static bool relcache_reset = false;

static void
source_relcache_cb(Datum arg, Oid relid)
{
	relcache_invals++;
	if (relid == InvalidOid)
		relcache_reset = true;
	if (decode_worker == NULL)
		return;
	if (relid == InvalidOid || relid == decode_worker->plan->fq->source)
		source_desc_current = parts_valid = false;
	else if (parts_valid && hash_search(parts, &relid, HASH_FIND, NULL) != NULL)
		parts_valid = false;
}

/*
 * The entry of a table whose change decoding passes, for a partitioned
 * source.  Catalog lookups here may run invalidations, which only mark
 * the cache invalid: it is rebuilt at the next call.
 */
static PartEntry *
part_lookup(FlowWorker *w, Relation relation)
{
	Oid			relid = RelationGetRelid(relation);
	Oid			source = w->plan->fq->source;
	PartEntry  *entry;
	bool		member;
	TupleConversionMap *map = NULL;
	MemoryContext oldcxt;

	if (!parts_valid)
	{
		HASHCTL		ctl;

		if (parts_cxt == NULL)
		{
			parts_cxt = AllocSetContextCreate(TopMemoryContext, "flowpg partitions",
											  ALLOCSET_SMALL_SIZES);
			parts_tuple_cxt = AllocSetContextCreate(TopMemoryContext,
													"flowpg partition rows",
													ALLOCSET_DEFAULT_SIZES);
		}
		MemoryContextReset(parts_cxt);
		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(PartEntry);
		ctl.hcxt = parts_cxt;
		parts = hash_create("flowpg partitions", 16, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		parts_sourcedesc = NULL;
		source_desc_current = false;
		parts_valid = true;
	}
	entry = hash_search(parts, &relid, HASH_FIND, NULL);
	if (entry != NULL)
		return entry;

	oldcxt = MemoryContextSwitchTo(parts_cxt);
	member = relation->rd_rel->relispartition &&
		list_member_oid(get_partition_ancestors(relid), source);
	if (member && parts_sourcedesc == NULL)
	{
		Relation	rel = RelationIdGetRelation(source);

		if (!RelationIsValid(rel))
			elog(ERROR, "could not open source relation with OID %u", source);
		parts_sourcedesc = CreateTupleDescCopyConstr(RelationGetDescr(rel));
		RelationClose(rel);
	}
	if (member)
		map = convert_tuples_by_name(CreateTupleDescCopyConstr(RelationGetDescr(relation)),
									 parts_sourcedesc);
	MemoryContextSwitchTo(oldcxt);
	if (!parts_valid)
		return part_lookup(w, relation);	/* invalidated meanwhile */
	entry = hash_search(parts, &relid, HASH_ENTER, NULL);
	entry->member = member;
	entry->map = map;
	return entry;
}

/*
 * The worker's catalog caches serve two masters: its own transactions
 * (checkpoints, at start the compilation of the stream), which see the
 * catalog as it is, and decoding, which sees it as it was when the source
 * row was written.  pg_logical_slot_get_changes invalidates every cache
 * around each call.  A worker decodes every few milliseconds, and starts
 * a transaction of its own far less often (merges into the state, which
 * read no catalog, aside): so as decoding resumes after one, it drops
 * only what decoding must not take from it, the source table's relcache
 * entry, whose descriptor lays out the decoded rows; and before one, if
 * it decoded since, it drops every cache (DecodeBeforeOwnTransaction).
 * Decoding builds the relcache entry of every table whose rows it
 * decodes, other streams' writes to flowpg's own tables included, from
 * the catalog as it was: a worker behind a VACUUM FULL of flowpg.state
 * then wrote its next checkpoint into the file VACUUM FULL had dropped,
 * with index entries in the new index pointing at nothing there, and
 * every other stream of the database failed for good decoding it ("could
 * not map filenode").
 */
static bool xacts_ignored = false;
static bool own_xact_since_decoding = true;
static bool decoded_since_own_xact = false;

/*
 * At the start of a transaction of the process's own (FlowpgStartTransaction):
 * drop the cache entries decoding built with the historic catalog since
 * the last one, as pg_logical_slot_get_changes does after decoding.
 * Merges (DecodeIgnoreXacts) read no catalog: they keep them.
 */
void
DecodeBeforeOwnTransaction(void)
{
	if (!decoded_since_own_xact || xacts_ignored)
		return;
	InvalidateSystemCaches();
	decoded_since_own_xact = false;
}

static void
decode_xact_cb(XactEvent event, void *arg)
{
	if (!xacts_ignored)
		own_xact_since_decoding = true;
}

/*
 * Decoding's own transactions, and the worker's merges (which call only
 * aggregate support functions, unless the worker is careful: see
 * WorkerMergeBatch), leave the caches as decoding needs them.
 */
void
DecodeIgnoreXacts(bool ignore)
{
	xacts_ignored = ignore;
}

static void
check_allowed(void)
{
	/*
	 * A copy of the library that the postmaster did not load is a second
	 * copy, loaded because the file was replaced after the server started:
	 * its globals and struct layouts are not the running server's.
	 */
	if (!flowpg_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the flowpg output plugin runs only in a server that preloads this flowpg library"),
				 errdetail("Either flowpg is not in shared_preload_libraries, or the library file was replaced after the server started."),
				 errhint("Restart the server after installing flowpg.")));
	if (!flowpg_decoding_allowed)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the flowpg output plugin can only be used by flowpg itself"),
				 errdetail("Its callbacks feed a stream worker's operators and produce no output."),
				 errhint("Create streams with flowpg.create_stream; use another output plugin for your own slots.")));
}

static void
flowpg_startup_cb(LogicalDecodingContext *ctx, OutputPluginOptions *options,
				  bool is_init)
{
	check_allowed();
	options->output_type = OUTPUT_PLUGIN_BINARY_OUTPUT;
	options->receive_rewrites = false;
}

static void
flowpg_shutdown_cb(LogicalDecodingContext *ctx)
{
}

/* Skip transactions the restored state already holds. */
static void
flowpg_begin_cb(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
	check_allowed();
	if (decode_worker == NULL)
		elog(ERROR, "flowpg output plugin called outside a stream worker");
	decode_worker->skip_txn = txn->end_lsn <= decode_worker->restored_lsn;
	decode_worker->replaying_commit = txn->final_lsn;
}

/*
 * Is relation the source, or a partition of it?  For a partition, *part
 * is its entry (NULL for the source itself).
 */
static bool
source_table(FlowWorker *w, Relation relation, PartEntry **part)
{
	*part = NULL;
	if (RelationGetRelid(relation) == w->plan->fq->source)
		return true;
	if (!w->plan->fq->partitioned)
		return false;
	*part = part_lookup(w, relation);
	return (*part)->member;
}

/*
 * Feed a decoded row to the operators, which run the stream's expressions
 * and aggregates: functions that look up the catalog (a PL/pgSQL or SQL
 * function finds its body there whenever its cached copy was invalidated,
 * and its queries take snapshots).  They must see the catalog as it is,
 * as the worker compiled the stream (README: a function replaced is used
 * from the rows decoded after), not as it was when the row was written:
 * a function replaced twice was run with its middle body, under the
 * handler of its latest language (a stream failed for good on a syntax
 * error), and a restore computed the rows again with the bodies they had
 * met.  So the historic snapshot is set aside meanwhile.  The caches the
 * operators fill are the current catalog's, which decoding does not read,
 * but for one: decoding lays rows out with the relcache entry of their
 * table, built with the historic catalog.  A function that opens the
 * source (or takes any lock) takes in the invalidations sent since, and
 * the entry of a table rewritten since (ALTER COLUMN ... TYPE) was built
 * again with its new columns, with which the next rows of the transaction
 * were read: every column misread, silently.  So if any relcache entry
 * was invalidated meanwhile, the source's and the row's table's are
 * invalidated again under the historic snapshot, which builds them as
 * decoding needs them (rows are copied into the operators' own slot,
 * whose descriptor is a copy: see PlanSetSourceDesc).
 */
static void
add_row(FlowWorker *w, Relation relation, HeapTuple tuple)
{
	Snapshot	historic = GetCatalogSnapshot(InvalidOid);
	HTAB	   *tuplecids = HistoricSnapshotGetTupleCids();
	uint64		invals = relcache_invals;

	Assert(HistoricSnapshotActive());
	relcache_reset = false;
	TeardownHistoricSnapshot(false);
	WorkerCheckCompiled(w);
	BatchAdd(w->batch, w->state, tuple);
	/* PostgreSQL's own check, after the transaction: "output plugin used XID" */
	if (GetCurrentTransactionIdIfAny() != InvalidTransactionId)
		PlanRaiseWrite(w->def->name,
					   "A stream's functions run as its worker decodes the WAL, where they may not write, lock rows (FOR SHARE) or advance sequences: anything that takes a transaction ID.",
					   NULL);
	SetupHistoricSnapshot(historic, tuplecids);
	if (relcache_invals == invals)
		return;
	if (relcache_reset)
		RelationCacheInvalidate(false);
	else
	{
		RelationCacheInvalidateEntry(w->plan->fq->source);
		if (RelationGetRelid(relation) != w->plan->fq->source)
			RelationCacheInvalidateEntry(RelationGetRelid(relation));
	}
}

/*
 * One decoded change.  Inserts into the source go through the operators;
 * UPDATE and DELETE are counted and not applied: a source is a stream of
 * events.
 */
static void
flowpg_change_cb(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				 Relation relation, ReorderBufferChange *change)
{
	FlowWorker *w = decode_worker;
	HeapTuple	tuple;
	PartEntry  *part;

	check_allowed();
	FlowpgExitIfOrphaned();
	if (w == NULL || w->skip_txn || !source_table(w, relation, &part))
		return;

	switch (change->action)
	{
		case REORDER_BUFFER_CHANGE_INSERT:
			/* rows of a partition are read with the source's descriptor */
			if (!source_desc_current)
			{
				PlanSetSourceDesc(w->plan, part != NULL ? parts_sourcedesc :
								  RelationGetDescr(relation));
				source_desc_current = true;
			}
			tuple = &change->data.tp.newtuple->tuple;
			if (part != NULL && part->map != NULL)
			{
				MemoryContext oldcxt = MemoryContextSwitchTo(parts_tuple_cxt);

				MemoryContextReset(parts_tuple_cxt);
				tuple = execute_attr_map_tuple(tuple, part->map);
				MemoryContextSwitchTo(oldcxt);
			}
			w->events++;
			add_row(w, relation, tuple);
			break;
		case REORDER_BUFFER_CHANGE_UPDATE:
			w->ignored_updates++;
			break;
		case REORDER_BUFFER_CHANGE_DELETE:
			w->ignored_deletes++;
			break;
		default:
			break;
	}
}

static void
flowpg_truncate_cb(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				   int nrelations, Relation relations[],
				   ReorderBufferChange *change)
{
	FlowWorker *w = decode_worker;
	PartEntry  *part;
	int			i;

	check_allowed();
	if (w == NULL || w->skip_txn)
		return;
	/* TRUNCATE of a partitioned source truncates its partitions: once */
	for (i = 0; i < nrelations; i++)
		if (source_table(w, relations[i], &part))
		{
			w->ignored_truncates++;
			break;
		}
}

static void
flowpg_commit_cb(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
				 XLogRecPtr commit_lsn)
{
	FlowWorker *w = decode_worker;

	check_allowed();
	if (w == NULL)
		return;
	w->replaying_commit = InvalidXLogRecPtr;
	/* careful: merge each transaction that changed the state (WorkerMergeBatch) */
	if (!XLogRecPtrIsInvalid(w->careful_until) && !w->skip_txn &&
		BatchGroups(w->batch) > 0)
	{
		w->commit_reached = true;
		w->careful_commit = txn->final_lsn;
		w->careful_xid = txn->xid;
	}
}

/*
 * Drop the stream's own checkpoint transactions' changes early: the
 * worker's, and its checkpoint writer's (tagged with the worker's origin,
 * see writer.c).
 */
static bool
flowpg_filter_by_origin_cb(LogicalDecodingContext *ctx, RepOriginId origin_id)
{
	return decode_worker != NULL && origin_id != InvalidRepOriginId &&
		origin_id == decode_worker->origin;
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = flowpg_startup_cb;
	cb->begin_cb = flowpg_begin_cb;
	cb->change_cb = flowpg_change_cb;
	cb->truncate_cb = flowpg_truncate_cb;
	cb->commit_cb = flowpg_commit_cb;
	cb->filter_by_origin_cb = flowpg_filter_by_origin_cb;
	cb->shutdown_cb = flowpg_shutdown_cb;
}

/*
 * The WAL page reader of flowpg's decoders: read_local_xlog_page, which
 * polls with no regard for the postmaster until the WAL it needs is
 * flushed.  A record can cross the flush position (a page of it flushed,
 * the rest not yet), so the worker does wait here at times, and creating a
 * slot waits here for the running transactions to end; each waits on its
 * latch, exits if the postmaster dies, and answers interrupts.  (Waiting
 * in read_local_xlog_page itself, an adopter that was creating its slot
 * when the postmaster was killed waited forever for WAL nobody would
 * write, and kept the server from starting again.)
 */
static int
read_flushed_page(XLogReaderState *state, XLogRecPtr targetPagePtr,
				  int reqLen, XLogRecPtr targetRecPtr, char *cur_page)
{
	while (GetFlushRecPtr(NULL) < targetPagePtr + reqLen)
	{
		CHECK_FOR_INTERRUPTS();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	return read_local_xlog_page(state, targetPagePtr, reqLen, targetRecPtr,
								cur_page);
}

/*
 * Let go of the reference to a slot's statistics that making the slot gave
 * this process, by dropping them: the slot is new, they are all zero, and
 * the process that decodes from it makes them again.  A process that goes
 * on with other work (flowpg.create_stream's session, a worker that took a
 * savepoint) would keep it after the slot is gone.  When another process
 * then drops the slot, makes one at the same index and drops that (a
 * rebuild that failed), PostgreSQL 15 never frees the entry once the
 * first lets go, its reference being of an older generation
 * (pgstat_release_entry_ref), and an assertion-enabled server fails at
 * shutdown ("!ps->dropped", pgstat.c).  Slots are made and dropped under
 * ReplicationSlotAllocationLock: the slot found is the one made.
 */
static void
forget_slot_stats(const char *slot_name)
{
	ReplicationSlot *slot;

	LWLockAcquire(ReplicationSlotAllocationLock, LW_EXCLUSIVE);
	slot = SearchNamedReplicationSlot(slot_name, true);
	if (slot != NULL)
		pgstat_drop_replslot(slot);
	LWLockRelease(ReplicationSlotAllocationLock);
}

/*
 * Create a stream's slot as an ephemeral slot acquired by this backend,
 * and wait until it reaches a consistent point: every transaction that
 * commits after this returns is decoded in full.  The caller makes the
 * slot persistent when its transaction commits (catalog.c); until then an
 * error or abort drops it.
 *
 * With `snapshot`, also return the snapshot that sees exactly the
 * transactions committed before that point (as CREATE_REPLICATION_SLOT
 * ... USE_SNAPSHOT does); the transaction must then be REPEATABLE READ
 * with no snapshot taken yet, and should install it with
 * RestoreTransactionSnapshot.
 */
void
DecodeCreateSlot(const char *slot_name, Snapshot *snapshot)
{
	LogicalDecodingContext *ctx;
	bool		was_allowed = flowpg_decoding_allowed;

	CheckSlotRequirements();
	ReplicationSlotCreate(slot_name, true, RS_EPHEMERAL, false);

	flowpg_decoding_allowed = true;
	PG_TRY();
	{
		ctx = CreateInitDecodingContext("flowpg", NIL, snapshot != NULL,
										InvalidXLogRecPtr,
										XL_ROUTINE(.page_read = read_flushed_page,
												   .segment_open = wal_segment_open,
												   .segment_close = wal_segment_close),
										NULL, NULL, NULL);
		DecodingContextFindStartpoint(ctx);
		if (snapshot != NULL)
		{
			/*
			 * The snapshot lives in the snapshot builder's memory, which
			 * goes with the context: copy it (its xip array is in ours, and
			 * it has no subtransactions).
			 */
			Snapshot	initial = SnapBuildInitialSnapshot(ctx->snapshot_builder);

			*snapshot = palloc(sizeof(SnapshotData));
			memcpy(*snapshot, initial, sizeof(SnapshotData));
			Assert(initial->subxcnt == 0);
			(*snapshot)->subxip = NULL;
		}
		FreeDecodingContext(ctx);
	}
	PG_FINALLY();
	{
		flowpg_decoding_allowed = was_allowed;
	}
	PG_END_TRY();
	forget_slot_stats(slot_name);
}

/*
 * Copy slot src into a new persistent slot dst, with src's positions: dst
 * keeps the WAL from where src stands, and decoding from dst delivers what
 * decoding from src would.  This runs PostgreSQL's own
 * pg_copy_logical_replication_slot as the bootstrap superuser (the stream's
 * owner need not have REPLICATION), in the caller's transaction, which
 * must not have written yet; this backend must not hold a slot.
 */
void
DecodeCopySlot(const char *src, const char *dst)
{
	bool		was_allowed = flowpg_decoding_allowed;
	Oid			save_user;
	int			save_sec;
	Oid			argtypes[2] = {NAMEOID, NAMEOID};
	Datum		args[2];
	NameData	src_name;
	NameData	dst_name;

	namestrcpy(&src_name, src);
	namestrcpy(&dst_name, dst);
	args[0] = NameGetDatum(&src_name);
	args[1] = NameGetDatum(&dst_name);
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(BOOTSTRAP_SUPERUSERID,
						   save_sec | SECURITY_LOCAL_USERID_CHANGE);
	flowpg_decoding_allowed = true;
	PG_TRY();
	{
		SPI_connect();
		if (SPI_execute_with_args("SELECT pg_catalog.pg_copy_logical_replication_slot($1, $2, false)",
								  2, argtypes, args, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not copy replication slot \"%s\"", src);
		SPI_finish();
	}
	PG_FINALLY();
	{
		flowpg_decoding_allowed = was_allowed;
		SetUserIdAndSecContext(save_user, save_sec);
	}
	PG_END_TRY();
	forget_slot_stats(dst);
}

/*
 * Rewind a stream's slot to a savepoint's (flowpg.restore): its positions
 * and the catalog rows it keeps become the savepoint slot's, as
 * pg_copy_logical_replication_slot sets a copy's, but in place: the stream
 * kept its slot through it.  (Dropping the slot, then copying the
 * savepoint's under its name, left the stream without one, stale, when
 * the copy failed: a statement timeout, a cancel, another session taking
 * the slot just freed.)  The savepoint's slot keeps that WAL and those
 * rows meanwhile; if PostgreSQL invalidated it before ours took them over,
 * ours goes back to where it was and the restore fails.  A stream left
 * without a slot (stale) gets a copy.
 */
void
DecodeRewindSlot(const char *src, const char *dst)
{
	ReplicationSlot *sp;
	ReplicationSlot *slot;
	ReplicationSlotPersistentData from;
	ReplicationSlotPersistentData before;
	TransactionId effective_xmin;
	TransactionId effective_catalog_xmin;
	TransactionId before_xmin;
	TransactionId before_catalog_xmin;
	XLogSegNo	segno;
	bool		kept;

	if (SearchNamedReplicationSlot(dst, true) == NULL)
	{
		DecodeCopySlot(src, dst);
		return;
	}
	ReplicationSlotAcquire(dst, false);
	slot = MyReplicationSlot;
	HOLD_INTERRUPTS();
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	sp = SearchNamedReplicationSlot(src, false);
	if (sp != NULL)
	{
		SpinLockAcquire(&sp->mutex);
		from = sp->data;
		effective_xmin = sp->effective_xmin;
		effective_catalog_xmin = sp->effective_catalog_xmin;
		SpinLockRelease(&sp->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	if (sp == NULL || XLogRecPtrIsInvalid(from.restart_lsn))
		elog(ERROR, "replication slot \"%s\" is gone or invalidated", src);

	SpinLockAcquire(&slot->mutex);
	before = slot->data;
	before_xmin = slot->effective_xmin;
	before_catalog_xmin = slot->effective_catalog_xmin;
	slot->effective_xmin = effective_xmin;
	slot->effective_catalog_xmin = effective_catalog_xmin;
	slot->data.xmin = from.xmin;
	slot->data.catalog_xmin = from.catalog_xmin;
	slot->data.restart_lsn = from.restart_lsn;
	slot->data.confirmed_flush = from.confirmed_flush;
	/* what decoding from its old position found to move it to: a copy has none */
	slot->candidate_catalog_xmin = InvalidTransactionId;
	slot->candidate_xmin_lsn = InvalidXLogRecPtr;
	slot->candidate_restart_lsn = InvalidXLogRecPtr;
	slot->candidate_restart_valid = InvalidXLogRecPtr;
	SpinLockRelease(&slot->mutex);
	ReplicationSlotsComputeRequiredXmin(false);
	ReplicationSlotsComputeRequiredLSN();

	/* now that ours keeps them: were they still kept? */
	XLByteToSeg(from.restart_lsn, segno, wal_segment_size);
	kept = ControlSlotUsable(src) && XLogGetLastRemovedSegno() < segno;
	if (!kept)
	{
		SpinLockAcquire(&slot->mutex);
		slot->effective_xmin = before_xmin;
		slot->effective_catalog_xmin = before_catalog_xmin;
		slot->data = before;
		SpinLockRelease(&slot->mutex);
		ReplicationSlotsComputeRequiredXmin(false);
		ReplicationSlotsComputeRequiredLSN();
	}
	ReplicationSlotMarkDirty();
	ReplicationSlotSave();
	ReplicationSlotRelease();
	RESUME_INTERRUPTS();
	if (!kept)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("replication slot \"%s\" was invalidated while it was being restored",
						src),
				 errdetail("PostgreSQL removed the WAL since its position %X/%X (max_slot_wal_keep_size).",
						   LSN_FORMAT_ARGS(from.restart_lsn))));
}

/* The worker's decoding context, from its slot's position; in w->cxt. */
static void
begin_decoding(FlowWorker *w)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(w->cxt);

	source_desc_current = false;
	w->decoding = CreateDecodingContext(InvalidXLogRecPtr, NIL, false,
										XL_ROUTINE(.page_read = read_flushed_page,
												   .segment_open = wal_segment_open,
												   .segment_close = wal_segment_close),
										NULL, NULL, NULL);
	XLogBeginRead(w->decoding->reader, MyReplicationSlot->data.restart_lsn);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Copy the worker's own slot (see DecodeCopySlot), right after a
 * checkpoint, which confirmed the slot where the worker stands.  The
 * worker lets go of its slot meanwhile (a backend holds one slot at a
 * time), and of its decoding context: the copy makes one, and PostgreSQL
 * keeps part of a snapshot builder's state in globals (the transactions
 * running where decoding began from a saved snapshot), which a second
 * context in the process would clear under the first.  The new context
 * decodes from the confirmed position on, and assembles the transactions
 * in progress again from the slot's restart point, as when a worker
 * starts.
 *
 * flowpg.savepoint checks that a replication slot is free before it asks,
 * but another session may take it first: then this returns false, the
 * caller's transaction aborted and a new one begun in its place (with an
 * active snapshot, as the caller's), and the worker goes on with its slot
 * (it failed and started again, and its caller was told of a restart).
 */
bool
DecodeCopyOwnSlot(FlowWorker *w, const char *dst)
{
	bool		copied = true;

	Assert(w->confirmed_lsn == w->processed_lsn);
	FreeDecodingContext(w->decoding);
	w->decoding = NULL;
	ReplicationSlotRelease();
	PG_TRY();
	{
		DecodeCopySlot(w->slot_name, dst);
	}
	PG_CATCH();
	{
		if (geterrcode() != ERRCODE_CONFIGURATION_LIMIT_EXCEEDED)
			PG_RE_THROW();
		/* not in the transaction's memory, which the abort frees */
		MemoryContextSwitchTo(w->cxt);
		HOLD_INTERRUPTS();
		FlushErrorState();
		/* (PostgreSQL fails before it makes the slot: none was made) */
		if (MyReplicationSlot != NULL)
			ReplicationSlotRelease();
		AbortCurrentTransaction();
		RESUME_INTERRUPTS();
		/* the caller's transaction goes on: a new one in its place */
		FlowpgStartTransaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		copied = false;
	}
	PG_END_TRY();
	ReplicationSlotAcquire(w->slot_name, true);
	begin_decoding(w);
	return copied;
}

/* Drop a stream's slot if it exists, waiting for its worker to let go. */
void
DecodeDropSlot(const char *slot_name)
{
	if (SearchNamedReplicationSlot(slot_name, true) != NULL)
		ReplicationSlotDrop(slot_name, false);
}

/*
 * The slot named slot_name, NULL if there is none, and in *holder the pid
 * of the process that holds it (0: none).  With claim, a free slot is
 * taken by this process, as ReplicationSlotAcquire takes it but without
 * its error if another holds it.
 */
static ReplicationSlot *
slot_holder(const char *slot_name, bool claim, pid_t *holder)
{
	ReplicationSlot *slot;

	*holder = 0;
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	slot = SearchNamedReplicationSlot(slot_name, false);
	if (slot != NULL)
	{
		SpinLockAcquire(&slot->mutex);
		if (claim && slot->active_pid == 0)
			slot->active_pid = MyProcPid;
		*holder = slot->active_pid;
		SpinLockRelease(&slot->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	return slot;
}

/*
 * Wait until no process holds the slot (a worker that was told to stop),
 * so that DecodeDropSlotAtCommit finds it free.  The caller keeps workers
 * from taking it again (the stream's lock, StreamCtl.dropping).
 */
void
DecodeAwaitSlotFree(const char *slot_name)
{
	for (;;)
	{
		pid_t		holder;
		ReplicationSlot *slot = slot_holder(slot_name, false, &holder);

		/* gone meanwhile (its worker failed for good, say): nothing to wait for */
		if (slot == NULL || holder == 0 || holder == MyProcPid)
			break;
		(void) ConditionVariableTimedSleep(&slot->active_cv, 100,
										   WAIT_EVENT_REPLICATION_SLOT_DROP);
		CHECK_FOR_INTERRUPTS();
	}
	ConditionVariableCancelSleep();
}

/*
 * Drop a slot as the transaction that dropped its stream or savepoint
 * commits, after its commit record: dropped before (at PRE_COMMIT), a
 * transaction that then failed to commit (a serialization failure, a
 * crash) left the stream or savepoint without its slot.  Nothing here may
 * raise an error, which would be a PANIC after the commit: the slot is
 * claimed (slot_holder), and one that some other process holds
 * (DecodeAwaitSlotFree left it free; only a slot taken by hand since can
 * be held) is left to flowpg's sweeps of slots whose stream or savepoint
 * does not exist: a stream's within a second, a savepoint's when its
 * stream's worker next starts.  Claimed, ReplicationSlotDrop acquires it
 * as ours and drops it.  An I/O error removing the slot's directory is a
 * PANIC, as PostgreSQL's own failures to sync it are.
 */
void
DecodeDropSlotAtCommit(const char *slot_name)
{
	pid_t		holder;

	if (MyReplicationSlot != NULL)
	{
		ereport(WARNING,
				(errmsg("flowpg could not drop replication slot \"%s\": this session holds replication slot \"%s\"",
						slot_name, NameStr(MyReplicationSlot->data.name))));
		return;
	}
	if (!DecodeDropFreeSlot(slot_name, &holder))
	{
		ereport(WARNING,
				(errmsg("flowpg could not drop replication slot \"%s\": process %d holds it",
						slot_name, (int) holder),
				 errdetail("flowpg drops it later: once it is free if its stream was dropped, else when the stream's worker next starts.")));
	}
}

/*
 * Drop the slot unless another process holds it (*holder: its pid), as
 * one step: the slot is claimed first, so that two processes dropping it
 * at once do not fail ("does not exist": a worker dropping a savepoint's
 * slot it found without a savepoint, while the transaction that dropped
 * the savepoint dropped it at its commit).  Returns false if another
 * holds it; true if it is dropped, or gone.
 */
bool
DecodeDropFreeSlot(const char *slot_name, pid_t *holder)
{
	if (slot_holder(slot_name, true, holder) == NULL)
		return true;
	if (*holder != MyProcPid)
		return false;
	ReplicationSlotDrop(slot_name, true);
	return true;
}

/*
 * Take the slot, free, so that no other process takes it meanwhile (as
 * DecodeDropFreeSlot does before it drops it); false if another holds it
 * or it is gone.  DecodeUnclaimSlot gives it back; ReplicationSlotDrop
 * drops it.
 */
bool
DecodeClaimSlot(const char *slot_name)
{
	pid_t		holder;

	return slot_holder(slot_name, true, &holder) != NULL && holder == MyProcPid;
}

void
DecodeUnclaimSlot(const char *slot_name)
{
	ReplicationSlot *slot;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	slot = SearchNamedReplicationSlot(slot_name, false);
	if (slot != NULL)
	{
		SpinLockAcquire(&slot->mutex);
		if (slot->active_pid == MyProcPid)
			slot->active_pid = 0;
		SpinLockRelease(&slot->mutex);
		/* as ReplicationSlotRelease: a process may wait to acquire it */
		ConditionVariableBroadcast(&slot->active_cv);
	}
	LWLockRelease(ReplicationSlotControlLock);
}

/* Drop every savepoint slot of a stream. */
void
DecodeDropSavepointSlots(Oid dboid, int32 stream_id)
{
	ListCell   *lc;

	foreach(lc, ControlListSavepointSlots(dboid, stream_id))
		DecodeDropSlot(NameStr(*(NameData *) lfirst(lc)));
}

/*
 * Acquire the stream's slot and create the decoding context, in the
 * worker's long-lived memory.  Call inside a transaction (see the banner).
 * Returns false, holding the slot, if PostgreSQL has invalidated it
 * (max_slot_wal_keep_size): the WAL it kept is gone.
 */
bool
DecodeStart(FlowWorker *w)
{
	if (SearchNamedReplicationSlot(w->slot_name, true) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("replication slot \"%s\" of stream \"%s\" does not exist",
						w->slot_name, FlowpgLabel(w->def->name)),
				 errhint("Drop the stream and create it again.")));
	ReplicationSlotAcquire(w->slot_name, true);
	if (XLogRecPtrIsInvalid(MyReplicationSlot->data.restart_lsn))
		return false;

	decode_worker = w;
	CacheRegisterRelcacheCallback(source_relcache_cb, (Datum) 0);
	RegisterXactCallback(decode_xact_cb, NULL);
	begin_decoding(w);
	w->processed_lsn = MyReplicationSlot->data.confirmed_flush;
	w->confirmed_lsn = MyReplicationSlot->data.confirmed_flush;
	return true;
}

/*
 * Where the reader's next record starts: where the last one ended, past
 * the page's header if it ended at a page's end (records are contiguous
 * otherwise, even their headers: see XLogDecodeNextRecord).
 */
static XLogRecPtr
next_record_start(XLogReaderState *reader)
{
	XLogRecPtr	next = reader->EndRecPtr;

	if (next % XLOG_BLCKSZ == 0)
		next += XLogSegmentOffset(next, wal_segment_size) == 0 ?
			SizeOfXLogLongPHD : SizeOfXLogShortPHD;
	return next;
}

/*
 * Decode the WAL written so far, at most max_records records, feeding the
 * worker's batch.  Stops only between records, so whole transactions are
 * in the batch; before the commit of w->stop_before, and, while careful,
 * after each commit of a transaction that changed the state.  Returns
 * true when it reached the flush position.
 */
bool
DecodeRead(FlowWorker *w, int max_records)
{
	XLogReaderState *reader = w->decoding->reader;
	XLogRecPtr	flush = GetFlushRecPtr(NULL);
	int			n = 0;

	if (own_xact_since_decoding && reader->EndRecPtr < flush)
	{
		RelationCacheInvalidateEntry(w->plan->fq->source);
		source_desc_current = false;
		own_xact_since_decoding = false;
	}
	xacts_ignored = true;
	while (reader->EndRecPtr < flush)
	{
		char	   *errm = NULL;
		XLogRecord *record;

		if (!XLogRecPtrIsInvalid(w->stop_before) &&
			next_record_start(reader) >= w->stop_before)
		{
			w->stop_reached = true;
			break;
		}
		record = XLogReadRecord(reader, &errm);

		if (errm != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("could not read WAL for stream \"%s\": %s",
							FlowpgLabel(w->def->name), errm)));
		if (record != NULL)
		{
			decoded_since_own_xact = true;
			LogicalDecodingProcessRecord(w->decoding, reader);
		}
		CHECK_FOR_INTERRUPTS();
		FlowpgExitIfOrphaned();
		if (++n >= max_records || w->commit_reached)
			break;
	}
	xacts_ignored = false;
	if (reader->EndRecPtr > w->processed_lsn)
		w->processed_lsn = reader->EndRecPtr;
	return reader->EndRecPtr >= flush;
}

/*
 * Tell the slot that everything up to lsn is durable in a checkpoint (or
 * changed nothing), so that it may release the WAL before it.  The caller
 * has flushed the checkpoint's commit.
 */
void
DecodeConfirm(FlowWorker *w, XLogRecPtr lsn)
{
	XLogRecPtr	restart = MyReplicationSlot->data.restart_lsn;
	TransactionId xmin = MyReplicationSlot->data.catalog_xmin;

	if (lsn <= w->confirmed_lsn)
		return;
	LogicalConfirmReceivedLocation(lsn);

	/*
	 * Save the confirmed position, so that a worker started after a crash
	 * does not pass the transactions before it through its callbacks
	 * again.  When the call moved the restart position or the catalog
	 * xmin it has saved the slot itself: saving it again (an fsync of the
	 * file, a rename, an fsync of the directory: about 2 ms here) wrote
	 * the same bytes.
	 */
	if (MyReplicationSlot->data.restart_lsn == restart &&
		MyReplicationSlot->data.catalog_xmin == xmin)
	{
		ReplicationSlotMarkDirty();
		ReplicationSlotSave();
	}
	w->confirmed_lsn = lsn;
	w->last_confirm = GetCurrentTimestamp();

	/*
	 * The slot's restart position, where the next worker starts reading
	 * WAL, moves only when decoding meets a record of the transactions then
	 * running and a confirmation later passes it.  The background writer
	 * logs one every 15 s while the server writes, so after a load or
	 * under a heavy one the restart position lags by up to 15 s of WAL,
	 * all of it read again (its changes queued in the reorder buffer and
	 * dropped at their commits) before a restarted worker sees a new row:
	 * about a second for the WAL of a 1,000,000-row load here.  When it
	 * lags by more than a WAL segment, log such a record, at most once a
	 * second; the confirmation after the worker has decoded it moves the
	 * restart position up to it, or to the start of the oldest transaction
	 * it names.  Not while a transaction that began more than a segment ago
	 * is open (a load still being written): the position could not pass
	 * its start, and the record would only keep the next one, after its
	 * commit, waiting for the second to pass.
	 */
	if (MyReplicationSlot->data.restart_lsn + wal_segment_size < lsn &&
		TimestampDifferenceExceeds(w->running_xacts_at, w->last_confirm, 1000))
	{
		ReorderBufferTXN *oldest = ReorderBufferGetOldestTXN(w->decoding->reorder);

		if (oldest == NULL || oldest->first_lsn + wal_segment_size >= lsn)
		{
			LogStandbySnapshot();
			w->running_xacts_at = w->last_confirm;
		}
	}
}

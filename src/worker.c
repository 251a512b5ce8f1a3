/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The stream worker: one background process per stream.
 *
 * A worker connects to its stream's database as the stream's owner (so
 * every expression and aggregate runs with the owner's privileges, checked
 * again at every start; see ControlConnect for how it learns who that
 * is), then:
 *
 *	1. takes the stream's lock, which waits for a create_stream still in
 *	   progress and keeps a drop from running under it, and reads the
 *	   catalog row; if there is none the slot is an orphan (the creating
 *	   transaction never committed) and the worker drops it and exits; if
 *	   the stream's owner is not the role it connected as, it exits to be
 *	   started again as the owner;
 *	2. compiles the stored query (compile.c, operators.c);
 *	3. replaces the stream's shared state with the latest checkpoint
 *	   (checkpoint.c), whatever state an earlier worker left behind;
 *	4. sets up its replication origin and acquires its slot (decode.c),
 *	   and starts its checkpoint writer (writer.c);
 *	5. loops: decode the WAL flushed so far into a local batch, merge the
 *	   batch into the shared state, take a checkpoint when one is due
 *	   (handing periodic and forced ones to the writer), publish
 *	   progress, sleep on its latch.  Commits in any backend of the database set the latch
 *	   (catalog.c), as do flowpg.wait, flowpg.checkpoint and the writer.
 *
 * Any error ends the worker (it is recorded in the stream's StreamCtl for
 * flowpg.streams); the launcher starts a new one, which goes through the
 * same steps.  SIGTERM (from a drop, or a shutdown) ends it at once, once
 * its writer has exited.
 *
 * Memory: everything that lives as long as the worker is in its own
 * context; the operators reset their per-row and per-batch contexts (see
 * operators.c) and a checkpoint uses a context deleted when it ends.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "catalog/pg_aggregate.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "adopt.h"
#include "checkpoint.h"
#include "compile.h"
#include "decode.h"
#include "worker.h"
#include "api.h"
#include "writer.h"

/* WAL records decoded between two merges. */
#define WORKER_READ_RECORDS		20000

/* Clear the worker's traces in its StreamCtl, if the entry is still ours. */
static void
worker_on_exit(int code, Datum arg)
{
	StreamCtl  *ctl = (StreamCtl *) DatumGetPointer(arg);

	SpinLockAcquire(&ctl->mutex);
	if (ctl->pid == MyProcPid)
	{
		ctl->pid = 0;
		ctl->latch = NULL;
		ctl->state_ready = false;
	}
	SpinLockRelease(&ctl->mutex);
	ConditionVariableBroadcast(&ctl->cv);
}

/*
 * Settings of the worker's session (besides FlowpgSetProcessSettings'):
 * the decoder's memory comes from flowpg.decoding_work_mem, and the bound
 * of the state area from flowpg.state_memory.
 */
static void
apply_settings(void)
{
	char		buf[32];

	snprintf(buf, sizeof(buf), "%dkB", flowpg_decoding_work_mem);
	SetConfigOption("logical_decoding_work_mem", buf, PGC_USERSET, PGC_S_SESSION);
	ControlApplyStateLimit();
}

/* The stream no longer exists: drop its slot and origin. */
static void
drop_orphan(FlowWorker *w)
{
	ereport(LOG,
			(errmsg("flowpg: dropping replication slot \"%s\": its stream does not exist",
					w->slot_name)));
	FlowpgStartTransaction();
	DecodeDropSlot(w->slot_name);
	DecodeDropSavepointSlots(w->ctl->dboid, w->ctl->stream_id);
	replorigin_drop_by_name(w->slot_name, true, false);
	CommitTransactionCommand();
}

/*
 * Drop the slots of a stream that failed for good (see check_retained_wal):
 * its own, which this worker holds if `held`, and its savepoints'; and its
 * replication origin, whose progress takes one of the server's
 * max_replication_slots replication states: kept by a stale stream, it
 * left a new stream a slot but no state, and its workers failed at every
 * start.  A rebuild or restore gives the stream a new one.
 */
static void
release_slots(FlowWorker *w, bool held)
{
	if (held)
		ReplicationSlotRelease();
	if (w->origin != InvalidRepOriginId)
	{
		replorigin_session_reset();
		replorigin_session_origin = InvalidRepOriginId;
		w->origin = InvalidRepOriginId;
	}
	FlowpgStartTransaction();
	DecodeDropSlot(w->slot_name);
	DecodeDropSavepointSlots(MyDatabaseId, w->def->id);
	replorigin_drop_by_name(w->slot_name, true, false);
	CommitTransactionCommand();
	ereport(LOG,
			(errmsg("flowpg: dropped the replication slots of failed stream \"%s\"",
					FlowpgLabel(w->def->name))));
}

/*
 * The stream cannot go on exactly: it fails for good.  Its failure is
 * recorded in its catalog row first (its results stay, marked stale), then
 * its slots (the worker holds its own if `held`) go, so that a crash in
 * between drops them at the next start.  Raises the error.
 */
static void
fail_for_good(FlowWorker *w, int sqlerrcode, const char *message,
			  const char *hint, bool held)
{
	ereport(WARNING,
			(errcode(sqlerrcode),
			 errmsg_internal("flowpg: %s", message),
			 errhint("%s", hint)));
	FlowpgStartTransaction();
	/* flowpg's own record, even when the owner's sessions are read-only */
	(void) set_config_option("transaction_read_only", "off", PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
	PushActiveSnapshot(GetTransactionSnapshot());
	CatalogMarkFailed(w->def->id, message);
	PopActiveSnapshot();
	CommitTransactionCommand();
	release_slots(w, held);
	ereport(ERROR,
			(errcode(sqlerrcode),
			 errmsg_internal("%s", message),
			 errhint("Rebuild the stream from its source table with flowpg.rebuild_stream, or drop it and create it again.")));
}

/* The stream kept `unapplied` bytes of WAL, past flowpg.max_retained_wal: it fails for good. */
static void
fail_retained_wal(FlowWorker *w, int64 unapplied, bool held)
{
	char	   *message;

	message = psprintf("stream \"%s\" kept %s of WAL it has not applied, more than flowpg.max_retained_wal (%d MB); it has stopped for good and its results are stale",
					   FlowpgLabel(w->def->name), ControlWalAmount(unapplied),
					   flowpg_max_retained_wal);
	fail_for_good(w, ERRCODE_CONFIGURATION_LIMIT_EXCEEDED, message,
				  "Rebuild the stream with flowpg.rebuild_stream, or drop it and create it again; raise flowpg.max_retained_wal, or keep the stream running and drop old savepoints, to avoid this.",
				  held);
}

/*
 * Drop the savepoint slots of this stream that have no savepoint row: a
 * savepoint interrupted between copying the slot and recording it, or a
 * savepoint dropped by a transaction that crashed before dropping its slot.
 */
static void
drop_orphan_savepoint_slots(FlowWorker *w)
{
	ListCell   *lc;

	foreach(lc, ControlListSavepointSlots(MyDatabaseId, w->def->id))
	{
		NameData   *name = lfirst(lc);
		Oid			db;
		int32		id;
		int64		spid;
		pid_t		holder;

		if (!FlowpgParseSavepointSlotName(NameStr(*name), &db, &id, &spid) ||
			CatalogSavepointExists(spid))
			continue;
		ereport(LOG,
				(errmsg("flowpg: dropping replication slot \"%s\": its savepoint does not exist",
						NameStr(*name))));
		/* unless the transaction that dropped the savepoint drops it now */
		(void) DecodeDropFreeSlot(NameStr(*name), &holder);
	}
}

/*
 * What the compiled stream calls and checks: each function (in its
 * expressions and aggregates) and each domain it coerces to, with a
 * signature of what compiling took from the catalog (see below).
 */
typedef struct CompiledObject
{
	Oid			oid;
	bool		domain;
	bool		execute;		/* a function the owner must be allowed to
								 * execute (as PostgreSQL's executor checks
								 * it: not a type's I/O function, nor an
								 * aggregate's support function) */
	uint32		hash;			/* its catalog cache hash value */
	uint64		signature;
} CompiledObject;

static List *compiled_objects = NIL;
bool		WorkerCompiledChanged = false;

/* Append a text or array column of a catalog row, or nothing if NULL. */
static void
append_catalog_text(StringInfo buf, int cacheid, HeapTuple tuple, AttrNumber attr,
					bool array)
{
	bool		isnull;
	Datum		value = SysCacheGetAttr(cacheid, tuple, attr, &isnull);

	appendStringInfoChar(buf, '\x01');
	if (!isnull)
		appendStringInfoString(buf, array ? OidOutputFunctionCall(F_ARRAY_OUT, value) :
							   TextDatumGetCString(value));
}

/*
 * A compiled call keeps what it took from the catalog for its life: the
 * function's language handler, strictness, its SECURITY DEFINER owner and
 * SET clauses (PostgreSQL's fmgr_security_definer looks them up at the
 * first call only), a SQL function's parsed body; a domain's constraints
 * are compiled into the expression.  So a function replaced or altered
 * meanwhile ran as it was: a SECURITY DEFINER function given to another
 * role, who replaced its body, ran that body as its old owner (a
 * superuser's: COPY ... TO PROGRAM), and a constraint added to a domain
 * went unchecked.  The signature of a function covers all of that and its
 * body; of a domain, its constraints.
 */
static uint64
function_signature(Oid func)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(func));
	Form_pg_proc proc;
	StringInfoData buf;
	uint64		signature;

	if (!HeapTupleIsValid(tuple))
		return 0;
	proc = (Form_pg_proc) GETSTRUCT(tuple);
	initStringInfo(&buf);
	/* the owner is what a SECURITY DEFINER function runs as */
	appendStringInfo(&buf, "%u %u %d %d %c %d %u", proc->prolang,
					 proc->prosecdef ? proc->proowner : InvalidOid,
					 proc->prosecdef, proc->proisstrict, proc->provolatile,
					 proc->proretset, proc->prorettype);
	append_catalog_text(&buf, PROCOID, tuple, Anum_pg_proc_proconfig, true);
	append_catalog_text(&buf, PROCOID, tuple, Anum_pg_proc_prosrc, false);
	append_catalog_text(&buf, PROCOID, tuple, Anum_pg_proc_probin, false);
	append_catalog_text(&buf, PROCOID, tuple, Anum_pg_proc_prosqlbody, false);
	if (proc->prokind == PROKIND_AGGREGATE)
	{
		/* CREATE OR REPLACE AGGREGATE changes this row, not the function's */
		HeapTuple	aggtuple = SearchSysCache1(AGGFNOID, ObjectIdGetDatum(func));

		if (HeapTupleIsValid(aggtuple))
		{
			Form_pg_aggregate agg = (Form_pg_aggregate) GETSTRUCT(aggtuple);

			appendStringInfo(&buf, " %u %u %u %u %u %u %c %d",
							 agg->aggtransfn, agg->aggfinalfn, agg->aggcombinefn,
							 agg->aggserialfn, agg->aggdeserialfn, agg->aggtranstype,
							 agg->aggfinalmodify, agg->aggfinalextra);
			append_catalog_text(&buf, AGGFNOID, aggtuple, Anum_pg_aggregate_agginitval, false);
			ReleaseSysCache(aggtuple);
		}
	}
	ReleaseSysCache(tuple);
	signature = hash_bytes_extended((unsigned char *) buf.data, buf.len, 1);
	pfree(buf.data);
	return signature;
}

/*
 * A domain's constraints, and its base domains', as the catalog has them
 * (not through the type cache, which plans them: a constraint calling a
 * PL/pgSQL function ran it to fold it, within decoding).  With each, if
 * funcs, what its expression calls and coerces to is watched too (a
 * SECURITY DEFINER function in a CHECK ran as its old owner).
 */
static bool compiled_objects_walker(Node *node, void *context);

static uint64
domain_signature(Oid domain, bool watch)
{
	StringInfoData buf;
	uint64		signature;
	Relation	constraints = table_open(ConstraintRelationId, AccessShareLock);

	initStringInfo(&buf);
	while (OidIsValid(domain))
	{
		HeapTuple	type = SearchSysCache1(TYPEOID, ObjectIdGetDatum(domain));
		Form_pg_type form;
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tuple;
		Oid			base;

		if (!HeapTupleIsValid(type))
			break;
		form = (Form_pg_type) GETSTRUCT(type);
		base = form->typtype == TYPTYPE_DOMAIN ? form->typbasetype : InvalidOid;
		appendStringInfo(&buf, "%u %d %u;", domain, form->typnotnull, base);
		ReleaseSysCache(type);
		ScanKeyInit(&key, Anum_pg_constraint_contypid, BTEqualStrategyNumber,
					F_OIDEQ, ObjectIdGetDatum(domain));
		scan = systable_beginscan(constraints, ConstraintTypidIndexId, true, NULL, 1, &key);
		while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		{
			Form_pg_constraint con = (Form_pg_constraint) GETSTRUCT(tuple);
			bool		isnull;
			Datum		bin = heap_getattr(tuple, Anum_pg_constraint_conbin,
										   RelationGetDescr(constraints), &isnull);

			appendStringInfo(&buf, "%c %s %d %s\x01", con->contype, NameStr(con->conname),
							 con->convalidated, isnull ? "" : TextDatumGetCString(bin));
			if (watch && !isnull)
				(void) compiled_objects_walker(stringToNode(TextDatumGetCString(bin)), NULL);
		}
		systable_endscan(scan);
		domain = base;
	}
	table_close(constraints, AccessShareLock);
	signature = hash_bytes_extended((unsigned char *) buf.data, buf.len, 1);
	pfree(buf.data);
	return signature;
}

static uint64
object_signature(CompiledObject *obj, bool watch)
{
	return obj->domain ? domain_signature(obj->oid, watch) : function_signature(obj->oid);
}

static void
compiled_changed_cb(Datum arg, int cacheid, uint32 hashvalue)
{
	ListCell   *lc;

	foreach(lc, compiled_objects)
	{
		CompiledObject *obj = lfirst(lc);

		/* a domain's constraints are pg_constraint's: any change of them */
		if (hashvalue == 0 || (cacheid == CONSTROID && obj->domain) ||
			(obj->hash == hashvalue && obj->domain == (cacheid == TYPEOID)))
			WorkerCompiledChanged = true;
	}
}

/* the source, whose privileges the owner may lose (see compiled_source_cb) */
static Oid	compiled_source = InvalidOid;

static void
compiled_source_cb(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == compiled_source)
		WorkerCompiledChanged = true;
}

/* ... and with a role's membership, what it had through the role */
static void
memberships_cb(Datum arg, int cacheid, uint32 hashvalue)
{
	WorkerCompiledChanged = true;
}

static void
add_compiled_object(Oid oid, bool domain, bool execute)
{
	CompiledObject *obj;
	ListCell   *lc;

	if (!OidIsValid(oid))
		return;

	/*
	 * What the owner may not execute now, compiling did not need: a call it
	 * folded away unrun (WHERE true OR f(v)), which PostgreSQL does not
	 * check either.  Watched for it, the stream failed at the next
	 * invalidation of the source (a VACUUM), and at every start after.
	 */
	if (execute && pg_proc_aclcheck(oid, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
		execute = false;
	foreach(lc, compiled_objects)
	{
		obj = lfirst(lc);
		if (obj->oid == oid && obj->domain == domain)
		{
			obj->execute |= execute;
			return;
		}
	}
	obj = palloc(sizeof(CompiledObject));
	obj->oid = oid;
	obj->domain = domain;
	obj->execute = execute;
	obj->hash = domain ? GetSysCacheHashValue1(TYPEOID, ObjectIdGetDatum(oid)) :
		GetSysCacheHashValue1(PROCOID, ObjectIdGetDatum(oid));
	compiled_objects = lappend(compiled_objects, obj);
	obj->signature = object_signature(obj, true);
}

static bool
add_compiled_function(Oid func, void *context)
{
	add_compiled_object(func, false, *(bool *) context);
	return false;
}

static bool
compiled_objects_walker(Node *node, void *context)
{
	bool		execute;

	if (node == NULL)
		return false;
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, compiled_objects_walker, NULL, 0);
	/* the executor checks EXECUTE on calls, not on I/O or row comparisons */
	execute = !IsA(node, CoerceViaIO) && !IsA(node, RowCompareExpr);
	(void) check_functions_in_node(node, add_compiled_function, &execute);
	if (IsA(node, CoerceToDomain))
		add_compiled_object(((CoerceToDomain *) node)->resulttype, true, false);
	return expression_tree_walker(node, compiled_objects_walker, NULL);
}

/* What the compiled stream calls and checks (see CompiledObject). */
static void
watch_compiled(FlowWorker *w)
{
	static bool registered = false;
	FlowQuery  *fq = w->fq;
	int			i;

	if (!registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, compiled_changed_cb, (Datum) 0);
		CacheRegisterSyscacheCallback(TYPEOID, compiled_changed_cb, (Datum) 0);
		CacheRegisterSyscacheCallback(CONSTROID, compiled_changed_cb, (Datum) 0);
		CacheRegisterRelcacheCallback(compiled_source_cb, (Datum) 0);
		CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, memberships_cb, (Datum) 0);
		registered = true;
	}
	compiled_source = fq->source;
	list_free_deep(compiled_objects);
	compiled_objects = NIL;
	(void) compiled_objects_walker((Node *) fq->where, NULL);
	(void) compiled_objects_walker((Node *) fq->keys, NULL);
	(void) compiled_objects_walker((Node *) fq->aggs, NULL);
	(void) compiled_objects_walker((Node *) fq->output, NULL);
	/* and what compiling folded or inlined (a SQL function's body) */
	(void) compiled_objects_walker(stringToNode(w->def->plan), NULL);
	for (i = 0; i < w->plan->naggs; i++)
	{
		FlowAgg    *agg = &w->plan->aggs[i];

		add_compiled_object(agg->transfn.fn_oid, false, false);
		add_compiled_object(agg->combinefn.fn_oid, false, false);
		add_compiled_object(agg->finalfn.fn_oid, false, false);
		add_compiled_object(agg->serialfn.fn_oid, false, false);
		add_compiled_object(agg->deserialfn.fn_oid, false, false);
	}
	WorkerCompiledChanged = false;
}

/*
 * Before the process runs the stream's compiled code, in a transaction
 * that has taken in the catalog's invalidations: if a function or domain
 * it compiled changed since, it stops (w->recompile: the next process
 * compiles the stream again, at once; see record_error).  Cheap unless an
 * invalidation came for one of them; the signatures compare what changed,
 * as decoding passes the invalidations of the transactions it decodes
 * again (a replacement decoded after a restart is no change).
 */
void
WorkerCheckCompiledObjects(FlowWorker *w)
{
	ListCell   *lc;

	WorkerCompiledChanged = false;
	foreach(lc, compiled_objects)
	{
		CompiledObject *obj = lfirst(lc);

		if (object_signature(obj, false) == obj->signature)
			continue;
		w->recompile = true;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s %s, which stream \"%s\" uses, has changed",
						obj->domain ? "domain" : "function",
						obj->domain ? format_type_be(obj->oid) : format_procedure(obj->oid),
						FlowpgLabel(w->def->name)),
				 errdetail("The stream's process starts again at once, to compile the stream with it.")));
	}

	/*
	 * A REVOKE on the source or on a function the stream calls: the owner
	 * may read or call no more what the stream reads and calls, which
	 * PostgreSQL checks where the stream was compiled.  The stream fails
	 * then, as it does when its next process compiles it (a running
	 * worker read on, and flowpg.live showed rows the owner could not
	 * read, until its next checkpoint).
	 */
	CompileCheckPermissions(w->fq);
	foreach(lc, compiled_objects)
	{
		CompiledObject *obj = lfirst(lc);

		if (obj->execute &&
			pg_proc_aclcheck(obj->oid, GetUserId(), ACL_EXECUTE) != ACLCHECK_OK)
			aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FUNCTION, get_func_name(obj->oid));
	}
}

/*
 * Compile the stream's stored query, for its worker or its checkpoint
 * writer (writer.c), in w->cxt, and watch what it compiled.
 */
void
WorkerCompile(FlowWorker *w)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(w->cxt);

	w->fq = CompileQueryTree(stringToNode(w->def->plan));
	CompileCheckPermissions(w->fq);
	w->plan = PlanBuild(w->fq);
	w->plan->name = MemoryContextStrdup(w->plan->cxt, w->def->name);
	watch_compiled(w);
	MemoryContextSwitchTo(oldcxt);
}

/* Compile the stream and prepare its checkpoint statements (step 2). */
static void
compile_stream(FlowWorker *w)
{
	MemoryContext oldcxt;

	WorkerCompile(w);
	oldcxt = MemoryContextSwitchTo(w->cxt);
	w->batch = BatchCreate(w->plan);
	MemoryContextSwitchTo(oldcxt);
	CheckpointPrepare(w);
}

/* Replace the shared state with the latest checkpoint (step 3). */
static void
restore_state(FlowWorker *w)
{
	MemoryContext oldcxt;

	LWLockAcquire(&w->ctl->state_lock, LW_EXCLUSIVE);
	oldcxt = MemoryContextSwitchTo(w->cxt);
	w->state = StateCreate(w->ctl);
	w->state->reclaim = WriterReclaim;
	w->state->reclaim_arg = w;
	MemoryContextSwitchTo(oldcxt);
	CheckpointRestore(w);
	LWLockRelease(&w->ctl->state_lock);
	StatePublish(w->state);
}

/*
 * The WAL a stream keeps unapplied, as its worker starts after two workers
 * in a row failed before they ran, or two failed a checkpoint since one
 * was published (0 otherwise).  A worker that fails as it starts, every
 * time (its owner lost a privilege, an aggregate changed, its state does
 * not fit in flowpg.state_memory), never reaches check_retained_wal; one
 * that fails at its checkpoints (an owner made read-only, a result row
 * that cannot be computed) gets there with the WAL it applied counted as
 * applied: this counts from the position its own slot confirmed, which
 * is all the stream has applied for sure.  Not at the
 * first start, nor after a single failure, nor after workers that ran
 * (terminated, or failing on a row): a stream that is only restarting
 * would read past the WAL it has nothing to apply in (another
 * database's) at once.
 */
static int64
setup_unapplied_wal(FlowWorker *w)
{
	int32		failures;

	SpinLockAcquire(&w->ctl->mutex);
	failures = Max(w->ctl->setup_failures, w->ctl->ckpt_failures);
	SpinLockRelease(&w->ctl->mutex);
	if (failures < 2 || flowpg_max_retained_wal < 0)
		return 0;
	return ControlUnappliedWal(MyDatabaseId, w->def->id, InvalidXLogRecPtr);
}

/* Steps 1 to 4; returns false if the stream does not exist. */
static bool
worker_setup(FlowWorker *w, StreamIdentity *ident)
{
	MemoryContext oldcxt;
	RepOriginId origin;
	bool		usable;
	int64		unapplied;

	/*
	 * Before reading the catalog row: a change asked for from now on is
	 * read again (an owner change asks at its commit, see give_streams).
	 */
	SpinLockAcquire(&w->ctl->mutex);
	w->reload_seen = w->ctl->reload_requested;
	SpinLockRelease(&w->ctl->mutex);

	FlowpgStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	w->def_cxt = AllocSetContextCreate(w->cxt, "flowpg stream definition",
									   ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(w->def_cxt);
	if (OidIsValid(get_extension_oid("flowpg", true)))
		w->def = CatalogLockStream(ident->stream_id, AccessShareLock);
	MemoryContextSwitchTo(oldcxt);
	if (w->def == NULL)
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		drop_orphan(w);
		return false;
	}
	CatalogFollowTableOwner(w->def);
	if (w->def->owner != ident->owner)
	{
		/* the launcher did not know the owner yet, or it changed */
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		ControlReconnectAs(w->ctl, w->def->owner);
		return false;
	}
	if (w->def->restored)
	{
		/*
		 * To be rebuilt (flowpg.rebuild_stream committed, and the server
		 * restarted before the adopter made its new slot): the launcher
		 * starts an adopter instead of us.
		 */
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		AdoptRequest(ident);
		return false;
	}
	if (w->def->failure != NULL)
	{
		/* it failed for good, and a crash came before its slots were gone */
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		release_slots(w, false);
		return false;
	}
	drop_orphan_savepoint_slots(w);
	unapplied = setup_unapplied_wal(w);
	if (ControlOverRetainedWal(unapplied))
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		fail_retained_wal(w, unapplied, false);
	}
	SetConfigOption("application_name", w->def->name, PGC_USERSET, PGC_S_SESSION);
	CompileApplySettings(w->def->settings, GUC_ACTION_SET);
	apply_settings();
	pgstat_report_activity(STATE_RUNNING, w->def->query);

	compile_stream(w);
	/* a plan stored by an older flowpg lacked its aggregates' state types */
	if (w->fq->recorded_transtypes)
		CatalogStorePlan(w->def->id, nodeToString(w->fq->query));
	restore_state(w);

	/*
	 * The checkpoint restored may be one the previous worker's writer
	 * committed without waiting for its flush, and not flushed yet (a
	 * worker that failed, or was terminated, does not wait for that): this
	 * worker confirms positions past it with nothing dirty, taking the
	 * checkpoint as durable, and only its own lazy commits are in
	 * unconfirmed_commit.  A crash could take the checkpoint back with the
	 * slot already past its rows.  (Code review: no flush was seen to stop
	 * short of such a commit; one flush a start rules it out.)  Up to the
	 * end of the last record, not the insert position, which may be past a
	 * page header no record follows yet ("xlog flush request ... is not
	 * satisfied": the first version failed so under cassert).
	 */
	(void) ApiCommittedLsn();
	/* a stream restored or rebuilt after it failed for good has none */
	origin = replorigin_by_name(w->slot_name, true);
	if (origin == InvalidRepOriginId)
		origin = replorigin_create(w->slot_name);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	replorigin_session_setup(origin);
	replorigin_session_origin = origin;
	w->origin = origin;

	FlowpgStartTransaction();
	usable = DecodeStart(w);
	CommitTransactionCommand();
	if (!usable)
		fail_for_good(w, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
					  psprintf("the replication slot \"%s\" of stream \"%s\" was invalidated: PostgreSQL removed WAL the stream had not applied (max_slot_wal_keep_size); it has stopped for good and its results are stale",
								  w->slot_name, FlowpgLabel(w->def->name)),
					  "Rebuild the stream with flowpg.rebuild_stream, or drop it and create it again; set max_slot_wal_keep_size to -1 (flowpg.max_retained_wal bounds the WAL streams keep), or above it, to avoid this.",
					  true);
	/* the slot may lie before the checkpoint: see checkpoint.c */
	if (w->processed_lsn < w->restored_lsn)
		w->processed_lsn = w->restored_lsn;

	SpinLockAcquire(&w->ctl->mutex);
	/* a savepoint a failed worker began is not tried again: it failed */
	if (w->ctl->sp_attempted > w->ctl->sp_done)
		w->ctl->sp_abandoned = Max(w->ctl->sp_abandoned, w->ctl->sp_attempted);
	w->sp_seen = w->ctl->sp_attempted;
	w->ctl->processed_lsn = w->processed_lsn;
	w->ctl->setup_failures = 0;
	w->stop_before = w->ctl->failed_commit;
	w->suspect = !XLogRecPtrIsInvalid(w->ctl->rows_failed_at);
	if (w->ctl->careful_until > w->restored_lsn)
		w->careful_until = w->ctl->careful_until;
	else
		w->ctl->careful_until = InvalidXLogRecPtr;
	w->ctl->checkpoint_lsn = w->restored_lsn;
	w->ctl->result_lsn = Max(w->ctl->result_lsn,
							 Max(w->restored_lsn, w->confirmed_lsn));
	w->ctl->status = STREAM_RUNNING;
	w->ctl->state_ready = true;
	SpinLockRelease(&w->ctl->mutex);
	ConditionVariableBroadcast(&w->ctl->cv);

	w->last_checkpoint = GetCurrentTimestamp();
	w->last_confirm = w->last_checkpoint;
	w->rate_at = w->last_checkpoint;
	w->started_at = w->last_checkpoint;

	/* flowpg.restore rewound the state: the result table follows */
	if (w->def->rewrite)
		CheckpointWrite(w, "rewrite");
	/* start the checkpoint writer, so that it is ready for the first one */
	(void) WriterReady(w);
	return true;
}

/* The error context of a careful worker's merge. */
static void
careful_context(void *arg)
{
	FlowWorker *w = (FlowWorker *) arg;

	errcontext("result rows of stream \"%s\" after source transaction %u, committed at %X/%X",
			   FlowpgLabel(w->def->name), w->careful_xid, LSN_FORMAT_ARGS(w->careful_commit));
}

/*
 * Merge the batch into the shared state, and publish it to readers.
 *
 * A plan with internal states calls the aggregates' combine and
 * serialization functions here, which may look up the catalog or, written
 * in SQL or a PL, run queries: outside a transaction (the worker's main
 * loop) the merge gets one, with a snapshot.  Direct plans call no
 * function here, unless the worker is careful.
 *
 * A careful worker: the previous one failed a checkpoint
 * (StreamCtl.careful_until), most likely on an error in computing a key's
 * result row (a final function's, an output expression's such as
 * sum(a) / sum(b) when sum(b) comes to 0).  Without more, each worker
 * applied the same transactions and failed the same checkpoint, and the
 * results held none of the transactions since the last one.  Until it
 * has passed the failed checkpoint's position, this worker merges one
 * source transaction at a time (DecodeRead stops after each commit) and
 * computes the result rows of the keys it changed.  An error there ends
 * it (record_error: no failure of the stream's, the next worker starts at
 * once), and the next one stops before that transaction and checkpoints
 * what came before it (stop_at_failed_commit); then it goes on as usual,
 * as the transactions after it may make every row computable again, as
 * they would make the batch query succeed.
 */
void
WorkerMergeBatch(FlowWorker *w)
{
	bool		careful = !XLogRecPtrIsInvalid(w->careful_until);
	bool		xact = (!w->plan->direct || careful) && !IsTransactionState();
	ErrorContextCallback errcb;

	if (BatchGroups(w->batch) == 0)
		return;
	if (xact)
	{
		/* a careful worker's transaction runs any function: not ignored */
		DecodeIgnoreXacts(!careful);
		FlowpgStartTransaction();
		PushActiveSnapshot(GetTransactionSnapshot());
		WorkerCheckCompiled(w);
	}
	LWLockAcquire(&w->ctl->state_lock, LW_EXCLUSIVE);
	BatchMerge(w->batch, w->state, careful);
	LWLockRelease(&w->ctl->state_lock);
	if (careful)
	{
		errcb.callback = careful_context;
		errcb.arg = w;
		errcb.previous = error_context_stack;
		error_context_stack = &errcb;
		w->verifying = true;
		BatchVerify(w->batch, w->state);
		w->verifying = false;
		error_context_stack = errcb.previous;
	}
	if (xact)
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		DecodeIgnoreXacts(false);
	}
	BatchReset(w->batch);
	StatePublish(w->state);
}

/*
 * The flowpg.checkpoint calls that a forced checkpoint, published since,
 * serves are served: tell them.  Returns how many calls are served now.
 */
static uint64
served_forced(FlowWorker *w)
{
	uint64		served = w->forced_request;

	if (served == 0)
		return 0;
	SpinLockAcquire(&w->ctl->mutex);
	w->ctl->ckpt_done = Max(w->ctl->ckpt_done, served);
	SpinLockRelease(&w->ctl->mutex);
	ConditionVariableBroadcast(&w->ctl->cv);
	w->forced_request = 0;
	return served;
}

/*
 * Is the error one of computing a value (a data exception such as
 * division by zero or an overflow, one raised by a function's code)?  A
 * checkpoint failing on anything else (a constraint of the result table,
 * a read-only owner, a cancel, memory) gives the next worker nothing to
 * look for, transaction by transaction.
 */
static bool
row_error(int sqlerrcode)
{
	int			category = ERRCODE_TO_CATEGORY(sqlerrcode);

	return category == ERRCODE_DATA_EXCEPTION ||
		category == ERRCODE_SQL_ROUTINE_EXCEPTION ||
		category == ERRCODE_EXTERNAL_ROUTINE_EXCEPTION ||
		category == ERRCODE_EXTERNAL_ROUTINE_INVOCATION_EXCEPTION ||
		category == ERRCODE_PLPGSQL_ERROR;
}

/*
 * A suspect worker's check before a periodic checkpoint: can the result
 * rows of the keys it would write be computed?  The careful worker found
 * a source transaction after which a key's row could not be computed (a
 * final function's error, an output expression's such as sum(a) / sum(b)
 * when sum(b) comes to 0: see WorkerMergeBatch), and this one started
 * from the checkpoint before it.  The transactions after it may make
 * every row computable again, as they would make the batch query succeed;
 * until they do, a periodic checkpoint would fail (and the next worker
 * apply the same transactions and fail at its own, whatever came since:
 * the stream stayed failed where the batch query succeeded).  So the
 * worker postpones them, trying again after a second, then twice as long
 * each time up to a minute (the key that failed first), says why in
 * flowpg.streams.last_error, and counts the WAL it keeps meanwhile from
 * its slot (check_retained_wal).  A checkpoint that someone waits for is
 * taken all the same, and fails if it must.  Errors of other kinds are
 * the worker's.
 */
static bool
rows_computable(FlowWorker *w, TimestampTz now, int interval)
{
	FlowState  *st = w->state;
	MemoryContext oldcxt = CurrentMemoryContext;
	ErrorData  *edata = NULL;
	char		message[FLOWPG_ERROR_LEN];
	int			i;

	if (now < w->verify_retry_at)
		return false;
	FlowpgStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	WorkerCheckCompiled(w);
	PG_TRY();
	{
		/* the key that failed last time first: it likely fails again */
		if (w->bad_index < st->ndirty)
			(void) PlanFinalizeChunk(w->plan, StateGetChunk(st, st->dirty[w->bad_index]));
		for (i = 0; i < st->ndirty; i++)
		{
			w->bad_index = i;
			(void) PlanFinalizeChunk(w->plan, StateGetChunk(st, st->dirty[i]));
			if (i % 1024 == 0)
				CHECK_FOR_INTERRUPTS();
		}
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(w->cxt);
		edata = CopyErrorData();
		if (!row_error(edata->sqlerrcode))
			PG_RE_THROW();
		HOLD_INTERRUPTS();
		FlushErrorState();
		AbortCurrentTransaction();
		RESUME_INTERRUPTS();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	if (edata == NULL)
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		return true;
	}
	if (w->postponed_since == 0)
	{
		w->postponed_since = now;
		w->retry_delay_ms = Min(interval, 1000);
		ereport(LOG,
				(errmsg("stream \"%s\" postpones its checkpoints: the result row of a key it changed cannot be computed: %s",
						FlowpgLabel(w->def->name), edata->message),
				 errdetail("A source transaction made a row of the stream impossible to compute; it tries again until every row can be computed, as its batch query could.")));
	}
	else
		w->retry_delay_ms = Min(w->retry_delay_ms * 2, 60000);
	snprintf(message, sizeof(message), "checkpoints postponed: %s", edata->message);
	ControlSetError(w->ctl, message);
	w->verify_retry_at = TimestampTzPlusMilliseconds(now, w->retry_delay_ms);
	FreeErrorData(edata);
	return false;
}

/* A call that has not looked at its stream for this long has returned. */
#define WAITER_GONE_MS	2000

/*
 * Take a checkpoint if one is due: the interval has passed, a flowpg.wait
 * waits for what the state holds, or flowpg.checkpoint asked for one.
 * Periodic and forced checkpoints go to the checkpoint writer when there
 * is one (writer.c), one at a time: first the one it was writing is
 * collected, if it is done.  With nothing to write, the result table is
 * already exact up to processed_lsn; say so, and let the slot release WAL
 * from time to time.
 */
static void
maybe_checkpoint(FlowWorker *w)
{
	StreamCtl  *ctl = w->ctl;
	TimestampTz now = GetCurrentTimestamp();
	int			interval = CatalogIntervalMs(w->def);
	bool		dirty = w->state->ndirty > 0;
	uint64		requested,
				done,
				sp_requested;
	XLogRecPtr	wait_lsn,
				result_lsn,
				target;
	TimestampTz waiter_seen_at;
	bool		ready;
	bool		inflight;
	bool		asked;
	char		sp_name[NAMEDATALEN];

	SpinLockAcquire(&ctl->mutex);
	requested = ctl->ckpt_requested;
	done = ctl->ckpt_done;
	sp_requested = ctl->sp_requested;
	if (sp_requested > ctl->sp_done)
		strlcpy(sp_name, ctl->sp_name, NAMEDATALEN);
	wait_lsn = ctl->wait_lsn;
	waiter_seen_at = ctl->waiter_seen_at;
	result_lsn = ctl->result_lsn;
	target = ctl->ckpt_target;
	SpinLockRelease(&ctl->mutex);

	/*
	 * The checkpoint a flowpg.wait or flowpg.checkpoint call waits for is
	 * taken while the call waits, even by a suspect worker while a row
	 * cannot be computed (see rows_computable): it fails, and the caller
	 * is told.  A call that has returned (raised, timed out, canceled)
	 * left its position or request behind: a checkpoint that failed for
	 * it (a row, a trigger of the result table) was taken again by every
	 * next worker, which failed, over and over, for nobody.  Periodic
	 * checkpoints take what it waited for in time.
	 */
	asked = !TimestampDifferenceExceeds(waiter_seen_at, now, WAITER_GONE_MS);

	/* a stream's process found no background worker slot: give ours up */
	if (pg_atomic_read_u32(&FlowCtl->writers_yield) != w->yield_seen)
	{
		w->yield_seen = pg_atomic_read_u32(&FlowCtl->writers_yield);
		WriterYield(w);
	}
	/* the checkpoint the writer was writing, if it is done */
	inflight = CheckpointCollect(w, false);
	if (!inflight)
	{
		uint64		served = served_forced(w);

		done = Max(done, served);
	}
	/* a checkpoint whose commit the WAL writer has flushed since */
	CheckpointConfirm(w, false);

	/* checkpoints and savepoints asked for hold what was committed before */
	ready = w->def->paused || w->processed_lsn >= target;
	if (ready && sp_requested > w->sp_seen)
	{
		int64		id;
		bool		withdrawn;

		w->sp_seen = sp_requested;
		SpinLockAcquire(&ctl->mutex);
		/* its caller gave up on it (see withdraw_request in savepoint.c) */
		withdrawn = ctl->sp_abandoned >= sp_requested;
		if (!withdrawn)
			ctl->sp_attempted = sp_requested;
		SpinLockRelease(&ctl->mutex);
		if (!withdrawn)
		{
			id = CheckpointSavepoint(w, sp_name);
			SpinLockAcquire(&ctl->mutex);
			ctl->sp_id = id;
			ctl->sp_done = sp_requested;
			SpinLockRelease(&ctl->mutex);
			ConditionVariableBroadcast(&ctl->cv);
		}
	}
	else if (inflight)
	{
		/* the next one waits for it; so does saying nothing changed */
	}
	else if (ready && requested > done && asked)
	{
		/* served once the checkpoint is published */
		w->forced_request = requested;
		CheckpointHandOff(w, "forced");
		if (!w->job_inflight)
			(void) served_forced(w);
	}
	else if (dirty && wait_lsn > result_lsn && w->processed_lsn >= wait_lsn && asked)
		CheckpointHandOff(w, "periodic");
	else if (dirty && TimestampDifferenceExceeds(w->last_checkpoint, now, interval) &&
			 (!w->suspect || rows_computable(w, now, interval)))
		CheckpointHandOff(w, "periodic");
	else if (!dirty && w->processed_lsn > result_lsn)
	{
		SpinLockAcquire(&ctl->mutex);
		ctl->result_lsn = w->processed_lsn;
		SpinLockRelease(&ctl->mutex);
		ConditionVariableBroadcast(&ctl->cv);
		if (TimestampDifferenceExceeds(w->last_confirm, now, interval))
		{
			/* not past a checkpoint a crash could still take back */
			CheckpointFlushUnconfirmed(w);
			DecodeConfirm(w, w->processed_lsn);
		}
	}
}

static void
publish_progress(FlowWorker *w, bool caught_up)
{
	StreamCtl  *ctl = w->ctl;
	TimestampTz now = GetCurrentTimestamp();
	double		rate = -1;

	/* events per second, over about a second */
	if (TimestampDifferenceExceeds(w->rate_at, now, 1000))
	{
		rate = (double) (w->events - w->rate_events) * 1000000.0 /
			(double) (now - w->rate_at);
		w->rate_at = now;
		w->rate_events = w->events;
	}

	SpinLockAcquire(&ctl->mutex);
	ctl->processed_lsn = w->processed_lsn;
	if (caught_up)
		ctl->caught_up_at = now;
	if (rate >= 0)
		ctl->events_per_second = rate;
	ctl->events = w->events;
	ctl->ignored_updates = w->ignored_updates;
	ctl->ignored_deletes = w->ignored_deletes;
	ctl->ignored_truncates = w->ignored_truncates;
	SpinLockRelease(&ctl->mutex);
}

/* How long to sleep: until the next checkpoint is due, or a second. */
static long
sleep_ms(FlowWorker *w, TimestampTz now)
{
	long		secs;
	int			usecs;
	long		due;

	if (w->state->ndirty == 0)
		return 1000;
	TimestampDifference(now,
						w->postponed_since != 0 ? w->verify_retry_at :
						TimestampTzPlusMilliseconds(w->last_checkpoint,
													CatalogIntervalMs(w->def)),
						&secs, &usecs);
	due = secs * 1000 + usecs / 1000;
	return Max(1, Min(due, 1000));
}

/*
 * The stream has a new owner (ALTER TABLE ... OWNER TO of its result
 * table, or REASSIGN OWNED): this process is connected as the old one, so
 * it exits, and the launcher starts the next worker at once, connected as
 * the new owner, which goes on from the latest checkpoint, exactly as
 * after a crash.
 */
static void
restart_as_new_owner(FlowWorker *w, StreamDef *def)
{
	ereport(LOG,
			(errmsg("flowpg: stream \"%s\" now belongs to role %s: its worker starts again as that role",
					FlowpgLabel(def->name), GetUserNameFromId(def->owner, true))));
	ControlReconnectAs(w->ctl, def->owner);
	proc_exit(0);
}

/*
 * Read the stream's catalog row again (flowpg.pause_stream and
 * resume_stream asked for it, or a change of owner), once the transaction
 * that changed it ends.
 */
static void
reload_definition(FlowWorker *w)
{
	StreamDef  *def;
	MemoryContext oldcxt;
	MemoryContext def_cxt = AllocSetContextCreate(w->cxt, "flowpg stream definition",
												  ALLOCSET_SMALL_SIZES);

	FlowpgStartTransaction();
	FlowpgLockStream(w->def->id, AccessShareLock);
	PushActiveSnapshot(GetTransactionSnapshot());
	oldcxt = MemoryContextSwitchTo(def_cxt);
	def = CatalogReadStream(w->def->id);
	MemoryContextSwitchTo(oldcxt);
	if (def != NULL && def->owner != w->def->owner)
		restart_as_new_owner(w, def);
	PopActiveSnapshot();
	CommitTransactionCommand();
	if (def == NULL)
	{
		MemoryContextDelete(def_cxt);
		return;
	}
	/* nothing points into the old one: the compiled query holds copies */
	MemoryContextDelete(w->def_cxt);
	w->def_cxt = def_cxt;
	w->def = def;
}

static void
set_status(FlowWorker *w, StreamStatus status)
{
	SpinLockAcquire(&w->ctl->mutex);
	w->ctl->status = status;
	SpinLockRelease(&w->ctl->mutex);
	ConditionVariableBroadcast(&w->ctl->cv);
}

/*
 * Never fill the disk: if the stream's slots keep more WAL than
 * flowpg.max_retained_wal because the stream has not applied it (paused,
 * failing, or behind; a savepoint's position), the stream fails for good.
 * WAL they keep only because a transaction is still open, or because the
 * next checkpoint has not confirmed what the worker applied, does not
 * count: that is no fault of the stream's, and goes by itself (a burst of
 * WAL on another database failed caught-up streams whose slot was only
 * waiting for its next checkpoint), unless its checkpoints are postponed
 * (rows_computable): then what it applied since its slot's confirmed
 * position counts.  Checked about once a second; for workers that keep
 * failing as they start or at their checkpoints, in worker_setup
 * (setup_unapplied_wal).
 *
 * A worker that has just started first reads the WAL written while the
 * stream had none (a restart, a wait for a lock), much of it perhaps
 * another database's, which it reads past at once: it is judged once it
 * has caught up, or RETAINED_WAL_GRACE_MS after its start (a healthy
 * idle stream, whose worker was terminated while another database wrote
 * past the limit, failed for good on its first round).
 */
#define RETAINED_WAL_GRACE_MS	60000

static void
check_retained_wal(FlowWorker *w)
{
	TimestampTz now = GetCurrentTimestamp();
	int64		unapplied;

	if (flowpg_max_retained_wal < 0 ||
		!TimestampDifferenceExceeds(w->wal_checked_at, now, 1000))
		return;
	if (!w->caught_up_once &&
		!TimestampDifferenceExceeds(w->started_at, now, RETAINED_WAL_GRACE_MS))
		return;
	w->wal_checked_at = now;
	/* postponed checkpoints: what it applied since is not applied for sure */
	unapplied = ControlUnappliedWal(MyDatabaseId, w->def->id,
									w->postponed_since != 0 ? InvalidXLogRecPtr :
									w->processed_lsn);
	if (ControlOverRetainedWal(unapplied))
		fail_retained_wal(w, unapplied, true);
}

/*
 * A paused stream: write what it has applied, then only serve
 * flowpg.checkpoint until it is resumed.
 */
static void
paused_round(FlowWorker *w)
{
	if (w->state->ndirty > 0)
		CheckpointWrite(w, "forced");
	maybe_checkpoint(w);
	publish_progress(w, false);
	check_retained_wal(w);
	set_status(w, STREAM_PAUSED);
	pgstat_report_stat(true);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 1000, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

/*
 * Between rounds, once caught up.  While WAL keeps coming (some round in
 * the last WORKER_BUSY_MS decoded new WAL) the worker polls: it sleeps
 * flowpg.poll_interval and reads whatever was flushed meanwhile, without
 * being signalled.  Otherwise it sets ctl->sleeping and sleeps until a
 * commit sets its latch or a checkpoint is due.
 *
 * Why not a signal per commit: at a few thousand commits a second the
 * committing backends' kill() calls and the worker's wakeups cost them a
 * quarter of their throughput on a two-core machine, while polling adds
 * at most an interval to the time a commit takes to reach flowpg.live.
 * Fewer, larger rounds also decode and merge for less per row (the README
 * has the figures, under Performance).
 */
#define WORKER_BUSY_MS 100

static void
wait_for_wal(FlowWorker *w, bool advanced)
{
	TimestampTz now = GetCurrentTimestamp();
	long		timeout = sleep_ms(w, now);
	bool		poll;

	if (advanced)
		w->active_at = now;
	poll = !TimestampDifferenceExceeds(w->active_at, now, WORKER_BUSY_MS);
	if (!poll)
	{
		XLogRecPtr	flush;

		pg_atomic_write_u32(&w->ctl->sleeping, 1);
		/* publish the flag, then look at the WAL (pairs with ControlWakeDatabase) */
		pg_memory_barrier();
		flush = GetFlushRecPtr(NULL);
		if (flush > w->decoding->reader->EndRecPtr)
			timeout = 0;

		/*
		 * WAL inserted but not flushed yet, such as an asynchronous
		 * commit's: its backend signalled before the flush, and nobody will
		 * when the WAL writer flushes it, so keep polling.  (An idle
		 * server's insert position can be a page header past the flush.)
		 */
		else
			poll = GetXLogInsertRecPtr() > flush + SizeOfXLogLongPHD;
	}
	if (poll)
		timeout = Min(timeout, flowpg_poll_interval);
	else
	{
		/*
		 * About to sleep: flush the statistics the last checkpoints kept back
		 * (pgstat_report_stat(false) flushes at most once a second), as an
		 * idle backend does.
		 */
		pgstat_report_stat(true);
	}
	if (timeout > 0)
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
	pg_atomic_write_u32(&w->ctl->sleeping, 0);
	ResetLatch(MyLatch);
}

/*
 * The worker has applied everything before the commit of the source
 * transaction on which the previous worker failed (a row on which the
 * query raises an error, a group key too long for the result table's
 * index): checkpoint it, so that the results hold every transaction
 * before that one, then go on (and most likely fail on it again).
 * Without it, the transactions committed between the last checkpoint and
 * that one were applied and lost again at each start, and the results
 * held none of them.
 */
static void
stop_at_failed_commit(FlowWorker *w)
{
	w->stop_reached = false;
	w->stop_before = InvalidXLogRecPtr;
	if (w->state->ndirty > 0)
		CheckpointWrite(w, "forced");
	SpinLockAcquire(&w->ctl->mutex);
	w->ctl->failed_commit = InvalidXLogRecPtr;
	SpinLockRelease(&w->ctl->mutex);
}

/*
 * The end of a careful worker's round (see WorkerMergeBatch): once it has
 * passed the position of the checkpoint that failed, it is careful no more.
 */
static void
careful_round_end(FlowWorker *w)
{
	w->commit_reached = false;
	w->careful_commit = InvalidXLogRecPtr;
	if (w->processed_lsn >= w->careful_until)
	{
		w->careful_until = InvalidXLogRecPtr;
		SpinLockAcquire(&w->ctl->mutex);
		w->ctl->careful_until = InvalidXLogRecPtr;
		SpinLockRelease(&w->ctl->mutex);
	}
}

/* Step 5: the main loop; never returns. */
static void
worker_loop(FlowWorker *w)
{
	w->running = true;
	for (;;)
	{
		bool		caught_up;
		uint64		reload;
		XLogRecPtr	before;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			apply_settings();
			/* stops the checkpoint writer if it was turned off */
			if (!flowpg_checkpoint_writer)
				(void) WriterReady(w);
		}
		if (w->ctl->dropping)
			proc_exit(0);
		SpinLockAcquire(&w->ctl->mutex);
		reload = w->ctl->reload_requested;
		SpinLockRelease(&w->ctl->mutex);
		if (reload != w->reload_seen)
		{
			w->reload_seen = reload;
			reload_definition(w);
			if (!w->def->paused)
				set_status(w, STREAM_RUNNING);
		}
		if (w->def->paused)
		{
			paused_round(w);
			continue;
		}

		if (w->key_index_stale)
			CheckpointRefreshKeyIndex(w);
		before = w->decoding->reader->EndRecPtr;
		w->round_start = before;
		caught_up = DecodeRead(w, WORKER_READ_RECORDS);
		WorkerMergeBatch(w);
		w->round_start = InvalidXLogRecPtr;
		w->caught_up_once |= caught_up;
		if (w->stop_reached)
			stop_at_failed_commit(w);
		if (!XLogRecPtrIsInvalid(w->careful_until))
			careful_round_end(w);
		publish_progress(w, caught_up);
		maybe_checkpoint(w);
		check_retained_wal(w);
		if (caught_up)
			wait_for_wal(w, w->decoding->reader->EndRecPtr != before);
	}
}

/*
 * Keep the error for flowpg.streams before the worker exits with it, and
 * free the stream's state: it is rebuilt from the checkpoint at the next
 * start anyway, and meanwhile other streams may need the memory.
 */
static void
record_error(StreamCtl *ctl, FlowWorker *w)
{
	bool		rows = row_error(geterrcode());
	bool		found;

	/*
	 * Computing the rows of the keys one transaction changed, a careful
	 * worker found the one after which a row cannot be computed: that is no
	 * new failure (flowpg.wait waits on, for the next worker), which starts
	 * at once, stops before it, and is suspect (see rows_computable).  So
	 * is a function or domain the stream compiled that changed since
	 * (WorkerCheckCompiled): the next worker compiles it again, at once.
	 */
	found = w->verifying && rows;
	SpinLockAcquire(&ctl->mutex);
	if (found)
	{
		ctl->careful_until = InvalidXLogRecPtr;
		ctl->rows_failed_at = w->careful_commit;
	}
	if (!w->running)
		ctl->setup_failures++;

	/*
	 * Failed on a source transaction: the next worker stops before it.  On
	 * merging a round's batch (a combine function's error, the state's
	 * memory): before the round.
	 */
	if (!XLogRecPtrIsInvalid(w->replaying_commit))
		ctl->failed_commit = w->replaying_commit;
	else if (!XLogRecPtrIsInvalid(w->round_start))
		ctl->failed_commit = w->round_start;

	/*
	 * On a checkpoint: counted (see setup_unapplied_wal); computing a row,
	 * the next worker is careful (see WorkerMergeBatch).
	 */
	else if (!XLogRecPtrIsInvalid(w->ckpt_covering) &&
			 w->ckpt_covering > w->restored_lsn)
	{
		ctl->ckpt_failures++;
		if (rows)
			ctl->careful_until = w->ckpt_covering;
	}
	SpinLockRelease(&ctl->mutex);

	/* said last: a flowpg.wait that sees the failure sees the above too */
	if (found || w->recompile)
		ControlFailOver(ctl);
	else
		ControlFail(ctl);

	/*
	 * The writer may be reading the state: a job written in place, whose
	 * chunks the worker keeps as they are while it waits for it, and a
	 * cancel (pg_cancel_backend) ended that wait.  It goes first, as it
	 * would at the worker's exit: freed, the chunks it read were its
	 * checkpoint's keys (dsa_free writes into them), and every later
	 * worker found the state log corrupted.  A writer that does not exit
	 * keeps the state from being freed.  An error in a merge holds the
	 * state's lock meanwhile, as it should: flowpg.live must not read a
	 * state merged in part (a terminated writer exits at once; it takes
	 * that lock only for a job written in place, which the worker waits
	 * for unlocked).
	 */
	if (w->writer != NULL && !WriterStop(w))
		return;
	if (!LWLockHeldByMe(&ctl->state_lock))
		LWLockAcquire(&ctl->state_lock, LW_EXCLUSIVE);
	else
		HOLD_INTERRUPTS();		/* the error zeroed the count the lock holds */
	StateDestroy(ctl);
	LWLockRelease(&ctl->state_lock);
}

void
FlowWorkerMain(Datum main_arg)
{
	int			index = DatumGetInt32(main_arg);
	StreamCtl  *ctl = &FlowCtl->streams[index];
	StreamIdentity ident;
	FlowWorker *w;
	bool		ours;

	memcpy(&ident, MyBgworkerEntry->bgw_extra, sizeof(ident));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(&FlowCtl->lock, LW_SHARED);
	ours = ctl->in_use && !ctl->dropping && ctl->dboid == ident.dboid &&
		ctl->stream_id == ident.stream_id;
	LWLockRelease(&FlowCtl->lock);
	if (!ours)
		proc_exit(0);

	SpinLockAcquire(&ctl->mutex);
	ctl->pid = MyProcPid;
	ctl->latch = MyLatch;
	ctl->started_at = GetCurrentTimestamp();
	pg_atomic_write_u32(&ctl->sleeping, 0);
	ctl->state_ready = false;
	/* a first connection only to learn the owner shows nothing */
	if (OidIsValid(ident.owner))
	{
		ctl->status = STREAM_STARTING;
		ctl->restarts++;
	}
	SpinLockRelease(&ctl->mutex);
	on_shmem_exit(worker_on_exit, PointerGetDatum(ctl));

	ControlConnect(ctl, &ident);
	flowpg_decoding_allowed = true;

	w = MemoryContextAllocZero(TopMemoryContext, sizeof(FlowWorker));
	w->cxt = AllocSetContextCreate(TopMemoryContext, "flowpg worker",
								   ALLOCSET_DEFAULT_SIZES);
	w->ctl = ctl;
	w->ctl_index = index;
	w->job = InvalidDsaPointer;
	w->yield_seen = pg_atomic_read_u32(&FlowCtl->writers_yield);
	FlowpgSlotName(w->slot_name, ident.dboid, ident.stream_id);

	PG_TRY();
	{
		if (worker_setup(w, &ident))
			worker_loop(w);
	}
	PG_CATCH();
	{
		record_error(ctl, w);
		PG_RE_THROW();
	}
	PG_END_TRY();
	proc_exit(0);
}

/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  The flowpg.stream catalog, and the transaction hooks that make
 *	  creating and dropping a stream all-or-nothing.
 *
 * The catalog tables belong to the extension owner and are written only by
 * flowpg's C code, which switches to that role for it (like a SECURITY
 * DEFINER function) with every name, function and operator in its SQL
 * schema-qualified, so that no search_path can change what it runs.
 *
 * A stream has parts that are not transactional: its replication slot and
 * replication origin, its worker.  The hooks here tie them to the
 * transaction that creates or drops the stream:
 *
 *	create: create_stream makes the slot ephemeral (acquired by the
 *	  creating backend); at PRE_COMMIT it is made persistent and released,
 *	  and at COMMIT the launcher is woken to start the worker.  If the
 *	  transaction or the subtransaction that created it aborts, the
 *	  ephemeral slot is dropped.  A crash between PRE_COMMIT and the commit
 *	  record leaves a slot without a catalog row: its worker finds no row
 *	  and drops the slot.
 *
 *	drop: dropping a stream means dropping its result table, whoever does
 *	  it (drop_stream, DROP TABLE, DROP ... CASCADE, DROP EXTENSION, which
 *	  drops result tables through their automatic dependency).  The object
 *	  access hook notes every dropped table; at PRE_COMMIT, for each one
 *	  that was a result table, the stream's worker is stopped, its origin
 *	  dropped and its catalog rows deleted; its slots are dropped at
 *	  COMMIT, after the commit record, since a transaction can still fail
 *	  after PRE_COMMIT (a serialization failure, NOTIFY's queue, a crash)
 *	  and a dropped slot cannot come back.  The slots of dropped savepoints
 *	  go the same way.  The stream's lock (see FlowpgLockStream) is held
 *	  meanwhile so no worker can start.  Lock order: tables first, then the
 *	  stream (CatalogLockStream).
 *
 *	rename: a stream's definition (the text pg_dump carries) names the
 *	  objects its query uses; after any statement that renames an object or
 *	  moves it to another schema, the utility hook deparses every stream's
 *	  stored plan again, in the same transaction (CatalogRefreshDefinitions).
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include <signal.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/objectaccess.h"
#include "catalog/partition.h"
#include "catalog/indexing.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_database.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_inherits.h"
#include "catalog/index.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/readfuncs.h"
#include "pgstat.h"
#include "postmaster/bgwriter.h"
#include "replication/origin.h"
#include "replication/slot.h"
#include "storage/lmgr.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/ruleutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "adopt.h"
#include "catalog.h"
#include "compile.h"
#include "control.h"
#include "decode.h"
#include "operators.h"
#include "state.h"

/* What the current transaction created or dropped. */
static struct
{
	bool		create_active;	/* an ephemeral slot awaits PRE_COMMIT */
	SubTransactionId create_subid;
	bool		created;		/* wake the launcher at COMMIT */
	List	   *dropped_relids; /* tables dropped, maybe result tables */
	bool		extension_dropped;
	Oid			dropped_extension;	/* its oid */
	List	   *stopped;		/* StreamCtl entries marked dropping */
	List	   *held;			/* StreamCtl entries held by a restore */
	List	   *slots_to_drop;	/* slots (NameData) to drop at COMMIT */
	List	   *adopt;			/* StreamIdentity of restored streams */
	List	   *dropped_dbs;	/* databases dropped (Oid) */
	List	   *given;			/* StreamIdentity of streams given to
								 * another owner */
	bool		copied_db;		/* a database with streams was copied */
	List	   *locked;			/* ids of streams locked to change them, or
								 * for a savepoint: no PREPARE while a lock
								 * is held */
} pending;

static XLogRecPtr last_woken_commit = InvalidXLogRecPtr;

/* Set while CatalogInsertStream inserts: see flowpg_stream_restored. */
static bool catalog_inserting = false;
static object_access_hook_type prev_object_access_hook = NULL;
static ProcessUtility_hook_type prev_process_utility_hook = NULL;

#define STREAM_COLUMNS \
	"id, name, result, source, owner, query, definition, plan, checkpoint_interval, settings, " \
	"slot_origin"

/* A stream's name is its result table's current name. */
#define STREAM_SELECT \
	"SELECT s.id, CASE WHEN c.oid IS NULL THEN s.name ELSE pg_catalog.format('%I.%I', n.nspname, c.relname) END, " \
	"s.result, s.source, s.owner, s.query, s.plan, s.checkpoint_interval, s.paused, " \
	"s.rewrite, s.failure, s.definition, s.restored, s.settings, s.slot_origin " \
	"FROM flowpg.stream s " \
	"LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) s.result " \
	"LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "

/* The owner of a table, InvalidOid if there is no such table. */
Oid
CatalogTableOwner(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tuple))
		return InvalidOid;
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/* flowpg.stream, the catalog of streams */
Oid
CatalogStreamRelid(void)
{
	return get_relname_relid("stream", get_namespace_oid("flowpg", false));
}

static bool
share_locked(Oid relid)
{
	LOCKTAG		tag;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	return LockHeldByMe(&tag, AccessShareLock);
}

/* Let go of the holds of a relation's AccessShareLock this call took. */
static void
release_share_lock(Oid relid)
{
	LOCKTAG		tag;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	while (LockHeldByMe(&tag, AccessShareLock) &&
		   LockRelease(&tag, AccessShareLock, false))
		;
}

/*
 * flowpg.stream, if the current call may let go of its locks on it
 * (CatalogReleaseLocks); else InvalidOid.  Only if the transaction held
 * none when the call began: those are the call's own, taken under its
 * resource owner; earlier ones are the transaction's (an earlier
 * statement's, or the query that made the call), which it keeps.
 */
static Oid	catalog_locks_mine = InvalidOid;

void
CatalogNoteLocks(void)
{
	Oid			relid = CatalogStreamRelid();

	catalog_locks_mine = share_locked(relid) ? InvalidOid : relid;
}

/*
 * Let go of the locks the current call's lookups took on flowpg.stream and
 * its indexes (held to the end of the transaction, as any query's), before
 * it waits for a stream's process: the process reads flowpg.stream as it
 * starts, and a REINDEX or VACUUM FULL of it, queued behind those locks,
 * kept it waiting for the call that waited for it.  The deadlock detector
 * does not see a wait on a process, and everything touching the stream
 * waited until the call timed out (a minute for flowpg.checkpoint).
 * PostgreSQL lets go of its own catalogs' locks once it has read them
 * likewise; the next lookup locks them again.
 */
void
CatalogReleaseLocks(void)
{
	Oid			relid = catalog_locks_mine;
	Relation	rel;
	ListCell   *lc;

	if (!OidIsValid(relid) || !share_locked(relid))
		return;
	rel = relation_open(relid, NoLock);
	foreach(lc, RelationGetIndexList(rel))
		release_share_lock(lfirst_oid(lc));
	relation_close(rel, NoLock);
	release_share_lock(relid);
}

/* The role that owns flowpg's catalog: the extension's owner. */
static Oid
catalog_owner(void)
{
	Oid			owner = CatalogTableOwner(CatalogStreamRelid());

	if (!OidIsValid(owner))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("flowpg's catalog is missing from this database"),
				 errhint("Run CREATE EXTENSION flowpg.")));
	return owner;
}

/*
 * Run as the extension owner until CatalogRestoreUser, with search_path
 * pg_catalog, pg_temp.  flowpg's statements name everything with its
 * schema, operators included; the search_path is pinned besides, because
 * the session's may be anyone's: a stream's (its worker applies the
 * owner's settings, and runs the owner's functions), or a database's (the
 * scan process connects as the bootstrap superuser).  An operator found
 * through it ran as the extension owner, a superuser.
 */
void
CatalogBecomeOwner(CatalogPrivilege *priv)
{
	Oid			owner = catalog_owner();

	GetUserIdAndSecContext(&priv->saved_user, &priv->saved_sec);
	SetUserIdAndSecContext(owner, priv->saved_sec |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	priv->nest = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

void
CatalogRestoreUser(CatalogPrivilege *priv)
{
	/* false: a setting changed meanwhile does not outlive it */
	AtEOXact_GUC(false, priv->nest);
	SetUserIdAndSecContext(priv->saved_user, priv->saved_sec);
}

static int
interval_ms(Interval *iv)
{
	return (int) Min(FlowpgIntervalUsecs(iv) / 1000, (int64) INT_MAX);
}

/* A checkpoint interval for the catalog: ms, or NULL when negative. */
static Datum
interval_datum(int ms, char *null)
{
	Interval   *iv = palloc0(sizeof(Interval));

	iv->time = (int64) ms * 1000;
	*null = ms < 0 ? 'n' : ' ';
	return IntervalPGetDatum(iv);
}

/* A text[] of settings as a List of strings. */
static List *
settings_from_array(Datum array)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;
	List	   *settings = NIL;

	deconstruct_array(DatumGetArrayTypeP(array), TEXTOID, -1, false, TYPALIGN_INT,
					  &elems, &nulls, &n);
	for (i = 0; i < n; i++)
		if (!nulls[i])
			settings = lappend(settings, TextDatumGetCString(elems[i]));
	return settings;
}

/* A List of strings as a text[]. */
static Datum
settings_to_array(List *settings)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(settings), 1));
	ListCell   *lc;
	int			n = 0;

	foreach(lc, settings)
		elems[n++] = CStringGetTextDatum(lfirst(lc));
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* Copy a flowpg.stream row out of SPI into the current memory context. */
static StreamDef *
stream_from_tuple(HeapTuple tuple, TupleDesc desc)
{
	StreamDef  *def = palloc0(sizeof(StreamDef));
	bool		isnull;
	Datum		iv;

	def->id = DatumGetInt32(SPI_getbinval(tuple, desc, 1, &isnull));
	def->name = TextDatumGetCString(SPI_getbinval(tuple, desc, 2, &isnull));
	def->result = DatumGetObjectId(SPI_getbinval(tuple, desc, 3, &isnull));
	def->source = DatumGetObjectId(SPI_getbinval(tuple, desc, 4, &isnull));
	def->owner = DatumGetObjectId(SPI_getbinval(tuple, desc, 5, &isnull));
	def->query = TextDatumGetCString(SPI_getbinval(tuple, desc, 6, &isnull));
	def->plan = TextDatumGetCString(SPI_getbinval(tuple, desc, 7, &isnull));
	iv = SPI_getbinval(tuple, desc, 8, &isnull);
	def->checkpoint_interval = isnull ? -1 : interval_ms(DatumGetIntervalP(iv));
	def->paused = DatumGetBool(SPI_getbinval(tuple, desc, 9, &isnull));
	def->rewrite = DatumGetBool(SPI_getbinval(tuple, desc, 10, &isnull));
	iv = SPI_getbinval(tuple, desc, 11, &isnull);
	def->failure = isnull ? NULL : TextDatumGetCString(iv);
	def->definition = TextDatumGetCString(SPI_getbinval(tuple, desc, 12, &isnull));
	def->restored = DatumGetBool(SPI_getbinval(tuple, desc, 13, &isnull));
	def->settings = settings_from_array(SPI_getbinval(tuple, desc, 14, &isnull));
	iv = SPI_getbinval(tuple, desc, 15, &isnull);
	def->slot_origin = isnull ? NULL : TextDatumGetCString(iv);
	return def;
}

/* Run one catalog statement as the extension owner; rows are copied out. */
static List *
catalog_query(const char *sql, Oid argtype, Datum arg)
{
	MemoryContext callercxt = CurrentMemoryContext;
	CatalogPrivilege priv;
	List	   *defs = NIL;
	uint64		i;
	int			rc;

	SPI_connect();
	CatalogBecomeOwner(&priv);
	rc = SPI_execute_with_args(sql, 1, &argtype, &arg, NULL, false, 0);
	if (rc < 0)
		elog(ERROR, "flowpg catalog query failed: %s", SPI_result_code_string(rc));
	for (i = 0; SPI_tuptable != NULL && i < SPI_processed; i++)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(callercxt);

		defs = lappend(defs, stream_from_tuple(SPI_tuptable->vals[i],
											   SPI_tuptable->tupdesc));
		MemoryContextSwitchTo(oldcxt);
	}
	CatalogRestoreUser(&priv);
	SPI_finish();
	return defs;
}

/* The stream with this id, or NULL. */
StreamDef *
CatalogReadStream(int32 id)
{
	List	   *defs = catalog_query(STREAM_SELECT "WHERE s.id OPERATOR(pg_catalog.=) $1",
									 INT4OID, Int32GetDatum(id));

	return defs != NIL ? linitial(defs) : NULL;
}

/*
 * Take a stream's lock in the order every path takes it: the stream's
 * source and result tables first, then the stream.  DROP TABLE of a source
 * (with CASCADE) or of a result table locks the table, and the stream only
 * as it commits (process_drops); a worker that held the stream's lock
 * while it waited for one of the tables deadlocked with it.
 *
 * A user's transaction may also take the two tables in either order:
 * drop_stream locks the result table, and a DROP TABLE of the source after
 * it in the same transaction locks the source then.  So the caller (a
 * worker, a checkpoint writer or an adopter, as it starts) never waits for
 * one table while it holds the other: if the result table is taken, it
 * lets the source go, waits for the result table alone, and starts again.
 * Returns the stream's catalog row as it is once locked, or NULL if it is
 * gone.
 */
StreamDef *
CatalogLockStream(int32 id, LOCKMODE mode)
{
	StreamDef  *def;

	/*
	 * The caller goes on to prepare its checkpoint statements, an UPDATE
	 * of flowpg.stream among them, which locks it RowExclusive: take that
	 * first.  Reading it first took AccessShare on its index, and a
	 * REINDEX (or CREATE INDEX) of flowpg.stream in between, holding its
	 * Share lock and waiting for the index, deadlocked with the process.
	 */
	LockRelationOid(CatalogStreamRelid(), RowExclusiveLock);
	def = CatalogReadStream(id);

	while (def != NULL)
	{
		LockRelationOid(def->source, AccessShareLock);
		if (ConditionalLockRelationOid(def->result, AccessShareLock))
			break;
		UnlockRelationOid(def->source, AccessShareLock);
		LockRelationOid(def->result, AccessShareLock);
		UnlockRelationOid(def->result, AccessShareLock);
		/* the tables may have been dropped or given to another stream */
		def = CatalogReadStream(id);
	}
	FlowpgLockStream(id, mode);
	return CatalogReadStream(id);
}

/* The stream whose result table is `result`, or NULL. */
StreamDef *
CatalogFindByResult(Oid result)
{
	List	   *defs = catalog_query(STREAM_SELECT "WHERE s.result OPERATOR(pg_catalog.=) $1",
									 OIDOID, ObjectIdGetDatum(result));

	return defs != NIL ? linitial(defs) : NULL;
}

/* The identities of this database's streams restored from a dump and not rebuilt yet. */
List *
CatalogListRestored(void)
{
	List	   *idents = NIL;
	ListCell   *lc;

	foreach(lc, catalog_query(STREAM_SELECT "WHERE s.restored OPERATOR(pg_catalog.=) $1",
							  BOOLOID, BoolGetDatum(true)))
	{
		StreamDef  *def = lfirst(lc);
		StreamIdentity *ident = palloc(sizeof(StreamIdentity));

		ident->dboid = MyDatabaseId;
		ident->stream_id = def->id;
		ident->owner = def->owner;
		idents = lappend(idents, ident);
	}
	return idents;
}

/*
 * The stream of the given name, resolved like a table name with the
 * caller's search_path; raises an error if there is none.
 */
StreamDef *
CatalogLookup(text *name)
{
	char	   *str;
	List	   *names;
	RangeVar   *rv;
	Oid			relid;
	StreamDef  *def = NULL;

	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("stream name must not be null")));
	str = text_to_cstring(name);
	if (str[strspn(str, " \t\n\r\f\v")] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stream name must not be empty")));
	names = textToQualifiedNameList(name);
	rv = makeRangeVarFromNameList(names);
	relid = RangeVarGetRelid(rv, NoLock, true);
	if (OidIsValid(relid))
		def = CatalogFindByResult(relid);
	if (def == NULL && OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a stream", NameListToString(names)),
				 errhint("The streams of this database are listed in flowpg.streams.")));
	if (def == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("stream \"%s\" does not exist", NameListToString(names)),
				 errhint("The streams of this database are listed in flowpg.streams.")));
	return def;
}

/* Insert a new stream's catalog row. */
void
CatalogInsertStream(StreamDef *def)
{
	Oid			types[11] = {INT4OID, TEXTOID, OIDOID, OIDOID, OIDOID, TEXTOID,
	TEXTOID, TEXTOID, INTERVALOID, TEXTARRAYOID, TEXTOID};
	Datum		values[11];
	char		nulls[11] = "           ";
	CatalogPrivilege priv;
	int			rc;

	values[0] = Int32GetDatum(def->id);
	values[1] = CStringGetTextDatum(def->name);
	values[2] = ObjectIdGetDatum(def->result);
	values[3] = ObjectIdGetDatum(def->source);
	values[4] = ObjectIdGetDatum(def->owner);
	values[5] = CStringGetTextDatum(def->query);
	values[6] = CStringGetTextDatum(def->definition);
	values[7] = CStringGetTextDatum(def->plan);
	values[8] = interval_datum(def->checkpoint_interval, &nulls[8]);
	values[9] = settings_to_array(def->settings);
	values[10] = CStringGetTextDatum(FlowpgSlotOrigin());

	SPI_connect();
	CatalogBecomeOwner(&priv);
	catalog_inserting = true;
	PG_TRY();
	{
		rc = SPI_execute_with_args("INSERT INTO flowpg.stream (" STREAM_COLUMNS ") "
								   "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
								   11, types, values, nulls, false, 0);
	}
	PG_FINALLY();
	{
		catalog_inserting = false;
	}
	PG_END_TRY();
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "could not insert stream: %s", SPI_result_code_string(rc));
	CatalogRestoreUser(&priv);
	SPI_finish();
}

/* Write a stream's paused flag and checkpoint interval. */
void
CatalogUpdateStream(StreamDef *def)
{
	Oid			types[4] = {INT4OID, BOOLOID, INTERVALOID, OIDOID};
	Datum		values[4];
	char		nulls[4] = "    ";
	CatalogPrivilege priv;

	values[0] = Int32GetDatum(def->id);
	values[1] = BoolGetDatum(def->paused);
	values[2] = interval_datum(def->checkpoint_interval, &nulls[2]);
	values[3] = ObjectIdGetDatum(def->owner);

	SPI_connect();
	CatalogBecomeOwner(&priv);
	if (SPI_execute_with_args("UPDATE flowpg.stream SET paused = $2, checkpoint_interval = $3, "
							  "owner = $4 "
							  "WHERE id OPERATOR(pg_catalog.=) $1",
							  4, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not update stream %d", def->id);
	CatalogRestoreUser(&priv);
	SPI_finish();
}

/* Replace a stream's stored plan (see recorded_transtypes in compile.h). */
void
CatalogStorePlan(int32 id, const char *plan)
{
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2] = {Int32GetDatum(id), CStringGetTextDatum(plan)};

	CatalogExec("UPDATE flowpg.stream SET plan = $2 WHERE id OPERATOR(pg_catalog.=) $1",
				2, types, values, SPI_OK_UPDATE);
}

/* Run one catalog statement as the extension owner; returns SPI_processed. */
uint64
CatalogExec(const char *sql, int nargs, Oid *types, Datum *values, int expected)
{
	CatalogPrivilege priv;
	uint64		processed;

	SPI_connect();
	CatalogBecomeOwner(&priv);
	if (SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0) != expected)
		elog(ERROR, "flowpg catalog statement failed: %s", sql);
	processed = SPI_processed;
	CatalogRestoreUser(&priv);
	SPI_finish();
	return processed;
}

/* Does the savepoint with this id exist? */
bool
CatalogSavepointExists(int64 id)
{
	Oid			type = INT8OID;
	Datum		value = Int64GetDatum(id);

	return CatalogExec("SELECT 1 FROM flowpg.savepoint WHERE id OPERATOR(pg_catalog.=) $1",
						1, &type, &value, SPI_OK_SELECT) > 0;
}

/*
 * flowpg.checkpoint_id_seq must never give an id again: the newest
 * checkpoint of a stream is the one with the highest id, and the state log
 * is read newest segment first.  A database copied by CREATE DATABASE
 * (PostgreSQL 15's WAL_LOG strategy) gets its sequences' pages with the
 * values they had cached, which no WAL says were given: after a crash the
 * copy's sequence went back, its checkpoints reused ids (duplicate key
 * errors, or a new checkpoint that looked older than the newest, so that
 * committed rows were lost).  Before a process takes ids, set the sequence
 * past every id in use (setval writes WAL), if it is not already.
 */
void
CatalogRepairCheckpointIds(int32 stream_id)
{
	Oid			type = INT4OID;
	Datum		value = Int32GetDatum(stream_id);

	(void) CatalogExec("SELECT pg_catalog.setval('flowpg.checkpoint_id_seq', x.m) FROM "
					   "(SELECT GREATEST((SELECT pg_catalog.max(id) FROM flowpg.checkpoint), "
					   "(SELECT pg_catalog.max(checkpoint_id) FROM flowpg.state "
					   "WHERE stream_id OPERATOR(pg_catalog.=) $1), "
					   "(SELECT pg_catalog.max(id) FROM flowpg.savepoint)) AS m) x, "
					   "flowpg.checkpoint_id_seq s WHERE x.m OPERATOR(pg_catalog.>) s.last_value",
					   1, &type, &value, SPI_OK_SELECT);
}

/* Is flowpg itself inserting a flowpg.stream row right now? */
bool
CatalogInserting(void)
{
	return catalog_inserting;
}

/* A restored stream was rebuilt: its new plan, and it is restored no more. */
void
CatalogAdoptStream(StreamDef *def)
{
	Oid			types[3] = {INT4OID, TEXTOID, TEXTOID};
	Datum		values[3] = {Int32GetDatum(def->id), CStringGetTextDatum(def->plan),
	CStringGetTextDatum(FlowpgSlotOrigin())};

	CatalogExec("UPDATE flowpg.stream SET plan = $2, restored = false, rewrite = false, "
				 "failure = NULL, failed_at = NULL, slot_origin = $3 "
				 "WHERE id OPERATOR(pg_catalog.=) $1",
				 3, types, values, SPI_OK_UPDATE);
}

/* Run DELETE statements, each with the stream's id as $1. */
static void
delete_stream_rows(int32 id, const char *const *sql, int n)
{
	Oid			type = INT4OID;
	Datum		value = Int32GetDatum(id);
	int			i;

	for (i = 0; i < n; i++)
		CatalogExec(sql[i], 1, &type, &value, SPI_OK_DELETE);
}

/* Delete the rows of a stream's savepoints (their slots are not touched). */
static void
delete_savepoints(int32 id)
{
	static const char *const sql[] = {
		"DELETE FROM flowpg.savepoint_state WHERE savepoint_id OPERATOR(pg_catalog.=) ANY "
		"(SELECT id FROM flowpg.savepoint WHERE stream_id OPERATOR(pg_catalog.=) $1)",
		"DELETE FROM flowpg.savepoint WHERE stream_id OPERATOR(pg_catalog.=) $1",
	};

	delete_stream_rows(id, sql, lengthof(sql));
}

/* Drop a replication slot at COMMIT (see DecodeDropSlotAtCommit). */
static void
pend_slot_drop(const char *slot_name)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	NameData   *name = palloc(sizeof(NameData));

	namestrcpy(name, slot_name);
	pending.slots_to_drop = lappend(pending.slots_to_drop, name);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Have a stream rebuilt from its source table, as a restored one, once
 * this transaction commits (flowpg.rebuild_stream, or a stream found
 * without its slot in a copy): its stored plan goes (a restore
 * compiles the definition), and so do its savepoints, which belong to the
 * history the rebuild replaces.  The adopter drops the stream's slot, if
 * it has one still, when it makes the new one.
 */
void
CatalogRebuildStream(int32 id)
{
	Oid			type = INT4OID;
	Datum		value = Int32GetDatum(id);
	ListCell   *lc;

	delete_savepoints(id);
	CatalogExec("UPDATE flowpg.stream SET plan = '', restored = true, rewrite = false, "
				"failure = NULL, failed_at = NULL WHERE id OPERATOR(pg_catalog.=) $1",
				1, &type, &value, SPI_OK_UPDATE);
	foreach(lc, ControlListSavepointSlots(MyDatabaseId, id))
		pend_slot_drop(NameStr(*(NameData *) lfirst(lc)));
	CatalogPendingAdopt(id);
}

/*
 * The streams of this database whose slot was made on another server,
 * timeline or database (slot_origin) and is not here: the database is a
 * copy, made by pg_upgrade (a new system), a standby promoted or a base
 * backup recovered (a new timeline), or CREATE DATABASE ... TEMPLATE (a new
 * database), and PostgreSQL 15 copies no logical slot.  They are marked
 * to be rebuilt, as restored streams are, when this transaction commits.
 * A slot dropped by hand where it was made is not this: that stream shows
 * stale until flowpg.rebuild_stream.
 */
void
CatalogRebuildCopies(void)
{
	ListCell   *lc;

	foreach(lc, catalog_query(STREAM_SELECT "WHERE NOT s.restored AND s.failure IS NULL "
							  "AND (s.slot_origin IS NULL OR s.slot_origin OPERATOR(pg_catalog.<>) $1)",
							  TEXTOID, CStringGetTextDatum(FlowpgSlotOrigin())))
	{
		StreamDef  *def = lfirst(lc);
		char		slot_name[NAMEDATALEN];

		FlowpgSlotName(slot_name, MyDatabaseId, def->id);
		if (SearchNamedReplicationSlot(slot_name, true) != NULL)
			continue;
		ereport(LOG,
				(errmsg("flowpg: stream \"%s\" of database \"%s\" has no replication slot here, a copy of where its slot was made (pg_upgrade, a promoted standby, a recovered base backup or CREATE DATABASE ... TEMPLATE): rebuilding it from its source table",
						FlowpgLabel(def->name), get_database_name(MyDatabaseId))));
		CatalogRebuildStream(def->id);
	}
}

/*
 * Something a stream's query names (its source table or a column of it, a
 * function, a type, an operator, a schema, an enum value ...) was renamed
 * or moved to another schema.  The streams themselves run on: their stored
 * plans hold object ids.  But a stream's definition, the text pg_dump
 * carries and a restore compiles, names things: deparse each stream's plan
 * again so that it names them as they are now.  Runs in the transaction
 * of the statement that renamed, after it; as the extension owner.
 */
void
CatalogRefreshDefinitions(void)
{
	List	   *defs;
	ListCell   *lc;

	if (!OidIsValid(get_extension_oid("flowpg", true)))
		return;
	CommandCounterIncrement();	/* see the new names */
	defs = catalog_query(STREAM_SELECT "WHERE s.restored OPERATOR(pg_catalog.=) $1",
						 BOOLOID, BoolGetDatum(false));
	foreach(lc, defs)
	{
		StreamDef  *def = lfirst(lc);
		Oid			types[2] = {INT4OID, TEXTOID};
		Datum		values[2];
		char	   *definition = CompileDeparse(stringToNode(def->plan));

		if (strcmp(definition, def->definition) == 0)
			continue;
		values[0] = Int32GetDatum(def->id);
		values[1] = CStringGetTextDatum(definition);
		CatalogExec("UPDATE flowpg.stream SET definition = $2 "
					"WHERE id OPERATOR(pg_catalog.=) $1",
					2, types, values, SPI_OK_UPDATE);
	}
}

/* Record that a stream failed for good (its slots are about to go). */
void
CatalogMarkFailed(int32 id, const char *message)
{
	Oid			types[2] = {INT4OID, TEXTOID};
	Datum		values[2] = {Int32GetDatum(id), CStringGetTextDatum(message)};

	CatalogExec("UPDATE flowpg.stream SET failure = $2, failed_at = pg_catalog.now() "
				 "WHERE id OPERATOR(pg_catalog.=) $1",
				 2, types, values, SPI_OK_UPDATE);
}

/* Delete every catalog row of a stream. */
static void
catalog_delete(int32 id)
{
	static const char *const sql[] = {
		"DELETE FROM flowpg.state WHERE stream_id OPERATOR(pg_catalog.=) $1",
		"DELETE FROM flowpg.checkpoint WHERE stream_id OPERATOR(pg_catalog.=) $1",
		"DELETE FROM flowpg.stream WHERE id OPERATOR(pg_catalog.=) $1",
	};

	delete_savepoints(id);
	delete_stream_rows(id, sql, lengthof(sql));
}

/* Raise an error unless the current user may manage the stream. */
void
CatalogCheckOwner(StreamDef *def)
{
	if (!has_privs_of_role(GetUserId(), def->owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of stream \"%s\"", FlowpgLabel(def->name)),
				 errdetail("The stream is owned by role %s.",
						   GetUserNameFromId(def->owner, false))));
}

/* The stream's checkpoint interval in milliseconds. */
int
CatalogIntervalMs(StreamDef *def)
{
	return def->checkpoint_interval >= 0 ? def->checkpoint_interval :
		flowpg_checkpoint_interval;
}

/* ---------------------------------------------------------------------
 * Transaction hooks
 * ---------------------------------------------------------------------
 */

/* create_stream made an ephemeral slot: persist it if we commit. */
void
CatalogPendingCreate(void)
{
	pending.create_active = true;
	pending.create_subid = GetCurrentSubTransactionId();
}

/*
 * The transaction changes a stream that its worker rereads at commit
 * (pause, resume, checkpoint interval), or took a savepoint: it holds the
 * stream's lock to its end, which a prepared transaction would hold until
 * COMMIT PREPARED, keeping a restarting worker waiting, and the worker's
 * reload is asked for at commit, which COMMIT PREPARED in another session
 * would not ask for.
 */
void
CatalogPendingLocked(int32 stream_id)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);

	pending.locked = list_append_unique_int(pending.locked, stream_id);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Does the transaction still hold a lock it took to change a stream?  A
 * change rolled back to a savepoint let its lock go, and changes nothing
 * at commit (a PREPARE after it was refused).
 */
static bool
holds_change_locks(void)
{
	ListCell   *lc;

	foreach(lc, pending.locked)
	{
		if (FlowpgStreamLockHeld(lfirst_int(lc), AccessExclusiveLock) ||
			FlowpgStreamLockHeld(lfirst_int(lc), ShareUpdateExclusiveLock) ||
			FlowpgSavepointsLockHeld(lfirst_int(lc)))
			return true;
	}
	return false;
}

/*
 * Keep the launcher from starting a worker for the stream until the
 * transaction ends (its entry goes on `list`, which the end of the
 * transaction walks), and signal the worker it has now, if any.  Returns
 * that worker's pid, or 0.
 */
static pid_t
stop_worker(StreamCtl *ctl, List **list)
{
	MemoryContext oldcxt;
	pid_t		pid;

	LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
	ctl->dropping = true;
	LWLockRelease(&FlowCtl->lock);
	oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	*list = lappend(*list, ctl);
	MemoryContextSwitchTo(oldcxt);
	SpinLockAcquire(&ctl->mutex);
	pid = ctl->pid;
	SpinLockRelease(&ctl->mutex);
	if (pid != 0)
		kill(pid, SIGTERM);
	return pid;
}

/*
 * Stop a stream's worker and drop its origin, and its slots at COMMIT: the
 * non transactional part of dropping a stream.  Runs at PRE_COMMIT.  The
 * savepoints' slots go first, so that a crash before the last of them
 * leaves the stream's own, whose next worker drops the rest (drop_orphan
 * in worker.c).
 */
void
StreamStopAndDrop(Oid dboid, int32 stream_id)
{
	char		slot_name[NAMEDATALEN];
	StreamCtl  *ctl = ControlAcquire(dboid, stream_id);
	ListCell   *lc;

	FlowpgSlotName(slot_name, dboid, stream_id);
	if (ctl != NULL)
		stop_worker(ctl, &pending.stopped);
	foreach(lc, ControlListSavepointSlots(dboid, stream_id))
		pend_slot_drop(NameStr(*(NameData *) lfirst(lc)));
	pend_slot_drop(slot_name);
	DecodeAwaitSlotFree(slot_name);
	replorigin_drop_by_name(slot_name, true, false);

	/* the worker has let go of its slot: it is gone, free its state */
	if (ctl != NULL)
	{
		LWLockAcquire(&ctl->state_lock, LW_EXCLUSIVE);
		StateDestroy(ctl);
		LWLockRelease(&ctl->state_lock);
	}
}

/*
 * The restored streams of a database that is being dropped, or whose
 * flowpg is: the launcher keeps rebuilding them until they are dropped, so
 * stop that (their catalog rows go with the database or the extension).
 */
static void
forget_adopting(Oid dboid)
{
	ListCell   *lc;

	foreach(lc, ControlListAdopting(dboid))
		stop_worker(lfirst(lc), &pending.stopped);
}

/*
 * PRE_COMMIT: finish dropping the streams whose result tables went away,
 * or all of the database's if flowpg was dropped, even if it was created
 * again since (pg_restore --clean --single-transaction does both; the
 * streams it restores are rebuilt after the commit, under the same ids).
 */
static void
process_drops(void)
{
	ListCell   *lc;

	/* the extension has another oid, or none, unless the drop rolled back */
	if (pending.extension_dropped &&
		get_extension_oid("flowpg", true) != pending.dropped_extension)
	{
		foreach(lc, ControlListSlots(MyDatabaseId))
		{
			StreamIdentity *ident = lfirst(lc);

			FlowpgLockStream(ident->stream_id, AccessExclusiveLock);
			StreamStopAndDrop(ident->dboid, ident->stream_id);
		}
		forget_adopting(MyDatabaseId);
	}
	if (OidIsValid(get_extension_oid("flowpg", true)))
	{
		foreach(lc, pending.dropped_relids)
		{
			Oid			relid = lfirst_oid(lc);
			StreamDef  *def;

			if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)))
				continue;		/* the drop was rolled back to a savepoint */
			def = CatalogFindByResult(relid);
			if (def == NULL)
				continue;
			FlowpgLockStream(def->id, AccessExclusiveLock);
			StreamStopAndDrop(MyDatabaseId, def->id);
			catalog_delete(def->id);
		}
	}
}

/*
 * Stop a stream's worker and keep the launcher from starting another until
 * the transaction ends (flowpg.restore rewrites what the worker reads at
 * its start).  Waits for the worker to exit.  At commit the stream's
 * result position is forgotten, so that flowpg.wait waits for the new
 * worker; either way the launcher then starts it.
 */
void
StreamHold(Oid dboid, int32 stream_id)
{
	StreamCtl  *ctl = ControlAcquire(dboid, stream_id);
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 60000);
	pid_t		pid;

	if (ctl == NULL)
		return;
	pid = stop_worker(ctl, &pending.held);
	while (pid != 0)
	{
		if (GetCurrentTimestamp() > deadline)
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("timed out waiting for the worker of stream %d to stop", stream_id)));
		ConditionVariableTimedSleep(&ctl->cv, 100, PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
		/* a worker that got past its start check meanwhile is signalled too */
		SpinLockAcquire(&ctl->mutex);
		pid = ctl->pid;
		SpinLockRelease(&ctl->mutex);
		if (pid != 0)
			kill(pid, SIGTERM);
	}
	ConditionVariableCancelSleep();
}

/* Let the launcher start the workers of held streams again. */
static void
release_held(bool committed)
{
	ListCell   *lc;

	foreach(lc, pending.held)
	{
		StreamCtl  *ctl = lfirst(lc);

		SpinLockAcquire(&ctl->mutex);
		if (committed)
		{
			ctl->result_lsn = InvalidXLogRecPtr;
			ctl->checkpoint_lsn = InvalidXLogRecPtr;
		}
		ctl->restart_at = 0;
		ctl->failures = 0;
		SpinLockRelease(&ctl->mutex);
		LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
		ctl->dropping = false;
		LWLockRelease(&FlowCtl->lock);
	}
	if (pending.held != NIL)
		ControlWakeLauncher();
}

static void
reset_pending(void)
{
	pending.create_active = false;
	pending.created = false;
	pending.dropped_relids = NIL;
	pending.extension_dropped = false;
	pending.stopped = NIL;
	pending.held = NIL;
	pending.slots_to_drop = NIL;
	pending.adopt = NIL;
	pending.dropped_dbs = NIL;
	pending.copied_db = false;
	pending.given = NIL;
	pending.locked = NIL;
}

/* A stream row came from a dump: rebuild the stream once we commit. */
void
CatalogPendingAdopt(int32 stream_id)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	StreamIdentity *ident = palloc(sizeof(StreamIdentity));

	ident->dboid = MyDatabaseId;
	ident->stream_id = stream_id;
	ident->owner = InvalidOid;	/* the adopter reads it */
	pending.adopt = lappend(pending.adopt, ident);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Has this transaction created or changed the stream (paused, resumed,
 * restored, rebuilt it, changed its interval: the stream's lock, which a
 * worker that reloads its definition or starts waits for, is held until
 * the transaction ends)?  Then the stream's worker waits for this
 * transaction, and flowpg.wait or flowpg.checkpoint in it would wait for
 * the worker until they timed out.
 */
bool
CatalogChangedHere(int32 stream_id)
{
	ListCell   *lc;

	if (FlowpgStreamLockHeld(stream_id, AccessExclusiveLock))
		return true;
	foreach(lc, pending.held)
	{
		StreamCtl  *ctl = lfirst(lc);

		if (ctl->dboid == MyDatabaseId && ctl->stream_id == stream_id)
			return true;
	}
	return false;
}

/*
 * Has this transaction changed the stream (CatalogChangedHere) or dropped
 * one of its savepoints (whose row it has deleted, not committed)?  Then
 * a savepoint, which the worker takes in a transaction of its own, would
 * wait for this one.
 */
bool
CatalogPendingChanges(int32 stream_id)
{
	ListCell   *lc;

	if (CatalogChangedHere(stream_id))
		return true;
	foreach(lc, pending.slots_to_drop)
	{
		Oid			db;
		int32		id;
		int64		spid;

		if (FlowpgParseSavepointSlotName(NameStr(*(NameData *) lfirst(lc)), &db, &id, &spid) &&
			db == MyDatabaseId && id == stream_id)
			return true;
	}
	return false;
}

/* A dropped savepoint: drop its slot at COMMIT. */
void
CatalogPendingSlotDrop(Oid dboid, int32 stream_id, int64 savepoint_id)
{
	char		name[NAMEDATALEN];

	FlowpgSavepointSlotName(name, dboid, stream_id, savepoint_id);
	pend_slot_drop(name);
}

/*
 * Does this transaction drop a stream's result table, and so the stream?
 * Its catalog row is still there: it goes at PRE_COMMIT (process_drops).
 */
static bool
drops_result_table(void)
{
	ListCell   *lc;
	bool		found = false;

	if (pending.dropped_relids == NIL || !OidIsValid(get_extension_oid("flowpg", true)))
		return false;
	PushActiveSnapshot(GetTransactionSnapshot());
	foreach(lc, pending.dropped_relids)
	{
		if (CatalogFindByResult(lfirst_oid(lc)) != NULL)
		{
			found = true;
			break;
		}
	}
	PopActiveSnapshot();
	return found;
}

/*
 * PRE_COMMIT, after process_drops: what a subtransaction asked for and
 * then rolled back is not done: drop the slots of the streams dropped and
 * of the savepoints whose rows are gone (drop_savepoint, rebuild_stream),
 * and rebuild the streams still there and marked restored.
 */
static void
keep_pending_committed(void)
{
	List	   *slots = NIL;
	List	   *adopt = NIL;
	ListCell   *lc;

	if (!OidIsValid(get_extension_oid("flowpg", true)))
		return;					/* the rows went with the extension */
	foreach(lc, pending.slots_to_drop)
	{
		Oid			db;
		int32		id;
		int64		spid;

		if (!FlowpgParseSavepointSlotName(NameStr(*(NameData *) lfirst(lc)), &db, &id, &spid) ||
			!CatalogSavepointExists(spid))
			slots = lappend(slots, lfirst(lc));
	}
	foreach(lc, pending.adopt)
	{
		StreamDef  *def = CatalogReadStream(((StreamIdentity *) lfirst(lc))->stream_id);

		if (def != NULL && def->restored)
			adopt = lappend(adopt, lfirst(lc));
	}
	pending.slots_to_drop = slots;
	pending.adopt = adopt;
}

static void
flowpg_xact_callback(XactEvent event, void *arg)
{
	ListCell   *lc;

	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (pending.create_active)
			{
				ReplicationSlotPersist();
				ReplicationSlotRelease();
				pending.create_active = false;
				pending.created = true;
			}
			foreach(lc, pending.dropped_dbs)
				forget_adopting(lfirst_oid(lc));
			if (pending.dropped_relids != NIL || pending.extension_dropped ||
				pending.given != NIL || pending.slots_to_drop != NIL ||
				pending.adopt != NIL)
			{
				/* the portal and its snapshot are gone by now */
				PushActiveSnapshot(GetTransactionSnapshot());
				process_drops();
				keep_pending_committed();
				/* a change in a subtransaction rolled back is no change */
				foreach(lc, pending.given)
				{
					StreamIdentity *given = lfirst(lc);
					StreamDef  *def = NULL;

					if (OidIsValid(get_extension_oid("flowpg", true)))
						def = CatalogReadStream(given->stream_id);
					given->owner = def != NULL ? def->owner : InvalidOid;
				}
				PopActiveSnapshot();
			}
			/* none may be held at COMMIT */
			foreach(lc, pending.slots_to_drop)
				DecodeAwaitSlotFree(NameStr(*(NameData *) lfirst(lc)));
			break;

		case XACT_EVENT_PRE_PREPARE:
			if (pending.create_active || drops_result_table() ||
				pending.extension_dropped || pending.held != NIL ||
				pending.slots_to_drop != NIL || pending.adopt != NIL ||
				pending.given != NIL || holds_change_locks())
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that changes a flowpg stream"),
						 errdetail("The transaction creates, drops, pauses, resumes, restores, rebuilds or gives away a stream, changes its checkpoint interval, or creates or drops a savepoint: what flowpg does at commit (replication slots, workers) cannot wait for COMMIT PREPARED.")));
			break;

		case XACT_EVENT_COMMIT:
			/* before the dropped streams' entries are freed for others */
			foreach(lc, pending.slots_to_drop)
				DecodeDropSlotAtCommit(NameStr(*(NameData *) lfirst(lc)));
			if (pending.created)
				ControlWakeLauncher();
			foreach(lc, pending.stopped)
			{
				StreamCtl  *ctl = lfirst(lc);

				LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
				ctl->in_use = false;
				ctl->dropping = false;
				LWLockRelease(&FlowCtl->lock);
			}
			/* before the held are let go: their launcher must adopt, not run them */
			foreach(lc, pending.adopt)
				AdoptRequest(lfirst(lc));
			release_held(true);
			/* a dropped database's streams may have left origins: sweep_origins */
			if (pending.copied_db || pending.dropped_dbs != NIL)
				ControlRequestRescan();
			foreach(lc, pending.given)
			{
				StreamIdentity *given = lfirst(lc);

				ControlRequestReload(given->dboid, given->stream_id, given->owner);
			}
			if (XactLastCommitEnd != last_woken_commit && FlowCtl != NULL &&
				OidIsValid(MyDatabaseId))
			{
				last_woken_commit = XactLastCommitEnd;
				ControlWakeDatabase(MyDatabaseId);
			}
			reset_pending();
			break;

		case XACT_EVENT_ABORT:
			if (pending.create_active && MyReplicationSlot != NULL)
				ReplicationSlotRelease();
			foreach(lc, pending.stopped)
			{
				StreamCtl  *ctl = lfirst(lc);

				LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
				ctl->dropping = false;
				LWLockRelease(&FlowCtl->lock);
			}
			if (pending.stopped != NIL)
				ControlWakeLauncher();
			release_held(false);
			reset_pending();
			break;

		case XACT_EVENT_PREPARE:
			/*
			 * Nothing of flowpg's is pending (PRE_PREPARE saw to that) but
			 * the tables dropped that were no result tables: their list
			 * goes with the transaction's memory.
			 */
			reset_pending();
			break;

		default:
			break;
	}
}

static void
flowpg_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						SubTransactionId parentSubid, void *arg)
{
	if (!pending.create_active || pending.create_subid != mySubid)
		return;
	if (event == SUBXACT_EVENT_COMMIT_SUB)
		pending.create_subid = parentSubid;
	else if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		if (MyReplicationSlot != NULL)
			ReplicationSlotRelease();
		pending.create_active = false;
	}
}

/* Note dropped tables (maybe result tables) and a dropped extension. */
static void
flowpg_object_access(ObjectAccessType access, Oid classId, Oid objectId,
					 int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access != OAT_DROP || !IsTransactionState())
		return;

	if (classId == RelationRelationId && subId == 0 &&
		get_rel_relkind(objectId) == RELKIND_RELATION)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);

		pending.dropped_relids = lappend_oid(pending.dropped_relids, objectId);
		MemoryContextSwitchTo(oldcxt);
	}
	else if (classId == ExtensionRelationId &&
			 objectId == get_extension_oid("flowpg", true))
	{
		pending.extension_dropped = true;
		pending.dropped_extension = objectId;
	}
	else if (classId == DatabaseRelationId && FlowCtl != NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);

		pending.dropped_dbs = lappend_oid(pending.dropped_dbs, objectId);
		MemoryContextSwitchTo(oldcxt);
	}
}

/*
 * Is relid a stream's result table?  Each depends on the flowpg extension
 * (CompileRecordDependencies), without being a member of it.
 */
static bool
is_result_table(Oid relid, Oid extension)
{
	Relation	depend = table_open(DependRelationId, AccessShareLock);
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found = false;

	ScanKeyInit(&key[0], Anum_pg_depend_classid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(RelationRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_objid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(depend, DependDependerIndexId, true, NULL, 2, key);
	while (!found && HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tuple);

		found = dep->refclassid == ExtensionRelationId &&
			dep->refobjid == extension && dep->deptype == DEPENDENCY_AUTO;
	}
	systable_endscan(scan);
	table_close(depend, AccessShareLock);
	return found;
}

/* Is relid a stream's result table, in a database that has flowpg? */
static bool
is_result_here(Oid relid)
{
	Oid			extension = get_extension_oid("flowpg", true);

	return OidIsValid(extension) && is_result_table(relid, extension);
}

/*
 * The result table of a stream that uses column attnum of relid, or, for
 * attnum 0, of a stream that reads relid at all (a result table depends
 * on the source's columns it uses, or on the whole table if none), if
 * there is one.
 */
static Oid
column_user(Oid relid, AttrNumber attnum)
{
	Oid			extension = get_extension_oid("flowpg", true);
	Relation	depend;
	ScanKeyData key[3];
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			user = InvalidOid;

	if (!OidIsValid(extension))
		return InvalidOid;
	depend = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(RelationRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	ScanKeyInit(&key[2], Anum_pg_depend_refobjsubid, BTEqualStrategyNumber,
				F_INT4EQ, Int32GetDatum(attnum));
	scan = systable_beginscan(depend, DependReferenceIndexId, true, NULL,
							  attnum == 0 ? 2 : 3, key);
	while (!OidIsValid(user) && HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tuple);

		if (dep->classid == RelationRelationId && dep->objid != relid &&
			get_rel_relkind(dep->objid) == RELKIND_RELATION &&
			is_result_table(dep->objid, extension))
			user = dep->objid;
	}
	systable_endscan(scan);
	table_close(depend, AccessShareLock);
	return user;
}

/* The table an ALTER TABLE statement alters, if it exists. */
static Oid
altered_table(AlterTableStmt *stmt)
{
	if (stmt->objtype != OBJECT_TABLE)
		return InvalidOid;
	return RangeVarGetRelid(stmt->relation, NoLock, true);
}

/*
 * A stream belongs to the owner of its result table.  ALTER TABLE ...
 * OWNER TO of a result table, and REASSIGN OWNED (which changes the owner
 * of a role's tables in this database), give the stream to the new owner:
 * after the statement, in its transaction, give_streams checks that the
 * new owner may run the stream, records it, and has the worker start
 * again as the new owner once the transaction commits (a worker connects
 * as the owner the catalog names: see ControlConnect).  A role that owns
 * streams cannot be dropped (it owns their result tables); DROP OWNED BY
 * drops them with their result tables.
 */

/* Refuse a role that cannot own streams: their workers connect as it. */
void
CatalogCheckCanOwn(Oid role)
{
	HeapTuple	tuple = SearchSysCache1(AUTHOID, ObjectIdGetDatum(role));
	bool		canlogin;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for role %u", role);
	canlogin = ((Form_pg_authid) GETSTRUCT(tuple))->rolcanlogin;
	ReleaseSysCache(tuple);
	if (!canlogin)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("role \"%s\" cannot own a stream because it cannot log in",
						GetUserNameFromId(role, false)),
				 errdetail("A stream's worker connects to the database as the stream's owner."),
				 errhint("Give streams to roles with LOGIN.")));
}

/* The streams of this database owned by the role. */
static List *
streams_owned_by(Oid role)
{
	if (!OidIsValid(get_extension_oid("flowpg", true)))
		return NIL;
	return catalog_query(STREAM_SELECT "WHERE s.owner::pg_catalog.oid OPERATOR(pg_catalog.=) $1 "
						 "ORDER BY s.id",
						 OIDOID, ObjectIdGetDatum(role));
}

static void
new_owner_context(void *arg)
{
	StreamDef  *def = arg;

	errcontext("checking that role %s, the new owner of stream \"%s\", may run it",
			   GetUserNameFromId(def->owner, true), FlowpgLabel(def->name));
}

/*
 * A stream goes only to a role whose privileges its owner has (a role it
 * is a member of, with INHERIT; any role, from a superuser).  The stream
 * runs in the background, as its owner, whenever rows come, code its
 * owner chose and may change: the functions its query calls (and what
 * they call, through the stream's search_path), its domains, and its
 * result table's triggers (the owner may also have granted TRIGGER on it),
 * index expressions, constraints, defaults.  Given to a role with more
 * privileges (a superuser, by ALTER TABLE ... OWNER TO or REASSIGN OWNED),
 * that code ran with them: a trigger of the old owner's made the old
 * owner a superuser at the next checkpoint.  Which code that is cannot be
 * told for sure (a composite type's domain field, a function that changes
 * after the handover, a trusted function resolving names through the old
 * owner's schemas); who could run as the new owner anyway can, as
 * PostgreSQL 16 asks of a subscription's owner towards the tables whose
 * triggers it runs.  Checked before anything runs as the new owner.
 */
static void
check_no_escalation(StreamDef *def, Oid old_owner)
{
	char	   *old_name;
	char	   *new_name;

	/* none: a row inserted by hand, or by pg_restore */
	if (!OidIsValid(old_owner) || has_privs_of_role(old_owner, def->owner))
		return;
	old_name = GetUserNameFromId(old_owner, true);
	new_name = GetUserNameFromId(def->owner, false);
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("stream \"%s\" cannot be given to role %s, whose privileges its owner %s does not have",
					FlowpgLabel(def->name), new_name,
					old_name != NULL ? old_name : "(dropped)"),
			 errdetail("A stream runs the code its owner chose (its functions, its result table's triggers) as its owner, in the background: given to role %s, that code would run with privileges its author lacks.",
					   new_name),
			 errhint("Give it to a role that %s is a member of; or, to take it over, drop it and create it again as role %s (flowpg.rebuild_stream then counts the rows already in its source), after checking the code it runs.",
					 old_name != NULL ? old_name : "its owner", new_name)));
}

/*
 * Check what create_stream checks, as the stream's new owner: LOGIN,
 * SELECT on the source, no row security that applies, EXECUTE on the
 * aggregates and functions; and, before anything runs as the new owner,
 * that the old owner has its privileges.  Compiling the plan may run the owner's
 * functions (on constants), so as REFRESH MATERIALIZED VIEW does, in a
 * security-restricted operation whose settings (the stream's) do not
 * outlive it.  A restored stream not rebuilt yet has no plan: its adopter
 * checks, as the new owner.
 */
static void
check_new_owner(StreamDef *def, Oid old_owner)
{
	Oid			save_user;
	int			save_sec;
	int			nest;
	ErrorContextCallback callback;
	FlowQuery  *fq;

	callback.callback = new_owner_context;
	callback.arg = def;
	callback.previous = error_context_stack;
	error_context_stack = &callback;
	CatalogCheckCanOwn(def->owner);
	check_no_escalation(def, old_owner);
	if (!def->restored)
	{
		GetUserIdAndSecContext(&save_user, &save_sec);
		SetUserIdAndSecContext(def->owner, save_sec | SECURITY_RESTRICTED_OPERATION);
		nest = NewGUCNestLevel();
		/* with the stream's settings, as its worker compiles it */
		CompileApplySettings(def->settings, GUC_ACTION_SAVE);
		fq = CompileQueryTree(stringToNode(def->plan));
		CompileCheckPermissions(fq);
		(void) PlanBuild(fq);
		AtEOXact_GUC(false, nest);
		SetUserIdAndSecContext(save_user, save_sec);
	}
	error_context_stack = callback.previous;
}

/* The stream's result table has another owner: the stream is theirs now. */
static void
give_stream(StreamDef *def)
{
	Oid			owner = CatalogTableOwner(def->result);
	Oid			old_owner = def->owner;
	MemoryContext oldcxt;
	StreamIdentity *given;

	if (!OidIsValid(owner) || owner == def->owner)
		return;
	def->owner = owner;
	check_new_owner(def, old_owner);
	CatalogUpdateStream(def);
	oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	given = palloc(sizeof(StreamIdentity));
	given->dboid = MyDatabaseId;
	given->stream_id = def->id;
	given->owner = InvalidOid;	/* read at PRE_COMMIT: a savepoint may undo this */
	pending.given = lappend(pending.given, given);
	MemoryContextSwitchTo(oldcxt);
	ereport(NOTICE,
			(errmsg("stream \"%s\" now belongs to role %s",
					FlowpgLabel(def->name), GetUserNameFromId(owner, false)),
			 errdetail("Its worker runs as its owner: it starts again as the new owner once the transaction commits.")));
}

/*
 * At a worker's start: a result table that changed hands where flowpg
 * could not follow (REASSIGN OWNED on a server that did not preload it,
 * which no event trigger sees) gives its stream to its owner now.
 */
void
CatalogFollowTableOwner(StreamDef *def)
{
	give_stream(def);
}

/* After ALTER TABLE ... OWNER TO or REASSIGN OWNED: see above. */
static void
give_streams(Node *stmt)
{
	ListCell   *lc;

	if (!OidIsValid(get_extension_oid("flowpg", true)))
		return;
	CommandCounterIncrement();	/* see the new owners */
	if (IsA(stmt, AlterTableStmt))
	{
		Oid			relid = altered_table((AlterTableStmt *) stmt);
		StreamDef  *def;

		if (OidIsValid(relid) && is_result_here(relid) &&
			(def = CatalogFindByResult(relid)) != NULL)
			give_stream(def);
		return;
	}
	foreach(lc, castNode(ReassignOwnedStmt, stmt)->roles)
	{
		Oid			role = get_rolespec_oid(lfirst(lc), true);
		ListCell   *lc2;

		if (OidIsValid(role))
			foreach(lc2, streams_owned_by(role))
				give_stream(lfirst(lc2));
	}
}

/* Does ALTER TABLE change the owner? */
static bool
changes_owner(AlterTableStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->cmds)
		if (lfirst_node(AlterTableCmd, lc)->subtype == AT_ChangeOwner)
			return true;
	return false;
}

/*
 * DROP ROLE of a stream's owner: PostgreSQL refuses it anyway (the role
 * owns the result table, in whichever database); in this database, say
 * which stream and what to do.
 */
static void
check_drop_role(DropRoleStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->roles)
	{
		RoleSpec   *spec = lfirst(lc);
		Oid			role;
		List	   *defs;
		StreamDef  *def;

		if (spec->roletype != ROLESPEC_CSTRING ||
			!OidIsValid(role = get_role_oid(spec->rolename, true)))
			continue;
		defs = streams_owned_by(role);
		def = defs != NIL ? linitial(defs) : NULL;
		if (def != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
					 errmsg("role \"%s\" cannot be dropped because it owns a flowpg stream",
							spec->rolename),
					 errdetail("The role owns stream \"%s\"; streams run as their owner.",
							   FlowpgLabel(def->name)),
					 errhint("Give the role's streams to another role (REASSIGN OWNED BY %s TO ...), or drop them (DROP OWNED BY drops them with their result tables), in each database.",
							 quote_identifier(spec->rolename))));
	}
}

/*
 * The result table of a stream whose source is relid or, for a partition,
 * one of the tables it is a partition of (InvalidOid if none); *source is
 * that source.
 */
static Oid
source_user(Oid relid, Oid *source)
{
	Oid			user = column_user(relid, 0);

	*source = relid;
	if (!OidIsValid(user) && get_rel_relispartition(relid))
	{
		ListCell   *lc;

		foreach(lc, get_partition_ancestors(relid))
		{
			user = column_user(lfirst_oid(lc), 0);
			if (OidIsValid(user))
			{
				*source = lfirst_oid(lc);
				break;
			}
		}
	}
	return user;
}

/*
 * A stream's result table, named as flowpg.streams names the stream
 * (schema-qualified), for messages.
 */
static char *
stream_label(Oid result)
{
	return psprintf("%s.%s", get_namespace_name(get_rel_namespace(result)),
					get_rel_name(result));
}

/*
 * Refuse what would make a source deliver rows its stream cannot see, or
 * a result table lose rows at a crash: an unlogged source, or partition
 * of one, writes no WAL to decode, an unlogged result table is emptied by
 * crash recovery, and a source's inheritance children hold rows the
 * stream's query reads.
 */
static void
check_source_change(Oid relid, bool unlogged)
{
	Oid			source;
	Oid			user = unlogged ? source_user(relid, &source) : column_user(relid, 0);

	if (OidIsValid(user))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 unlogged ?
				 errmsg("cannot make table \"%s\" unlogged", get_rel_name(relid)) :
				 errmsg("cannot inherit from table \"%s\"", get_rel_name(relid)),
				 unlogged && source != relid ?
				 errdetail("It is a partition of \"%s\", the source of the stream whose result table is \"%s\".",
						   get_rel_name(source), stream_label(user)) :
				 errdetail("It is the source of the stream whose result table is \"%s\".",
						   stream_label(user)),
				 errhint("Drop the stream first.")));
	if (unlogged && is_result_here(relid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot make table \"%s\" unlogged", get_rel_name(relid)),
				 errdetail("It is the result table of a stream, whose rows must survive a crash."),
				 errhint("Drop the stream first.")));
}

/* A table that is to inherit from parent (which may not exist). */
static void
check_new_parent(RangeVar *parent)
{
	Oid			relid = RangeVarGetRelid(parent, NoLock, true);

	if (OidIsValid(relid))
		check_source_change(relid, false);
}

/*
 * A source, or a partition of one, would get a table access method other
 * than heap (whose handler is not heap's): its rows would not be in the
 * WAL as decoding reads them.  relid is the table, or InvalidOid for a
 * new partition of parent; source is the source, user its stream's
 * result table.
 */
static void
refuse_access_method(Oid relid, const char *amname, Oid parent, Oid source,
					 Oid user)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 OidIsValid(relid) ?
			 errmsg("cannot set access method \"%s\" for table \"%s\"",
					amname, get_rel_name(relid)) :
			 errmsg("cannot create a partition of access method \"%s\" of table \"%s\"",
					amname, get_rel_name(parent)),
			 relid == source ?
			 errdetail("It is the source of the stream whose result table is \"%s\".",
					   stream_label(user)) :
			 errdetail("Table \"%s\" is the source of the stream whose result table is \"%s\".",
					   get_rel_name(source), stream_label(user)),
			 errhint("Streams decode the heap's records in the write-ahead log; other table access methods write other records.")));
}

/* ALTER TABLE ... SET ACCESS METHOD of a source or a partition of one */
static void
check_set_access_method(Oid relid, const char *amname)
{
	Oid			source;
	Oid			user;

	if (amname != NULL &&
		!CompileAccessMethodIsHeap(get_table_am_oid(amname, false)) &&
		OidIsValid(user = source_user(relid, &source)))
		refuse_access_method(relid, amname, InvalidOid, source, user);
}

/*
 * CREATE TABLE ... INHERITS (a source); CREATE [UNLOGGED | FOREIGN] TABLE
 * ... PARTITION OF a source or a partition of one (a new partition of a
 * source must be logged: its rows are the source's).
 */
static void
check_create_table(CreateStmt *stmt, bool foreign)
{
	ListCell   *lc;
	Oid			parent;
	Oid			source;
	Oid			user;
	const char *amname;

	if (stmt->partbound == NULL)
	{
		foreach(lc, stmt->inhRelations)
			check_new_parent(lfirst_node(RangeVar, lc));
		return;
	}
	if (list_length(stmt->inhRelations) != 1)
		return;					/* PostgreSQL refuses it */
	parent = RangeVarGetRelid(linitial_node(RangeVar, stmt->inhRelations), NoLock, true);
	if (!OidIsValid(parent) || !OidIsValid(user = source_user(parent, &source)))
		return;
	amname = stmt->accessMethod ? stmt->accessMethod : default_table_access_method;
	if (!foreign && stmt->partspec == NULL &&
		!CompileAccessMethodIsHeap(get_table_am_oid(amname, false)))
		refuse_access_method(InvalidOid, amname, parent, source, user);
	if (foreign || stmt->relation->relpersistence != RELPERSISTENCE_PERMANENT)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot create %s partition of stream source \"%s\"",
						foreign ? "a foreign table as a" :
						stmt->relation->relpersistence == RELPERSISTENCE_TEMP ?
						"a temporary" : "an unlogged",
						get_rel_name(source)),
				 errhint("A stream reads its source's rows from the write-ahead log as heap tables write them; make every partition an ordinary logged heap table.")));
}

/*
 * The tables an ALTER TABLE ... ATTACH PARTITION to a source, or to a
 * partition of one, brings (the table and, if it is partitioned, its
 * partitions), and *source that source; NIL for any other command.
 */
static List *
attached_tables(Oid parent, AlterTableCmd *cmd, Oid *source)
{
	Oid			table;

	if (cmd->subtype != AT_AttachPartition)
		return NIL;
	table = RangeVarGetRelid(castNode(PartitionCmd, cmd->def)->name, NoLock, true);
	if (!OidIsValid(table) || !OidIsValid(source_user(parent, source)))
		return NIL;
	return find_all_inheritors(table, NoLock, NULL);
}

/* ATTACH PARTITION to a source: every table it brings must be logged heap. */
static void
check_attach(Oid parent, AlterTableCmd *cmd)
{
	Oid			source;
	ListCell   *lc;

	foreach(lc, attached_tables(parent, cmd, &source))
		CompileCheckPartition(lfirst_oid(lc), source, true);
}

/* Does a table hold a row (that the latest snapshot sees)? */
static bool
has_rows(Oid relid)
{
	Relation	rel = table_open(relid, AccessShareLock);
	TableScanDesc scan = table_beginscan(rel, GetLatestSnapshot(), 0, NULL);
	bool		rows = heap_getnext(scan, ForwardScanDirection) != NULL;

	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return rows;
}

/*
 * Once PostgreSQL has attached a partition to a source (and holds its
 * lock): warn that the rows it already held are not counted, for a stream
 * counts the rows inserted into its source.
 */
static void
warn_attached_rows(Oid parent, AlterTableCmd *cmd)
{
	Oid			source;
	ListCell   *lc;

	foreach(lc, attached_tables(parent, cmd, &source))
	{
		Oid			part = lfirst_oid(lc);

		if (get_rel_relkind(part) == RELKIND_RELATION && has_rows(part))
		{
			ereport(WARNING,
					(errmsg("the rows already in table \"%s\" are not counted by the streams that read \"%s\"",
							get_rel_name(part), get_rel_name(source)),
					 errdetail("A stream counts the rows inserted into its source after it was created; these were in the table before it became a partition."),
					 errhint("flowpg.rebuild_stream computes a stream again over every row of its source.")));
			break;
		}
	}
}

/*
 * A result table's columns are its stream's output columns, in order and
 * of the same types: the worker writes them as such.  A column added,
 * dropped or changed in type would stop the stream at its next checkpoint
 * (for a dropped column, for good), so refuse it up front.  Renaming a
 * column is fine: the worker prepares its statements again after any
 * change of the table (prepare_result in checkpoint.c).
 */
static void
check_result_columns(Oid relid, AlterTableCmd *cmd)
{
	StreamDef  *def;
	const char *what;

	if (IsBinaryUpgrade || !is_result_here(relid))
		return;
	def = CatalogFindByResult(relid);
	if (cmd->subtype == AT_AddColumn)
		what = psprintf("cannot add a column to table \"%s\"", get_rel_name(relid));
	else if (cmd->subtype == AT_DropColumn)
		what = psprintf("cannot drop column \"%s\" of table \"%s\"",
						cmd->name, get_rel_name(relid));
	else
		what = psprintf("cannot alter type of column \"%s\" of table \"%s\"",
						cmd->name, get_rel_name(relid));
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg_internal("%s", what),
			 errdetail("It is the result table of stream \"%s\", whose columns are the stream's output columns.",
					   def ? FlowpgLabel(def->name) : get_rel_name(relid)),
			 errhint("Create a view over the table for other columns; to change the query, drop the stream and create it again.")));
}

/*
 * The tables of a composite type (CREATE TABLE ... OF type), which ALTER
 * TYPE ... ADD, DROP or ALTER ATTRIBUTE ... CASCADE changes, with their
 * inheritors.
 */
static List *
typed_tables(RangeVar *type)
{
	Oid			typrelid = RangeVarGetRelid(type, NoLock, true);
	Oid			typid;
	List	   *rels = NIL;
	Relation	class;
	ScanKeyData key;
	TableScanDesc scan;
	HeapTuple	tuple;

	if (!OidIsValid(typrelid) || !OidIsValid(typid = get_rel_type_id(typrelid)))
		return NIL;
	class = table_open(RelationRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_class_reloftype, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(typid));
	scan = table_beginscan_catalog(class, 1, &key);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
		rels = list_concat(rels, find_all_inheritors(((Form_pg_class) GETSTRUCT(tuple))->oid,
													 NoLock, NULL));
	table_endscan(scan);
	table_close(class, AccessShareLock);
	return rels;
}

/*
 * ALTER TABLE: refuse SET UNLOGGED and INHERIT of the kinds above, column
 * changes of result tables (also through a parent they were attached to,
 * or through their composite type, ALTER TYPE ... CASCADE),
 * and ALTER COLUMN ... TYPE of a column a stream uses, clearly (PostgreSQL
 * itself would fail with an internal error on the dependency of the result
 * table).
 */
static void
check_alter_table(AlterTableStmt *stmt)
{
	Oid			relid = altered_table(stmt);
	List	   *rels;
	ListCell   *lc;

	if (stmt->objtype == OBJECT_TYPE)
		rels = typed_tables(stmt->relation);
	else if (OidIsValid(relid))
		rels = find_all_inheritors(relid, NoLock, NULL);
	else
		return;
	foreach(lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst(lc);
		ListCell   *lc2;

		if (OidIsValid(relid))
		{
			if (cmd->subtype == AT_SetUnLogged)
				check_source_change(relid, true);
			if (cmd->subtype == AT_AddInherit)
				check_new_parent(castNode(RangeVar, cmd->def));
			check_attach(relid, cmd);
			if (cmd->subtype == AT_SetAccessMethod)
				check_set_access_method(relid, cmd->name);
		}
		if (cmd->subtype == AT_AddColumn || cmd->subtype == AT_DropColumn ||
			cmd->subtype == AT_AlterColumnType)
			foreach(lc2, rels)
				check_result_columns(lfirst_oid(lc2), cmd);
		if (cmd->subtype != AT_AlterColumnType)
			continue;
		foreach(lc2, rels)
		{
			Oid			rel = lfirst_oid(lc2);
			AttrNumber	attnum = get_attnum(rel, cmd->name);
			Oid			user;

			if (attnum == InvalidAttrNumber)
				continue;
			user = column_user(rel, attnum);
			if (OidIsValid(user))
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot alter type of column \"%s\" of table \"%s\"",
								cmd->name, get_rel_name(rel)),
						 errdetail("Table \"%s\" depends on it; it is the result table of a stream.",
								   stream_label(user)),
						 errhint("Drop the stream, alter the column, and create the stream again.")));
		}
	}
}

/* Do the two pg_index rows make the same unique index? */
static bool
same_unique_index(HeapTuple a, HeapTuple b)
{
	Form_pg_index fa = (Form_pg_index) GETSTRUCT(a);
	Form_pg_index fb = (Form_pg_index) GETSTRUCT(b);
	AttrNumber	cols[2] = {Anum_pg_index_indexprs, Anum_pg_index_indpred};
	int			i;

	if (!fa->indisunique || !fb->indisunique || !fb->indisvalid ||
		fa->indimmediate != fb->indimmediate ||
		fa->indnullsnotdistinct != fb->indnullsnotdistinct ||
		fa->indnkeyatts != fb->indnkeyatts ||
		memcmp(fa->indkey.values, fb->indkey.values,
			   sizeof(int16) * fa->indnkeyatts) != 0)
		return false;
	for (i = 0; i < 2; i++)
	{
		bool		nulla;
		bool		nullb;
		Datum		da = SysCacheGetAttr(INDEXRELID, a, cols[i], &nulla);
		Datum		db = SysCacheGetAttr(INDEXRELID, b, cols[i], &nullb);

		if (nulla != nullb ||
			(!nulla && strcmp(TextDatumGetCString(da), TextDatumGetCString(db)) != 0))
			return false;
	}
	/* keys compared alike: the same collations and operator classes */
	for (i = 0; i < 2; i++)
	{
		AttrNumber	attr = i == 0 ? Anum_pg_index_indcollation : Anum_pg_index_indclass;
		bool		isnull;
		oidvector  *va = (oidvector *) DatumGetPointer(SysCacheGetAttr(INDEXRELID, a, attr, &isnull));
		oidvector  *vb = (oidvector *) DatumGetPointer(SysCacheGetAttr(INDEXRELID, b, attr, &isnull));

		if (memcmp(va->values, vb->values, sizeof(Oid) * fa->indnkeyatts) != 0)
			return false;
	}
	return true;
}

/*
 * Has the index the shape of the one a stream needs (see is_key_index in
 * checkpoint.c): unique, immediate, not partial, and with NULLs not
 * distinct or on an expression (the constant of a global aggregate)?
 */
static bool
could_be_key_index(HeapTuple tuple)
{
	Form_pg_index form = (Form_pg_index) GETSTRUCT(tuple);

	return form->indisunique && form->indimmediate &&
		heap_attisnull(tuple, Anum_pg_index_indpred, NULL) &&
		(form->indnullsnotdistinct ||
		 !heap_attisnull(tuple, Anum_pg_index_indexprs, NULL));
}

/*
 * Does the result table keep another index that does what this unique
 * one does?
 */
static bool
has_twin_index(Oid table, Oid index, HeapTuple tuple)
{
	Relation	rel = table_open(table, AccessShareLock);
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	bool		found = false;

	table_close(rel, AccessShareLock);
	foreach(lc, indexes)
	{
		HeapTuple	other;

		if (lfirst_oid(lc) == index)
			continue;
		other = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		if (!HeapTupleIsValid(other))
			continue;
		found = same_unique_index(tuple, other);
		ReleaseSysCache(other);
		if (found)
			break;
	}
	return found;
}

/*
 * DROP INDEX of a result table's unique index, unless another index like
 * it stays: a checkpoint relies on it to keep one row per key, so the
 * worker stops until the index is back (see check_key_index in
 * checkpoint.c).  Warn, but do not refuse: pg_restore --clean drops a
 * table's indexes before the table.
 */
static void
check_drop_index(DropStmt *stmt)
{
	Oid			extension = get_extension_oid("flowpg", true);
	ListCell   *lc;

	if (stmt->removeType != OBJECT_INDEX || !OidIsValid(extension))
		return;
	foreach(lc, stmt->objects)
	{
		RangeVar   *rv = makeRangeVarFromNameList(lfirst(lc));
		Oid			index = RangeVarGetRelid(rv, NoLock, true);
		Oid			table;
		HeapTuple	tuple;
		bool		needed;
		StreamDef  *def;

		if (!OidIsValid(index) || get_rel_relkind(index) != RELKIND_INDEX)
			continue;
		table = IndexGetRelation(index, true);
		if (!OidIsValid(table) || !is_result_table(table, extension))
			continue;
		tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(index));
		if (!HeapTupleIsValid(tuple))
			continue;
		needed = could_be_key_index(tuple) && !has_twin_index(table, index, tuple);
		ReleaseSysCache(tuple);
		if (!needed)
			continue;
		def = CatalogFindByResult(table);
		ereport(WARNING,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("index %s is the unique index of the result table of stream \"%s\"",
						get_rel_name(index), def ? FlowpgLabel(def->name) : get_rel_name(table)),
				 errdetail("The stream keeps one row per key through it: it stops at its next checkpoint, until the table has that index again."),
				 errhint("Create it again: %s", pg_get_indexdef_string(index))));
	}
}

/*
 * ALTER DATABASE ... RENAME TO wants the database to have no sessions,
 * and the workers (and rebuilds) of its streams are sessions:
 * PostgreSQL would wait 5 s for them, then fail.  Stop them
 * until this transaction ends, as flowpg.restore does; the launcher then
 * starts them again, and each resumes from its checkpoint (the database
 * keeps its oid, which the streams' slots name).  CREATE DATABASE ...
 * TEMPLATE wants its template without sessions too.  DROP DATABASE wants
 * none, and refused a database whose slots are in use: with the workers
 * stopped, PostgreSQL drops the slots, and the launcher forgets the
 * streams (their origins go in the scan after the commit); if the drop
 * fails, the streams start again, as after a rename.  Returns whether the
 * database has streams that run.
 */
static bool
hold_database_streams(const char *dbname)
{
	Oid			dboid = get_database_oid(dbname, true);
	List	   *slots;
	List	   *adopting;
	ListCell   *lc;

	/* only for its owner: PostgreSQL refuses anyone else to rename it */
	if (!OidIsValid(dboid) || FlowCtl == NULL ||
		!pg_database_ownercheck(dboid, GetUserId()))
		return false;
	slots = ControlListSlots(dboid);
	adopting = ControlListAdopting(dboid);
	foreach(lc, slots)
		StreamHold(dboid, ((StreamIdentity *) lfirst(lc))->stream_id);
	foreach(lc, adopting)
		StreamHold(dboid, ((StreamCtl *) lfirst(lc))->stream_id);
	return slots != NIL || adopting != NIL;
}

/*
 * Is a DROP DATABASE one that PostgreSQL does not refuse at once (in a
 * transaction block, of the database this session is in, of a template)?
 * Only then are the database's streams stopped for it: each restart
 * reads a stream's state again.
 */
static bool
drop_may_succeed(DropdbStmt *stmt, ProcessUtilityContext context)
{
	Oid			dboid = get_database_oid(stmt->dbname, true);
	HeapTuple	tuple;
	bool		template;

	if (context != PROCESS_UTILITY_TOPLEVEL || IsTransactionBlock() ||
		IsSubTransaction() || !OidIsValid(dboid) || dboid == MyDatabaseId)
		return false;
	tuple = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(dboid));
	if (!HeapTupleIsValid(tuple))
		return false;
	template = ((Form_pg_database) GETSTRUCT(tuple))->datistemplate;
	ReleaseSysCache(tuple);
	return !template;
}

/*
 * CREATE DATABASE copies its template (template1 unless it names one),
 * and needs it without sessions.  For the template's owner, its streams'
 * workers stop until the statement is over; the copy's streams, which
 * have no slots, are rebuilt from their source tables once it commits
 * (CatalogRebuildCopies, from a scan the launcher is asked for).
 */
static void
hold_template_streams(CreatedbStmt *stmt)
{
	const char *template = "template1";
	ListCell   *lc;

	foreach(lc, stmt->options)
	{
		DefElem    *opt = lfirst_node(DefElem, lc);

		if (strcmp(opt->defname, "template") == 0 && opt->arg != NULL)
			template = defGetString(opt);
	}
	if (hold_database_streams(template))
		pending.copied_db = true;
}

/* Does ALTER DATABASE move the database to another tablespace? */
static bool
moves_database(AlterDatabaseStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->options)
		if (strcmp(lfirst_node(DefElem, lc)->defname, "tablespace") == 0)
			return true;
	return false;
}

/*
 * ALTER DATABASE ... SET TABLESPACE is refused while the database has
 * streams (for its owner; PostgreSQL refuses anyone else).  The WAL
 * written before the move names the database's relations by their old
 * tablespace, which PostgreSQL's decoding can no longer map to them
 * ("could not map filenode"): a stream, or a savepoint restored, that
 * decoded any of it after the move failed at every start, for good.
 * Every stream has some (what it applied since its last confirmed
 * checkpoint, the other streams' checkpoints).
 */
static void
check_database_move(AlterDatabaseStmt *stmt)
{
	Oid			dboid = get_database_oid(stmt->dbname, true);

	if (!OidIsValid(dboid) || FlowCtl == NULL ||
		!pg_database_ownercheck(dboid, GetUserId()))
		return;
	if (ControlDatabaseHasSlots(dboid) || ControlListAdopting(dboid) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot move database \"%s\" to another tablespace while it has flowpg streams",
						stmt->dbname),
				 errdetail("The streams would decode WAL written before the move, whose tables PostgreSQL can no longer identify."),
				 errhint("Move its tables instead with ALTER TABLE ... SET TABLESPACE (or ALTER TABLE ALL IN TABLESPACE), which streams follow; or drop its streams first, and create them again after the move.")));
}

/* After ALTER TABLE: warn about rows an attached partition brought. */
static void
check_attached(AlterTableStmt *stmt)
{
	Oid			relid = altered_table(stmt);
	ListCell   *lc;

	if (!OidIsValid(relid))
		return;
	foreach(lc, stmt->cmds)
		warn_attached_rows(relid, lfirst_node(AlterTableCmd, lc));
}

/* Does the statement change the name or schema of an object? */
static bool
renames_objects(Node *stmt)
{
	if (IsA(stmt, RenameStmt) || IsA(stmt, AlterObjectSchemaStmt))
		return true;
	/* ALTER TYPE ... RENAME VALUE: a constant of the enum deparses anew */
	return IsA(stmt, AlterEnumStmt) && ((AlterEnumStmt *) stmt)->oldVal != NULL;
}

/*
 * flowpg's SQL, its workers' and its functions', names its schema: it is
 * not relocatable, and renaming the schema would leave the catalog where
 * nothing finds it.
 */
static void
check_rename_schema(RenameStmt *stmt)
{
	if (strcmp(stmt->subname, "flowpg") == 0 &&
		OidIsValid(get_extension_oid("flowpg", true)))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot rename schema \"flowpg\" of extension flowpg"),
				 errdetail("flowpg finds its catalog and functions in the schema by its name.")));
}

/*
 * ALTER SCHEMA flowpg OWNER TO a role that is not a superuser: that role
 * could drop every stream of every role with the schema, or shadow
 * flowpg's functions; and a dump restored the owner before CREATE
 * EXTENSION, which refuses such a schema (see flowpg--0.1.sql).
 */
static void
check_schema_owner(AlterOwnerStmt *stmt)
{
	Oid			owner;

	if (stmt->objectType != OBJECT_SCHEMA ||
		strcmp(strVal(stmt->object), "flowpg") != 0 ||
		!OidIsValid(get_extension_oid("flowpg", true)))
		return;
	owner = get_rolespec_oid(stmt->newowner, true);
	if (OidIsValid(owner) && !superuser_arg(owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("schema \"flowpg\" of extension flowpg can only be owned by a superuser"),
				 errdetail("Its owner could drop or shadow flowpg's objects, every role's streams with them."),
				 errhint("Leave the schema to a superuser.")));
}

static void
flowpg_process_utility(PlannedStmt *pstmt, const char *queryString,
					   bool readOnlyTree, ProcessUtilityContext context,
					   ParamListInfo params, QueryEnvironment *queryEnv,
					   DestReceiver *dest, QueryCompletion *qc)
{
	bool		moved = false;

	if (IsA(pstmt->utilityStmt, AlterTableStmt))
		check_alter_table((AlterTableStmt *) pstmt->utilityStmt);
	else if (IsA(pstmt->utilityStmt, CreateStmt))
		check_create_table((CreateStmt *) pstmt->utilityStmt, false);
	else if (IsA(pstmt->utilityStmt, CreateForeignTableStmt))
		check_create_table(&((CreateForeignTableStmt *) pstmt->utilityStmt)->base, true);
	else if (IsA(pstmt->utilityStmt, DropRoleStmt))
		check_drop_role((DropRoleStmt *) pstmt->utilityStmt);
	else if (IsA(pstmt->utilityStmt, DropStmt))
		check_drop_index((DropStmt *) pstmt->utilityStmt);
	else if (IsA(pstmt->utilityStmt, RenameStmt) &&
			 ((RenameStmt *) pstmt->utilityStmt)->renameType == OBJECT_DATABASE)
		(void) hold_database_streams(((RenameStmt *) pstmt->utilityStmt)->subname);
	else if (IsA(pstmt->utilityStmt, RenameStmt) &&
			 ((RenameStmt *) pstmt->utilityStmt)->renameType == OBJECT_SCHEMA)
		check_rename_schema((RenameStmt *) pstmt->utilityStmt);
	else if (IsA(pstmt->utilityStmt, AlterOwnerStmt))
		check_schema_owner((AlterOwnerStmt *) pstmt->utilityStmt);
	else if (IsA(pstmt->utilityStmt, AlterDatabaseStmt) &&
			 moves_database((AlterDatabaseStmt *) pstmt->utilityStmt))
	{
		check_database_move((AlterDatabaseStmt *) pstmt->utilityStmt);
		moved = true;
	}
	else if (IsA(pstmt->utilityStmt, CreatedbStmt))
		hold_template_streams((CreatedbStmt *) pstmt->utilityStmt);
	else if (IsA(pstmt->utilityStmt, DropdbStmt) &&
			 drop_may_succeed((DropdbStmt *) pstmt->utilityStmt, context))
		(void) hold_database_streams(((DropdbStmt *) pstmt->utilityStmt)->dbname);
	if (prev_process_utility_hook)
		prev_process_utility_hook(pstmt, queryString, readOnlyTree, context,
								  params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	/*
	 * Moving a database (one without streams) logs the drop of its old
	 * directory after PostgreSQL's last checkpoint, and recovery from a
	 * crash before the next one replays it, which drops the database's
	 * replication slots (ReplicationSlotsDropDBSlots): a stream created
	 * meanwhile lost its slot and went stale.  A checkpoint now puts the
	 * drop behind it.
	 */
	if (moved)
		RequestCheckpoint(CHECKPOINT_IMMEDIATE | CHECKPOINT_FORCE | CHECKPOINT_WAIT);
	if (renames_objects(pstmt->utilityStmt))
		CatalogRefreshDefinitions();
	if (IsA(pstmt->utilityStmt, AlterTableStmt))
		check_attached((AlterTableStmt *) pstmt->utilityStmt);
	if ((IsA(pstmt->utilityStmt, AlterTableStmt) &&
		 changes_owner((AlterTableStmt *) pstmt->utilityStmt)) ||
		IsA(pstmt->utilityStmt, ReassignOwnedStmt))
		give_streams(pstmt->utilityStmt);
}

/* ---------------------------------------------------------------------
 * Without the hooks
 * ---------------------------------------------------------------------
 */

/* Refuse, on a server that does not preload flowpg, what its hooks follow. */
static void
refuse_unloaded(const char *what, const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s \"%s\" while flowpg is not loaded", what, name),
			 errdetail("flowpg follows this change for its streams only where it is in shared_preload_libraries."),
			 errhint("Add flowpg to shared_preload_libraries and restart the server first.")));
}

/* A relation that sql_drop lists is a stream's source or result table. */
static void
refuse_unloaded_drops(void)
{
	CatalogPrivilege priv;
	int			rc;

	SPI_connect();
	/* flowpg.stream is the extension owner's (whoever drops) */
	CatalogBecomeOwner(&priv);
	rc = SPI_execute("SELECT s.name FROM pg_catalog.pg_event_trigger_dropped_objects() d "
					 "JOIN flowpg.stream s ON d.objid OPERATOR(pg_catalog.=) s.result "
					 "OR d.objid OPERATOR(pg_catalog.=) s.source "
					 "WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass "
					 "AND d.objsubid OPERATOR(pg_catalog.=) 0 LIMIT 1", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not read the objects dropped");
	if (SPI_processed > 0)
		refuse_unloaded("drop a table of stream",
						SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
	CatalogRestoreUser(&priv);
	SPI_finish();
}

/*
 * flowpg.ddl_guard(): the event triggers that stand in for the hooks above
 * where the server does not preload flowpg (taken out of
 * shared_preload_libraries for a while), which nothing else checks then:
 * a result table dropped or altered there left a stream that could
 * neither run nor be dropped (drop_stream finds a stream by its table),
 * a source made unlogged and back lost the rows inserted meanwhile,
 * silently, and renames left the definitions pg_dump carries behind.  The
 * checks that read the catalog only run here as in the hooks; what needs
 * the server's flowpg (a drop of a stream's table, a change of owner,
 * which stop or start its worker) is refused.  With flowpg preloaded, the
 * hooks do it all and this returns at once.
 */
PG_FUNCTION_INFO_V1(flowpg_ddl_guard);
Datum
flowpg_ddl_guard(PG_FUNCTION_ARGS)
{
	EventTriggerData *trig;
	Node	   *stmt;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("flowpg.ddl_guard must be called as an event trigger")));
	if (flowpg_preloaded || !OidIsValid(get_extension_oid("flowpg", true)))
		PG_RETURN_VOID();
	trig = (EventTriggerData *) fcinfo->context;
	stmt = trig->parsetree;
	if (strcmp(trig->event, "sql_drop") == 0)
		refuse_unloaded_drops();
	else if (strcmp(trig->event, "ddl_command_end") == 0)
	{
		if (renames_objects(stmt))
			CatalogRefreshDefinitions();
		if (IsA(stmt, AlterTableStmt))
			check_attached((AlterTableStmt *) stmt);
	}
	else if (IsA(stmt, AlterTableStmt))
	{
		AlterTableStmt *alter = (AlterTableStmt *) stmt;
		Oid			relid = altered_table(alter);

		if (changes_owner(alter) && OidIsValid(relid) && is_result_here(relid))
			refuse_unloaded("change the owner of the result table", get_rel_name(relid));
		check_alter_table(alter);
	}
	else if (IsA(stmt, CreateStmt))
		check_create_table((CreateStmt *) stmt, false);
	else if (IsA(stmt, CreateForeignTableStmt))
		check_create_table(&((CreateForeignTableStmt *) stmt)->base, true);
	else if (IsA(stmt, DropStmt))
		check_drop_index((DropStmt *) stmt);
	else if (IsA(stmt, RenameStmt) && ((RenameStmt *) stmt)->renameType == OBJECT_SCHEMA)
		check_rename_schema((RenameStmt *) stmt);
	else if (IsA(stmt, AlterOwnerStmt))
		check_schema_owner((AlterOwnerStmt *) stmt);
	else if (IsA(stmt, ReassignOwnedStmt))
	{
		ListCell   *lc;

		foreach(lc, ((ReassignOwnedStmt *) stmt)->roles)
		{
			Oid			role = get_rolespec_oid(lfirst(lc), true);

			if (OidIsValid(role) && streams_owned_by(role) != NIL)
				refuse_unloaded("reassign the streams of role",
								GetUserNameFromId(role, false));
		}
	}
	PG_RETURN_VOID();
}

/* Install the hooks; from _PG_init, in the postmaster. */
void
CatalogRegisterHooks(void)
{
	RegisterXactCallback(flowpg_xact_callback, NULL);
	RegisterSubXactCallback(flowpg_subxact_callback, NULL);
	prev_object_access_hook = object_access_hook;
	object_access_hook = flowpg_object_access;
	prev_process_utility_hook = ProcessUtility_hook;
	ProcessUtility_hook = flowpg_process_utility;
}

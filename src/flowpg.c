/*-------------------------------------------------------------------------
 *
 * flowpg.c
 *	  Module initialization: GUCs, hooks, the launcher; plus the checks and
 *	  naming conventions every other file shares.
 *
 * flowpg must be in shared_preload_libraries: it reserves shared memory
 * and registers its launcher in the postmaster.  Loaded any other way (for
 * instance by CREATE EXTENSION's function validation) it only defines its
 * GUCs, and every SQL function raises an error saying what to configure.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include <limits.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "common/int.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/regproc.h"
#include "utils/varlena.h"

#include "catalog.h"
#include "control.h"
#include "decode.h"
#include "launcher.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

int			flowpg_checkpoint_interval = 1000;
int			flowpg_poll_interval = 5;
int			flowpg_state_memory = 1024;
int			flowpg_max_streams = 16;
int			flowpg_checkpoints_retained = 10;
bool		flowpg_checkpoint_writer = true;
int			flowpg_decoding_work_mem = 256 * 1024;
int			flowpg_max_retained_wal = 4096;

bool		flowpg_preloaded = false;
bool		flowpg_decoding_allowed = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
flowpg_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	ControlShmemRequest();
}

static void
flowpg_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	ControlShmemStartup();
}

/*
 * Define the GUCs.  A PGC_POSTMASTER one can only be defined while the
 * postmaster loads the library, so flowpg.max_streams exists only then.
 */
static void
define_gucs(void)
{
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("flowpg.max_streams",
								"Maximum number of streams in all databases of the server.",
								NULL,
								&flowpg_max_streams,
								16, 1, 1024,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
	DefineCustomIntVariable("flowpg.checkpoint_interval",
							"Time between two checkpoints of a stream that has changed.",
							"A stream's own checkpoint_interval, if set, overrides this.",
							&flowpg_checkpoint_interval,
							1000, 10, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flowpg.poll_interval",
							"How often a stream's worker looks for new WAL while writes keep coming.",
							"A worker that found no new WAL for a while sleeps until a commit wakes it instead. Shorter intervals make results fresher and cost the writing sessions more.",
							&flowpg_poll_interval,
							5, 1, 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flowpg.state_memory",
							"Upper bound of the shared memory holding the state of all streams.",
							"A stream whose state would exceed it stops with an error.",
							&flowpg_state_memory,
							1024, 2, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flowpg.decoding_work_mem",
							"Memory a stream worker's decoder may use for one source transaction before spilling it to disk.",
							"Sets logical_decoding_work_mem in stream workers.",
							&flowpg_decoding_work_mem,
							256 * 1024, 64, MAX_KILOBYTES,
							PGC_SIGHUP, GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flowpg.checkpoints_retained",
							"Number of checkpoint records kept per stream in flowpg.checkpoints.",
							NULL,
							&flowpg_checkpoints_retained,
							10, 1, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("flowpg.max_retained_wal",
							"Most WAL a stream's replication slots may keep from being removed.",
							"A stream whose slots (its own and its savepoints') keep more fails for good and releases them; -1 means no limit.",
							&flowpg_max_retained_wal,
							4096, -1, MAX_KILOBYTES,
							PGC_SIGHUP, GUC_UNIT_MB,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("flowpg.checkpoint_writer",
							 "Whether each stream's periodic and forced checkpoints are written by a process of their own.",
							 "A checkpoint writer takes a background worker slot per stream, when one is free beyond what the streams' workers need; without it the worker writes its checkpoints itself, and does not decode meanwhile.",
							 &flowpg_checkpoint_writer,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	MarkGUCPrefixReserved("flowpg");
}

void
_PG_init(void)
{
	define_gucs();
	if (!process_shared_preload_libraries_in_progress)
		return;

	flowpg_preloaded = true;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = flowpg_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = flowpg_shmem_startup;
	CatalogRegisterHooks();

	/*
	 * pg_upgrade starts both servers in binary upgrade mode (with fsync
	 * off): no stream runs there.  The streams of an upgraded cluster are
	 * rebuilt when it first really starts (CatalogRebuildCopies).
	 */
	if (!IsBinaryUpgrade)
		LauncherRegister();
}

/*
 * Raise an error on a standby, for the functions that change a stream:
 * streams are managed where they run, on the primary (PostgreSQL's own
 * errors there, from the first write or lock they take, say nothing of it).
 */
void
FlowpgCheckNotStandby(FunctionCallInfo fcinfo)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot execute %s on a standby",
						format_procedure(fcinfo->flinfo->fn_oid)),
				 errdetail("Streams run, and are created and changed, on the primary."),
				 errhint("Run it on the primary; it reaches this standby through replication.")));
}

/*
 * The same, and in a read-only transaction, for the functions that change
 * a stream: it failed at the commit, or at the first statement flowpg ran
 * for it, naming that statement (a drop_stream dropped the result table
 * in a read-only transaction, and only its commit failed).
 * flowpg.savepoint and flowpg.checkpoint, taken by the stream's worker,
 * are allowed there, as CHECKPOINT is.
 */
void
FlowpgCheckChange(FunctionCallInfo fcinfo)
{
	FlowpgCheckNotStandby(fcinfo);
	PreventCommandIfReadOnly(format_procedure(fcinfo->flinfo->fn_oid));
}

/* Raise an error unless flowpg was loaded by shared_preload_libraries. */
void
FlowpgCheckLoaded(void)
{
	if (!flowpg_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("flowpg must be loaded via shared_preload_libraries"),
				 errhint("Add flowpg to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* Is `name` in the comma-separated list `list`? */
static bool
in_list(const char *list, const char *name)
{
	char	   *copy = pstrdup(list);
	List	   *names;
	ListCell   *lc;

	if (!SplitIdentifierString(copy, ',', &names))
		return false;
	foreach(lc, names)
		if (strcmp(lfirst(lc), name) == 0)
			return true;
	return false;
}

/*
 * Raise an error naming the setting that keeps streams from running:
 * shared_preload_libraries, wal_level, max_replication_slots or
 * output_plugin_libraries (on releases that have it).
 */
void
FlowpgCheckPrerequisites(void)
{
	const char *plugins;

	FlowpgCheckLoaded();
	if (wal_level < WAL_LEVEL_LOGICAL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("flowpg requires wal_level = logical"),
				 errdetail("Streams read inserted rows through logical decoding; wal_level is \"%s\".",
						   GetConfigOption("wal_level", false, false)),
				 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));
	if (max_replication_slots <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("flowpg requires max_replication_slots > 0"),
				 errdetail("Every stream owns a logical replication slot."),
				 errhint("Raise max_replication_slots in postgresql.conf and restart the server.")));
	plugins = GetConfigOption("output_plugin_libraries", true, false);
	if (plugins != NULL && !in_list(plugins, "flowpg"))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("flowpg is not listed in output_plugin_libraries"),
				 errdetail("output_plugin_libraries is \"%s\"; streams decode with flowpg's own output plugin.",
						   plugins),
				 errhint("Add flowpg to output_plugin_libraries in postgresql.conf and reload the server.")));
}

/*
 * Where the slots this database makes now are: the system identifier, the
 * WAL's timeline and the database.  A copy has no logical slots
 * (pg_upgrade makes a new system; a promoted standby or a recovered base
 * backup goes on a new timeline; CREATE DATABASE ... TEMPLATE makes a new
 * database), so a stream whose slot_origin is not this, and whose slot is
 * missing, lost it to a copy, not to a DROP (CatalogRebuildCopies).
 */
char *
FlowpgSlotOrigin(void)
{
	return psprintf(UINT64_FORMAT "/%u/%u", GetSystemIdentifier(),
					GetWALInsertionTimeLine(), MyDatabaseId);
}

void
FlowpgSlotName(char *buf, Oid dboid, int32 stream_id)
{
	snprintf(buf, NAMEDATALEN, FLOWPG_SLOT_PREFIX "%u_%d", dboid, stream_id);
}

bool
FlowpgParseSlotName(const char *name, Oid *dboid, int32 *stream_id)
{
	int			consumed = 0;

	if (sscanf(name, FLOWPG_SLOT_PREFIX "%u_%d%n",
			   dboid, stream_id, &consumed) != 2)
		return false;
	return name[consumed] == '\0';
}

void
FlowpgSavepointSlotName(char *buf, Oid dboid, int32 stream_id, int64 savepoint_id)
{
	snprintf(buf, NAMEDATALEN, FLOWPG_SLOT_PREFIX "sp_%u_%d_" INT64_FORMAT,
			 dboid, stream_id, savepoint_id);
}

bool
FlowpgParseSavepointSlotName(const char *name, Oid *dboid, int32 *stream_id,
							 int64 *savepoint_id)
{
	int			consumed = 0;
	long long	id;

	if (sscanf(name, FLOWPG_SLOT_PREFIX "sp_%u_%d_%lld%n",
			   dboid, stream_id, &id, &consumed) != 3 || name[consumed] != '\0')
		return false;
	*savepoint_id = (int64) id;
	return true;
}

/*
 * A stream's name as messages show it.  flowpg.streams keeps it as SQL
 * writes it, quoted where it must be (public."Spend"); messages quote a
 * name whole, as PostgreSQL's own do ("public.Spend"): quoting the SQL
 * form again showed "public."Spend"".
 */
const char *
FlowpgLabel(const char *qualified)
{
	if (strchr(qualified, '"') == NULL)
		return qualified;
	return NameListToString(stringToQualifiedNameList(qualified));
}

int64
FlowpgIntervalUsecs(const Interval *iv)
{
	/* an interval can hold more microseconds than an int64: first roughly */
	double		approx = (double) iv->time + (double) iv->day * USECS_PER_DAY +
		(double) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;
	int64		days = (int64) iv->month * DAYS_PER_MONTH + iv->day;
	int64		usecs;

	if (approx >= (double) PG_INT64_MAX / 2)
		return PG_INT64_MAX;
	if (approx <= (double) PG_INT64_MIN / 2)
		return PG_INT64_MIN;
	if (pg_mul_s64_overflow(days, USECS_PER_DAY, &usecs) ||
		pg_add_s64_overflow(usecs, iv->time, &usecs))
		return approx > 0 ? PG_INT64_MAX : PG_INT64_MIN;
	return usecs;
}

/*
 * The tag of a stream's lock (FlowpgLockStream), in this database, or,
 * with `savepoints`, of the lock of its savepoints (FlowpgLockSavepoints).
 */
static void
stream_locktag(LOCKTAG *tag, int32 stream_id, bool savepoints)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) stream_id,
						 savepoints ? 1 : 0, FLOWPG_LOCK_CLASS);
}

/*
 * Take the stream's lock for the rest of the transaction.  create_stream
 * and drops hold it exclusively; a starting worker takes it shared, so it
 * waits for them to finish.
 */
void
FlowpgLockStream(int32 stream_id, LOCKMODE mode)
{
	LOCKTAG		tag;

	stream_locktag(&tag, stream_id, false);
	(void) LockAcquire(&tag, mode, false, false);
}

/*
 * Let go of one hold of the stream's lock taken by FlowpgLockStream
 * (another hold of the transaction, if any, stays).  For calls that wait
 * for the stream's worker: a worker that starts takes the lock shared,
 * after any exclusive request queued meanwhile (a pause, a restore),
 * which would wait for the call that waits for the worker; nothing
 * detected that cycle, and everything waited a minute.
 */
void
FlowpgUnlockStream(int32 stream_id, LOCKMODE mode)
{
	LOCKTAG		tag;

	stream_locktag(&tag, stream_id, false);
	(void) LockRelease(&tag, mode, false);
}

/* One savepoint of a stream at a time: its own lock, for the transaction. */
void
FlowpgLockSavepoints(int32 stream_id)
{
	LOCKTAG		tag;

	stream_locktag(&tag, stream_id, true);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/* Does this transaction hold the stream's lock in `mode`? */
bool
FlowpgStreamLockHeld(int32 stream_id, LOCKMODE mode)
{
	LOCKTAG		tag;

	stream_locktag(&tag, stream_id, false);
	return LockHeldByMe(&tag, mode);
}

/* Does it hold the lock of the stream's savepoints (FlowpgLockSavepoints)? */
bool
FlowpgSavepointsLockHeld(int32 stream_id)
{
	LOCKTAG		tag;

	stream_locktag(&tag, stream_id, true);
	return LockHeldByMe(&tag, ExclusiveLock);
}

/*
 * Start a transaction in one of flowpg's background processes.  A backend
 * marks the start of each statement it receives, and a transaction's
 * start (now(), pg_stat_activity.xact_start) is its first statement's; a
 * background process must mark it itself, or every transaction it starts
 * would seem to have started with the process (flowpg.savepoints'
 * created_at and flowpg.streams' last_error_at showed the worker's start).
 */
void
FlowpgStartTransaction(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	DecodeBeforeOwnTransaction();
}

/*
 * Settings every flowpg process has, whatever its role's and database's
 * (ALTER ROLE/DATABASE ... SET), set once it is connected:
 * - exit_on_error off: an error the process handles (a checkpoint's
 *   upsert that meets a row, ...) or reports (flowpg.streams.last_error,
 *   from its PG_CATCH) became FATAL, which skips both: the stream
 *   restarted in a loop, showing no error;
 * - synchronous_commit local: a checkpoint needs its commit durable here
 *   (streams do not run on standbys, and are rebuilt on a promoted one);
 *   waiting for a synchronous standby that was gone left checkpoints,
 *   savepoints and rebuilds hanging, showing nothing;
 * - session_replication_role origin: the result table's triggers fire;
 * - role none: the process runs as the stream's owner, not as a role the
 *   owner's settings name;
 * - lock_timeout 0: a checkpoint waits for the result table's lock as
 *   long as a reader holds it, as the worker waits for anything else;
 * - default_transaction_isolation read committed: serializable
 *   checkpoints failed against serializable readers of the result table.
 */
void
FlowpgSetProcessSettings(void)
{
	SetConfigOption("exit_on_error", "off", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("synchronous_commit", "local", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("session_replication_role", "origin", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("role", "none", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_SESSION);
}

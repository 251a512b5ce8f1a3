/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: keeps one worker running per stream.
 *
 * The launcher is a static background worker registered in _PG_init.  It
 * is not connected to any database.  The durable list of streams is the
 * set of persistent replication slots named flowpg_<db>_<id> (created by
 * create_stream, dropped with the stream); for each one the launcher keeps
 * a StreamCtl entry and a worker, connected to that database as the
 * stream's owner (learnt from a first connection: see ControlConnect).
 *
 * It wakes up when a create_stream commits, when one of its workers exits
 * (it is their bgw_notify_pid), and once a second.  A worker that exits
 * while its stream still exists is started again after a back-off that
 * doubles with each consecutive failure, from 1 s up to 60 s; a successful
 * checkpoint resets it.  A stream restored from a dump has no slot yet:
 * for the entries marked adopting (adopt.c) the launcher starts an
 * adopter instead, again after each failure, with the same back-off.
 *
 * Crash story: after a crash the postmaster restarts the launcher, which
 * finds the slots again; the workers restore their state from checkpoints.
 * Streams restored from a dump and not rebuilt yet have no slot: the
 * launcher has each database scanned for them when it starts (next_scan).
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "access/heapam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "control.h"
#include "decode.h"
#include "launcher.h"
#include "state.h"
#include "worker.h"

#define LAUNCHER_NAPTIME_MS		1000

/*
 * A stream's process that finds no background worker slot while checkpoint
 * writers hold some is started again every LAUNCHER_RETRY_MS, for
 * WRITER_YIELD_MS at most, while the writers give theirs up.
 */
#define LAUNCHER_RETRY_MS		50
#define WRITER_YIELD_MS			10000

/* Some stream waits for a writer's slot: the launcher naps LAUNCHER_RETRY_MS. */
static bool retry_soon = false;

static bool drop_unrunnable(Oid dboid, int32 stream_id, XLogRecPtr processed,
							const char *why);

/* Handles of the workers and adopters this launcher started, by StreamCtl index. */
static BackgroundWorkerHandle **handles;
static BackgroundWorkerHandle **adopters;

/* Streams refused an entry (flowpg.max_streams), each warned of once. */
static List *refused;

/*
 * A background worker of flowpg's, connected (to a database or to none),
 * started once recovery is over and never restarted by the postmaster;
 * the caller names it and may change the rest.
 */
void
LauncherDescribeWorker(BackgroundWorker *bgw, const char *function, const char *type)
{
	memset(bgw, 0, sizeof(*bgw));
	bgw->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw->bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw->bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(bgw->bgw_library_name, BGW_MAXLEN, "flowpg");
	snprintf(bgw->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(bgw->bgw_type, BGW_MAXLEN, "%s", type);
	snprintf(bgw->bgw_name, BGW_MAXLEN, "%s", type);
}

/* Register the launcher; from _PG_init. */
void
LauncherRegister(void)
{
	BackgroundWorker bgw;

	LauncherDescribeWorker(&bgw, "FlowLauncherMain", "flowpg launcher");
	bgw.bgw_restart_time = 1;
	RegisterBackgroundWorker(&bgw);
}

static void
launcher_on_exit(int code, Datum arg)
{
	FlowCtl->launcher_latch = NULL;
	FlowCtl->launcher_pid = 0;
}

/*
 * No background worker slot for a stream's process: ask the checkpoint
 * writers to give theirs up (WriterYield, which each one's worker does at
 * its next round: woken here).  While some writer still holds a slot, for
 * WRITER_YIELD_MS at most, the stream is not failing: the launcher tries
 * again in LAUNCHER_RETRY_MS, and returns true.  (The stream showed as
 * failed, with a warning, and flowpg.wait could raise "no free background
 * worker slot", while the writers were giving their slots up.)
 */
static bool
await_writers_yield(StreamCtl *ctl)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		writers = false;
	bool		waiting;
	int			i;

	pg_atomic_fetch_add_u32(&FlowCtl->writers_yield, 1);
	for (i = 0; i < FlowCtl->max_streams; i++)
	{
		StreamCtl  *other = &FlowCtl->streams[i];
		Latch	   *latch = NULL;

		SpinLockAcquire(&other->mutex);
		if (other->writer_pid != 0)
		{
			writers = true;
			latch = other->latch;
		}
		SpinLockRelease(&other->mutex);
		if (latch != NULL)
			SetLatch(latch);
	}

	SpinLockAcquire(&ctl->mutex);
	if (ctl->slot_wait_since == 0)
		ctl->slot_wait_since = now;
	waiting = writers &&
		!TimestampDifferenceExceeds(ctl->slot_wait_since, now, WRITER_YIELD_MS);
	if (waiting)
		ctl->restart_at = now + LAUNCHER_RETRY_MS * 1000L;
	else
		ctl->slot_wait_since = 0;
	SpinLockRelease(&ctl->mutex);
	retry_soon |= waiting;
	return waiting;
}

/*
 * The name of a stream's database, for the launcher's warnings (it has no
 * database of its own, but pg_database is shared), in the caller's memory
 * context; the stream's name is in its database, which flowpg.streams
 * shows with the stream's id.
 */
static char *
database_name(Oid dboid)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *name;

	FlowpgStartTransaction();
	name = get_database_name(dboid);
	name = MemoryContextStrdup(cxt, name ? name : "(dropped)");
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return name;
}

/*
 * Register a process for a stream: its worker, or for a restored stream
 * being rebuilt, its adopter.  Returns its handle, or NULL when there is
 * no free background worker slot: the stream fails for now, unless
 * checkpoint writers are giving theirs up (await_writers_yield).
 */
static BackgroundWorkerHandle *
start_process(StreamCtl *ctl, int index, StreamIdentity *ident, bool adopter)
{
	BackgroundWorker bgw;
	BackgroundWorkerHandle *handle;
	MemoryContext oldcxt;
	bool		registered;
	bool		warned;
	int32		tries;
	XLogRecPtr	processed;
	StreamIdentity who = *ident;

	LauncherDescribeWorker(&bgw, adopter ? "FlowAdoptMain" : "FlowWorkerMain",
					adopter ? "flowpg adopt" : "flowpg worker");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "%s for stream %d",
			 bgw.bgw_type, ident->stream_id);
	bgw.bgw_main_arg = Int32GetDatum(index);
	/* connect as the owner, if known (see ControlConnect) */
	SpinLockAcquire(&ctl->mutex);
	who.owner = ctl->owner;
	SpinLockRelease(&ctl->mutex);
	memcpy(bgw.bgw_extra, &who, sizeof(StreamIdentity));
	bgw.bgw_notify_pid = MyProcPid;

	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&bgw, &handle);
	MemoryContextSwitchTo(oldcxt);
	SpinLockAcquire(&ctl->mutex);
	ctl->retry_requested = false;
	if (registered)
	{
		ctl->slot_wait_since = 0;
		ctl->no_worker_slot = false;
		ctl->no_slot_tries = 0;
	}
	SpinLockRelease(&ctl->mutex);
	if (registered)
		return handle;
	if (await_writers_yield(ctl))
		return NULL;

	/*
	 * Tried again after 1 s, doubling up to 60 s, as after a failure, and
	 * said once until a process starts (it was every second, in the log).
	 */
	SpinLockAcquire(&ctl->mutex);
	ctl->started_at = 0;
	warned = ctl->status == STREAM_FAILED && ctl->no_worker_slot;
	ctl->no_worker_slot = true;
	ctl->status = STREAM_FAILED;
	ctl->fail_count++;
	tries = ++ctl->no_slot_tries;
	processed = ctl->processed_lsn;
	SpinLockRelease(&ctl->mutex);
	ControlSetError(ctl, "no free background worker slot: raise max_worker_processes");
	ControlScheduleRestart(ctl);
	if (!warned)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("flowpg could not start the %s of stream %d of database \"%s\": no free background worker slot",
						adopter ? "rebuild" : "worker", ident->stream_id,
						database_name(ident->dboid)),
				 errhint("Raise max_worker_processes.")));
	/* (an adopter's stream has no slot to keep) */
	if (!adopter && tries >= 2)
		(void) drop_unrunnable(ident->dboid, ident->stream_id, processed,
							   "no free background worker slot");
	return NULL;
}

/* Forget the handle of a process that stopped; true if there was one. */
static bool
forget_stopped(BackgroundWorkerHandle **handle)
{
	pid_t		pid;

	if (*handle == NULL || GetBackgroundWorkerPid(*handle, &pid) != BGWH_STOPPED)
		return false;
	pfree(*handle);
	*handle = NULL;
	return true;
}

/*
 * Restored streams that were still being rebuilt when the server stopped
 * have no slot and no StreamCtl entry now: nothing says they exist but
 * their catalog rows, in their databases.  So when the launcher starts, a
 * short-lived "flowpg scan" worker visits each database that allows
 * connections, one after the other, and asks for their rebuild
 * (AdoptScanMain); the streams of a copy of the cluster (pg_upgrade, a
 * promoted standby) are found so too.  A CREATE DATABASE that copied a
 * database with streams has the launcher do that again
 * (ControlRequestRescan), for the copy's streams, which have no slots.
 * The databases still to visit, and the scan running:
 */
static List *scan_queue = NIL;
static BackgroundWorkerHandle *scan_handle = NULL;

/* The databases to visit: from pg_database, a shared catalog. */
static void
queue_scans(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;

	FlowpgStartTransaction();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);
		MemoryContext oldcxt;

		if (!db->datallowconn || db->datistemplate)
			continue;
		oldcxt = MemoryContextSwitchTo(TopMemoryContext);
		scan_queue = list_append_unique_oid(scan_queue, db->oid);
		MemoryContextSwitchTo(oldcxt);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
}

/* Start the next database's scan once the last one is over. */
static void
next_scan(void)
{
	BackgroundWorker bgw;
	Oid			dboid;

	if (scan_handle != NULL && !forget_stopped(&scan_handle))
		return;
	if (scan_queue == NIL)
		return;
	dboid = linitial_oid(scan_queue);
	LauncherDescribeWorker(&bgw, "AdoptScanMain", "flowpg scan");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "flowpg scan of database %u", dboid);
	memcpy(bgw.bgw_extra, &dboid, sizeof(dboid));
	bgw.bgw_notify_pid = MyProcPid;
	if (RegisterDynamicBackgroundWorker(&bgw, &scan_handle))
		scan_queue = list_delete_first(scan_queue);
	else
		scan_handle = NULL;		/* no free slot: try again next round */
}

/* Has the launcher warned that this stream has no entry?  From now on it has. */
static bool
warned_of_refusal(StreamIdentity *ident)
{
	ListCell   *lc;
	StreamIdentity *copy;
	MemoryContext oldcxt;

	foreach(lc, refused)
	{
		StreamIdentity *r = lfirst(lc);

		if (r->dboid == ident->dboid && r->stream_id == ident->stream_id)
			return true;
	}
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	copy = palloc(sizeof(StreamIdentity));
	*copy = *ident;
	refused = lappend(refused, copy);
	MemoryContextSwitchTo(oldcxt);
	return false;
}

/*
 * flowpg.max_retained_wal for a stream that cannot run: a worker checks
 * its own stream's WAL (check_retained_wal, and as it starts), but a
 * stream whose worker cannot start (no free background worker slot, no
 * flowpg.max_streams entry) or cannot connect (its owner made NOLOGIN,
 * the database closed to connections) has none, and its slots kept all
 * the WAL written until the cause was fixed.  The launcher judges those,
 * as a worker judges a stream whose workers fail before they run
 * (setup_unapplied_wal): once two tries in a row have failed, before the
 * next one, counting from the position its last worker applied (or its
 * slot confirmed).  Past the limit it drops their slots: it holds the
 * stream's own slot while it drops its savepoints' (so that no process
 * starts on it, and none is left with some of its savepoints gone), then
 * drops it; if a process holds one of them, the stream is judged again at
 * its next try.  The disk does not fill.  The launcher cannot record the
 * failure in the stream's catalog row, in a database it is not connected
 * to: the stream shows stale, as when its slot went without flowpg, and
 * the server log says why.  True if the slots went.
 */
static bool
drop_unrunnable(Oid dboid, int32 stream_id, XLogRecPtr processed, const char *why)
{
	char		slot_name[NAMEDATALEN];
	int64		unapplied;
	bool		dropped = true;

	if (flowpg_max_retained_wal < 0)
		return false;
	unapplied = ControlUnappliedWal(dboid, stream_id, processed);
	if (!ControlOverRetainedWal(unapplied))
		return false;
	FlowpgSlotName(slot_name, dboid, stream_id);
	if (!DecodeClaimSlot(slot_name))
		return false;
	PG_TRY();
	{
		ListCell   *lc;
		pid_t		holder;

		foreach(lc, ControlListSavepointSlots(dboid, stream_id))
		{
			if (!DecodeDropFreeSlot(NameStr(*(NameData *) lfirst(lc)), &holder))
			{
				dropped = false;
				break;
			}
		}
		if (dropped)
			ReplicationSlotDrop(slot_name, true);
		else
			DecodeUnclaimSlot(slot_name);
	}
	PG_CATCH();
	{
		DecodeUnclaimSlot(slot_name);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (!dropped)
		return false;
	ereport(WARNING,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("flowpg dropped the replication slots of stream %d of database \"%s\": they kept %s of WAL it has not applied, more than flowpg.max_retained_wal (%d MB), while it could not run (%s)",
					stream_id, database_name(dboid), ControlWalAmount(unapplied),
					flowpg_max_retained_wal, why),
			 errdetail("The stream has stopped for good, and its results are stale."),
			 errhint("Rebuild the stream with flowpg.rebuild_stream, or drop it and create it again; to avoid this, fix what keeps a stream from running, or raise flowpg.max_retained_wal.")));
	return true;
}

/*
 * Before a stream's next try: if the last two could not connect, judge it
 * (drop_unrunnable); true if its slots went.
 */
static bool
drop_unconnectable(StreamCtl *ctl)
{
	int32		connect_failures;
	XLogRecPtr	processed;

	SpinLockAcquire(&ctl->mutex);
	connect_failures = ctl->connect_failures;
	processed = ctl->processed_lsn;
	SpinLockRelease(&ctl->mutex);
	return connect_failures >= 2 &&
		drop_unrunnable(ctl->dboid, ctl->stream_id, processed,
						"its worker cannot connect");
}

/* Make the set of entries and workers match the set of slots. */
static void
reconcile(void)
{
	List	   *slots = ControlListSlots(InvalidOid);
	ListCell   *lc;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	/*
	 * Map the state area now: freeing a gone stream's state below happens
	 * under FlowCtl->lock, which mapping it for the first time takes.
	 */
	(void) ControlArea();

	foreach(lc, slots)
	{
		StreamIdentity *ident = lfirst(lc);

		if (ControlAcquire(ident->dboid, ident->stream_id) != NULL)
			continue;
		if (!warned_of_refusal(ident))
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("flowpg cannot run stream %d of database \"%s\": flowpg.max_streams (%d) entries are in use",
							ident->stream_id, database_name(ident->dboid),
							flowpg_max_streams),
					 errhint("Raise flowpg.max_streams and restart the server.")));
		(void) drop_unrunnable(ident->dboid, ident->stream_id, InvalidXLogRecPtr,
							   "no flowpg.max_streams entry");
	}

	for (i = 0; i < FlowCtl->max_streams; i++)
	{
		StreamCtl  *ctl = &FlowCtl->streams[i];
		StreamIdentity *ident;
		StreamIdentity adopt;
		bool		adopting;
		bool		dropping;
		bool		running;

		LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
		if (!ctl->in_use)
		{
			LWLockRelease(&FlowCtl->lock);
			continue;
		}
		dropping = ctl->dropping;
		if (forget_stopped(&handles[i]) && !dropping)
			ControlScheduleRestart(ctl);
		/* an adopter schedules its next try, unless it died of a FATAL */
		if (forget_stopped(&adopters[i]) && ctl->adopting &&
			ctl->restart_at <= now)
			ControlScheduleRestart(ctl);
		ident = ControlFindIdentity(slots, ctl->dboid, ctl->stream_id);
		adopt.dboid = ctl->dboid;
		adopt.stream_id = ctl->stream_id;
		adopt.owner = InvalidOid;
		adopting = ctl->adopting;
		running = handles[i] != NULL || adopters[i] != NULL || ctl->pid != 0;
		if (ident == NULL && !running && !dropping && !adopting)
		{
			/* the stream is gone (its slot too): free what it left */
			LWLockAcquire(&ctl->state_lock, LW_EXCLUSIVE);
			StateDestroy(ctl);
			LWLockRelease(&ctl->state_lock);
			ctl->in_use = false;
		}
		LWLockRelease(&FlowCtl->lock);

		if (running || dropping || ctl->restart_at > now)
			continue;
		/* a stream to rebuild may have its old slot still: the adopter drops it */
		if (adopting)
			adopters[i] = start_process(ctl, i, &adopt, true);
		else if (ident != NULL && !drop_unconnectable(ctl))
			handles[i] = start_process(ctl, i, ident, false);
		/* (a stream whose slots went: its entry goes next round) */
	}
	list_free_deep(slots);
}

void
FlowLauncherMain(Datum main_arg)
{
	MemoryContext loopcxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	handles = MemoryContextAllocZero(TopMemoryContext,
									 sizeof(BackgroundWorkerHandle *) * FlowCtl->max_streams);
	adopters = MemoryContextAllocZero(TopMemoryContext,
									  sizeof(BackgroundWorkerHandle *) * FlowCtl->max_streams);
	FlowCtl->launcher_pid = MyProcPid;
	FlowCtl->launcher_latch = MyLatch;
	on_shmem_exit(launcher_on_exit, (Datum) 0);

	/* no database: only the shared catalogs, to list the databases */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	queue_scans();

	loopcxt = AllocSetContextCreate(TopMemoryContext, "flowpg launcher loop",
									ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("flowpg launcher started")));

	for (;;)
	{
		MemoryContext oldcxt;
		bool		rescan;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
		rescan = FlowCtl->rescan_requested;
		FlowCtl->rescan_requested = false;
		LWLockRelease(&FlowCtl->lock);
		if (rescan)
			queue_scans();

		oldcxt = MemoryContextSwitchTo(loopcxt);
		retry_soon = false;
		reconcile();
		MemoryContextSwitchTo(oldcxt);
		next_scan();
		MemoryContextReset(loopcxt);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 retry_soon ? LAUNCHER_RETRY_MS : LAUNCHER_NAPTIME_MS,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

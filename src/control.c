/*-------------------------------------------------------------------------
 *
 * control.c
 *	  flowpg's fixed shared-memory control area.
 *
 * The control area holds one StreamCtl per stream that has a worker or is
 * about to get one, indexed by (database, stream id); the launcher's latch;
 * and the handle of the single dsa area in which every stream keeps its
 * state (bounded as a whole by flowpg.state_memory).
 *
 * Locking:
 *	- FlowCtl->lock (exclusive) guards allocating and freeing StreamCtl
 *	  entries, their identity fields and the `dropping` flag, and creating
 *	  the dsa area.  Readers of identity take it shared.
 *	- StreamCtl->mutex (a spinlock) guards the worker's pid, latch, status
 *	  and progress counters; hold it only to copy a few fields.
 *	- StreamCtl->state_lock guards the stream's state table: see state.c.
 *
 * Crash story: nothing here is durable.  After a crash of any process the
 * postmaster reinitializes shared memory (this area included, and the dsa
 * area's segments are discarded); the launcher then rebuilds the entries
 * from the replication slots, and each worker restores its state from its
 * latest checkpoint.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "access/xlog.h"
#include "access/xlogrecovery.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "replication/slot.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "storage/shmem.h"

#include "control.h"

FlowControl *FlowCtl = NULL;

/* This process's mapping of the state area. */
static dsa_area *flow_area = NULL;

static Size
control_shmem_size(void)
{
	return add_size(offsetof(FlowControl, streams),
					mul_size(flowpg_max_streams, sizeof(StreamCtl)));
}

/* shmem_request_hook: reserve the control area. */
void
ControlShmemRequest(void)
{
	RequestAddinShmemSpace(control_shmem_size());
}

/* shmem_startup_hook: create the control area (postmaster) or find it. */
void
ControlShmemStartup(void)
{
	bool		found;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	FlowCtl = ShmemInitStruct("flowpg control", control_shmem_size(), &found);
	if (!found)
	{
		int			i;

		memset(FlowCtl, 0, control_shmem_size());
		FlowCtl->tranche_id = LWLockNewTrancheId();
		LWLockInitialize(&FlowCtl->lock, FlowCtl->tranche_id);
		FlowCtl->area_handle = DSM_HANDLE_INVALID;
		FlowCtl->max_streams = flowpg_max_streams;
		pg_atomic_init_u32(&FlowCtl->writers_yield, 0);
		for (i = 0; i < flowpg_max_streams; i++)
		{
			StreamCtl  *ctl = &FlowCtl->streams[i];

			SpinLockInit(&ctl->mutex);
			LWLockInitialize(&ctl->state_lock, FlowCtl->tranche_id);
			ConditionVariableInit(&ctl->cv);
			pg_atomic_init_u32(&ctl->sleeping, 0);
			ctl->state_handle = InvalidDsaPointer;
		}
	}
	LWLockRelease(AddinShmemInitLock);

	LWLockRegisterTranche(FlowCtl->tranche_id, "flowpg");
}

/* Find the entry of a stream; caller holds FlowCtl->lock. */
StreamCtl *
ControlFindLocked(Oid dboid, int32 stream_id)
{
	int			i;

	for (i = 0; i < FlowCtl->max_streams; i++)
	{
		StreamCtl  *ctl = &FlowCtl->streams[i];

		if (ctl->in_use && ctl->dboid == dboid && ctl->stream_id == stream_id)
			return ctl;
	}
	return NULL;
}

/*
 * Find the entry of a stream, or NULL.  The entry stays valid while the
 * stream exists: entries are freed only once a stream is dropped or its
 * slot is gone.
 */
StreamCtl *
ControlFind(Oid dboid, int32 stream_id)
{
	StreamCtl  *ctl;

	LWLockAcquire(&FlowCtl->lock, LW_SHARED);
	ctl = ControlFindLocked(dboid, stream_id);
	LWLockRelease(&FlowCtl->lock);
	return ctl;
}

/*
 * How many entries are free.  None is free, and a stream has none, only
 * when the server has more streams than flowpg.max_streams allows: it was
 * lowered after they were created, or a dump brought more.
 */
int
ControlFreeEntries(void)
{
	int			free_entries = 0;
	int			i;

	LWLockAcquire(&FlowCtl->lock, LW_SHARED);
	for (i = 0; i < FlowCtl->max_streams; i++)
		if (!FlowCtl->streams[i].in_use)
			free_entries++;
	LWLockRelease(&FlowCtl->lock);
	return free_entries;
}

/*
 * Find the entry of a stream, allocating a fresh one if it has none.
 * Returns NULL when all flowpg.max_streams entries are taken.
 */
StreamCtl *
ControlAcquire(Oid dboid, int32 stream_id)
{
	StreamCtl  *ctl;
	int			i;

	LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
	ctl = ControlFindLocked(dboid, stream_id);
	for (i = 0; ctl == NULL && i < FlowCtl->max_streams; i++)
	{
		StreamCtl  *free_ctl = &FlowCtl->streams[i];

		if (free_ctl->in_use)
			continue;
		SpinLockAcquire(&free_ctl->mutex);
		free_ctl->pid = 0;
		free_ctl->latch = NULL;
		free_ctl->status = STREAM_STARTING;
		free_ctl->state_ready = false;
		free_ctl->restarts = -1;
		free_ctl->failures = 0;
		free_ctl->setup_failures = 0;
		free_ctl->ckpt_failures = 0;
		free_ctl->restart_at = 0;
		free_ctl->started_at = 0;
		free_ctl->slot_wait_since = 0;
		free_ctl->no_worker_slot = false;
		free_ctl->no_slot_tries = 0;
		free_ctl->connect_failures = 0;
		free_ctl->retry_requested = false;
		free_ctl->owner = InvalidOid;
		free_ctl->reconnect = false;
		free_ctl->processed_lsn = InvalidXLogRecPtr;
		free_ctl->failed_commit = InvalidXLogRecPtr;
		free_ctl->careful_until = InvalidXLogRecPtr;
		free_ctl->rows_failed_at = InvalidXLogRecPtr;
		free_ctl->checkpoint_lsn = InvalidXLogRecPtr;
		free_ctl->result_lsn = InvalidXLogRecPtr;
		free_ctl->wait_lsn = InvalidXLogRecPtr;
		free_ctl->waiter_seen_at = 0;
		free_ctl->checkpoint_id = 0;
		free_ctl->last_checkpoint_at = 0;
		free_ctl->checkpoint_ms = 0;
		free_ctl->checkpoints = 0;
		free_ctl->checkpoint_total_ms = 0;
		free_ctl->caught_up_at = 0;
		free_ctl->ckpt_requested = free_ctl->ckpt_done = 0;
		free_ctl->ckpt_target = InvalidXLogRecPtr;
		free_ctl->sp_requested = free_ctl->sp_attempted = 0;
		free_ctl->sp_done = free_ctl->sp_abandoned = 0;
		free_ctl->sp_id = 0;
		free_ctl->events_per_second = 0;
		free_ctl->reload_requested = 0;
		free_ctl->events = free_ctl->keys = free_ctl->state_bytes = 0;
		free_ctl->ignored_updates = free_ctl->ignored_deletes = 0;
		free_ctl->ignored_truncates = 0;
		free_ctl->last_error[0] = '\0';
		free_ctl->last_error_at = 0;
		SpinLockRelease(&free_ctl->mutex);
		free_ctl->dboid = dboid;
		free_ctl->stream_id = stream_id;
		free_ctl->adopting = false;
		free_ctl->dropping = false;
		free_ctl->in_use = true;
		ctl = free_ctl;
	}
	LWLockRelease(&FlowCtl->lock);
	return ctl;
}

/* Wake the launcher so that it looks at the slots again. */
void
ControlWakeLauncher(void)
{
	Latch	   *latch = FlowCtl->launcher_latch;

	if (latch != NULL)
		SetLatch(latch);
}

/*
 * Have the launcher scan every database again for streams to rebuild, as
 * it does when it starts: a database was made by copying one with
 * streams (CREATE DATABASE ... TEMPLATE), whose copies have no slots.
 */
void
ControlRequestRescan(void)
{
	LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
	FlowCtl->rescan_requested = true;
	LWLockRelease(&FlowCtl->lock);
	ControlWakeLauncher();
}

/*
 * Wake the sleeping workers of a database: called after each commit that
 * wrote WAL, so that a worker asleep decodes it at once instead of at its
 * next timeout.  A worker that is running or polling (ctl->sleeping clear)
 * is not signalled: it reads the new WAL within a poll interval anyway, and
 * a signal per commit costs the committing backends far more (see
 * wait_for_wal in worker.c).  Reads the latch pointers without a lock; a
 * stale one costs a spurious wakeup of some other process, nothing more.
 */
void
ControlWakeDatabase(Oid dboid)
{
	int			i;

	if (FlowCtl == NULL)
		return;
	/* our commit is in the WAL; now read the flags (pairs with wait_for_wal) */
	pg_memory_barrier();
	for (i = 0; i < FlowCtl->max_streams; i++)
	{
		StreamCtl  *ctl = &FlowCtl->streams[i];
		Latch	   *latch = ctl->latch;

		if (ctl->in_use && ctl->dboid == dboid && latch != NULL &&
			latch != MyLatch && pg_atomic_read_u32(&ctl->sleeping) != 0)
			SetLatch(latch);
	}
}

/*
 * This process's mapping of the state area, created by the first process
 * that needs it.  The area is pinned, so it lives until the postmaster
 * reinitializes shared memory.
 */
dsa_area *
ControlArea(void)
{
	MemoryContext oldcxt;

	if (flow_area != NULL)
		return flow_area;

	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	LWLockAcquire(&FlowCtl->lock, LW_EXCLUSIVE);
	if (FlowCtl->area_handle == DSM_HANDLE_INVALID)
	{
		flow_area = dsa_create(FlowCtl->tranche_id);
		dsa_pin(flow_area);
		FlowCtl->area_handle = dsa_get_handle(flow_area);
	}
	else
		flow_area = dsa_attach(FlowCtl->area_handle);
	dsa_pin_mapping(flow_area);
	LWLockRelease(&FlowCtl->lock);
	MemoryContextSwitchTo(oldcxt);
	return flow_area;
}

/*
 * Apply flowpg.state_memory to the state area.  Only workers, the
 * processes that allocate state, call this (at start and after a reload),
 * so that a reader with an older setting cannot lower the bound.
 */
void
ControlApplyStateLimit(void)
{
	dsa_set_size_limit(ControlArea(), (size_t) flowpg_state_memory * 1024 * 1024);
}

/* The SQL-visible name of a status. */
const char *
ControlStatusName(StreamStatus status)
{
	switch (status)
	{
		case STREAM_STARTING:
			return "starting";
		case STREAM_RUNNING:
			return "running";
		case STREAM_PAUSED:
			return "paused";
		case STREAM_FAILED:
			return "failed";
	}
	return "unknown";
}

/* Record an error of the stream's worker for flowpg.streams. */
void
ControlSetError(StreamCtl *ctl, const char *message)
{
	SpinLockAcquire(&ctl->mutex);
	strlcpy(ctl->last_error, message, FLOWPG_ERROR_LEN);
	ctl->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&ctl->mutex);
}

/* Say the stream's process failed, with this message, to flowpg.streams and flowpg.wait. */
static void
mark_failed(StreamCtl *ctl, const char *message)
{
	ControlSetError(ctl, message);
	SpinLockAcquire(&ctl->mutex);
	ctl->status = STREAM_FAILED;
	ctl->state_ready = false;
	ctl->fail_count++;
	SpinLockRelease(&ctl->mutex);
	ConditionVariableBroadcast(&ctl->cv);
}

/*
 * The process of a stream (its worker or its adopter) is failing with the
 * error being handled: keep its message for flowpg.streams and flowpg.wait,
 * and say the stream failed.  Call from PG_CATCH.
 */
void
ControlFail(StreamCtl *ctl)
{
	MemoryContextSwitchTo(TopMemoryContext);
	mark_failed(ctl, CopyErrorData()->message);
}

/*
 * The same, for an error that is no failure of the stream's: the next
 * process starts at once (see WorkerMergeBatch).
 */
void
ControlFailOver(StreamCtl *ctl)
{
	MemoryContextSwitchTo(TopMemoryContext);
	ControlSetError(ctl, CopyErrorData()->message);
	SpinLockAcquire(&ctl->mutex);
	ctl->status = STREAM_STARTING;
	ctl->state_ready = false;
	ctl->reconnect = true;
	SpinLockRelease(&ctl->mutex);
	ConditionVariableBroadcast(&ctl->cv);
	ControlWakeLauncher();
}

/*
 * Connect a stream's process (worker or adopter) to its database as the
 * stream's owner, so that everything the stream runs has the owner's
 * privileges.  The launcher knows which streams exist from their slots,
 * but who owns each one only the stream's database says: when it does not
 * know yet (after a restart), the process connects as the bootstrap
 * superuser, reads the owner from the catalog and exits at once, running
 * nothing of the stream's, and the next one connects as the owner
 * (ControlReconnectAs); so does a process whose stream changed hands.
 *
 * Connecting can fail only with FATAL (the owner may not log in, the role
 * or the database may be gone), which exits without passing any
 * PG_CATCH: keep its message for flowpg.streams all the same, and forget
 * the owner, which the next process reads again.
 */
static StreamCtl *connecting_ctl = NULL;
static emit_log_hook_type prev_emit_log_hook = NULL;

static void
connect_log_hook(ErrorData *edata)
{
	if (connecting_ctl != NULL && edata->elevel >= FATAL)
	{
		mark_failed(connecting_ctl, edata->message);
		SpinLockAcquire(&connecting_ctl->mutex);
		connecting_ctl->connect_failures++;
		connecting_ctl->owner = InvalidOid;
		SpinLockRelease(&connecting_ctl->mutex);
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

void
ControlConnect(StreamCtl *ctl, StreamIdentity *ident)
{
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = connect_log_hook;
	connecting_ctl = ctl;
	BackgroundWorkerInitializeConnectionByOid(ident->dboid, ident->owner, 0);
	connecting_ctl = NULL;
	emit_log_hook = prev_emit_log_hook;
	/* (as the bootstrap superuser, only to read the owner, it proves nothing) */
	if (OidIsValid(ident->owner))
	{
		SpinLockAcquire(&ctl->mutex);
		ctl->connect_failures = 0;
		SpinLockRelease(&ctl->mutex);
	}
	FlowpgSetProcessSettings();
}

/*
 * Background worker slots free: max_worker_processes less the background
 * workers running now (the launcher among them, checkpoint writers not:
 * they give their slots up when a stream's worker needs one, see
 * WriterYield) and the streams whose worker is not running (waiting to
 * restart).  Fills in those two counts.  Parallel query takes workers
 * from the same pool, so this is an upper bound.
 */
int
ControlCountWorkerSlots(int *running, int *waiting)
{
	List	   *slots = ControlListSlots(InvalidOid);
	int			n;
	int			i;
	bool		launcher_seen = false;

	*running = 0;
	*waiting = list_length(slots);
	list_free_deep(slots);
	n = pgstat_fetch_stat_numbackends();
	for (i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *entry = pgstat_fetch_stat_local_beentry(i);

		if (entry != NULL && entry->backendStatus.st_backendType == B_BG_WORKER)
		{
			(*running)++;
			launcher_seen |= entry->backendStatus.st_procpid == FlowCtl->launcher_pid;
		}
	}
	for (i = 0; i < FlowCtl->max_streams; i++)
	{
		StreamCtl  *ctl = &FlowCtl->streams[i];

		if (!ctl->in_use)
			continue;
		SpinLockAcquire(&ctl->mutex);
		if (ctl->pid != 0)
			(*waiting)--;
		if (ctl->writer_pid != 0)
			(*running)--;
		SpinLockRelease(&ctl->mutex);
	}
	/* the launcher, before it has connected, is not in the count */
	if (!launcher_seen)
		(*running)++;
	*waiting = Max(*waiting, 0);
	return max_worker_processes - *running - *waiting;
}

/* The same, for a process that keeps no snapshot of the backends' status. */
int
ControlFreeWorkerSlots(void)
{
	int			running;
	int			waiting;
	int			free_slots = ControlCountWorkerSlots(&running, &waiting);

	pgstat_clear_backend_activity_snapshot();
	return free_slots;
}

/*
 * The stream's process connected as another role than the stream's owner
 * (see ControlConnect): the launcher starts the next one at once, as the
 * owner.  The caller exits.
 */
void
ControlReconnectAs(StreamCtl *ctl, Oid owner)
{
	SpinLockAcquire(&ctl->mutex);
	ctl->owner = owner;
	ctl->reconnect = true;
	SpinLockRelease(&ctl->mutex);
	ControlWakeLauncher();
}

/*
 * The stream's catalog row changed: have its worker, if it runs, read it
 * again (see reload_definition in worker.c).  A valid owner is the
 * stream's new one, whom its next process connects as.
 */
void
ControlRequestReload(Oid dboid, int32 stream_id, Oid owner)
{
	StreamCtl  *ctl = ControlFind(dboid, stream_id);
	Latch	   *latch = NULL;

	if (ctl == NULL)
		return;
	SpinLockAcquire(&ctl->mutex);
	ctl->reload_requested++;
	if (OidIsValid(owner))
		ctl->owner = owner;
	latch = ctl->latch;
	SpinLockRelease(&ctl->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * When a process asked for by ControlRetryNow may start: a second after
 * the last failure, so that callers of flowpg.wait in a loop start no more
 * than one process a second (each reads the WAL since the checkpoint).
 */
static TimestampTz
retry_at(StreamCtl *ctl)
{
	return ctl->last_error_at == 0 ? 0 :
		ctl->last_error_at + FLOWPG_RESTART_MIN_MS * 1000L;
}

/*
 * The process of a stream (its worker or its adopter) stopped: start the
 * next one after a back-off that doubles with each consecutive failure,
 * from 1 s up to 60 s.  The status stays failed if the process said so.
 */
void
ControlScheduleRestart(StreamCtl *ctl)
{
	int			failures;
	long		delay_ms;

	SpinLockAcquire(&ctl->mutex);
	if (ctl->reconnect)
	{
		/* not a failure: it exited to connect again as the owner */
		ctl->reconnect = false;
		ctl->restart_at = 0;
		SpinLockRelease(&ctl->mutex);
		return;
	}
	/*
	 * A worker that ran a while (longer than the longest back-off) was
	 * no failure in a row: an idle stream publishes no checkpoint, which
	 * resets the count, and a worker terminated after minutes of running
	 * waited out the back-off of failures long gone (60 s).
	 */
	if (ctl->started_at != 0 &&
		TimestampDifferenceExceeds(ctl->started_at, GetCurrentTimestamp(),
								   FLOWPG_RESTART_MAX_MS))
		ctl->failures = 0;
	failures = ++ctl->failures;
	delay_ms = FLOWPG_RESTART_MIN_MS;
	while (--failures > 0 && delay_ms < FLOWPG_RESTART_MAX_MS)
		delay_ms *= 2;
	ctl->restart_at = GetCurrentTimestamp() +
		Min(delay_ms, FLOWPG_RESTART_MAX_MS) * 1000L;
	if (ctl->retry_requested)
		ctl->restart_at = retry_at(ctl);
	if (ctl->status != STREAM_FAILED)
		ctl->status = STREAM_STARTING;
	SpinLockRelease(&ctl->mutex);
}

/*
 * Someone waits for the stream (flowpg.wait, checkpoint, savepoint): if
 * its process failed and waits out its back-off, start the next one now
 * (or a second after the failure), so that the caller learns whether the
 * cause is gone (it waits for that process, and gets its error if it
 * fails too).  Also when the launcher has yet to see the failed process
 * go: ControlScheduleRestart keeps the request until the launcher starts
 * the next one.
 */
void
ControlRetryNow(StreamCtl *ctl)
{
	bool		wake = false;

	SpinLockAcquire(&ctl->mutex);
	/* also a process that ended without saying (terminated: a FATAL) */
	if (ctl->pid == 0 &&
		(ctl->status == STREAM_FAILED ||
		 (ctl->status == STREAM_STARTING && ctl->restart_at > GetCurrentTimestamp())))
	{
		ctl->status = STREAM_STARTING;
		ctl->restart_at = retry_at(ctl);
		ctl->retry_requested = true;
		wake = true;
	}
	SpinLockRelease(&ctl->mutex);
	if (wake)
		ControlWakeLauncher();
}

/* The entries of the restored streams of a database being rebuilt. */
List *
ControlListAdopting(Oid dboid)
{
	List	   *adopting = NIL;
	int			i;

	LWLockAcquire(&FlowCtl->lock, LW_SHARED);
	for (i = 0; i < FlowCtl->max_streams; i++)
	{
		StreamCtl  *ctl = &FlowCtl->streams[i];

		if (ctl->in_use && ctl->dboid == dboid && ctl->adopting)
			adopting = lappend(adopting, ctl);
	}
	LWLockRelease(&FlowCtl->lock);
	return adopting;
}

/* The identity in a list (ControlListSlots) of a stream, or NULL. */
StreamIdentity *
ControlFindIdentity(List *slots, Oid dboid, int32 stream_id)
{
	ListCell   *lc;

	foreach(lc, slots)
	{
		StreamIdentity *ident = lfirst(lc);

		if (ident->dboid == dboid && ident->stream_id == stream_id)
			return ident;
	}
	return NULL;
}

/*
 * Streams that take a flowpg.max_streams entry, each once, but the stream
 * (dboid, stream_id) (none if dboid is InvalidOid): those with a slot, and
 * those being rebuilt that have none (restored, or a rebuild that failed
 * after it had dropped the stream's slot), whose entry the launcher keeps.
 */
int
ControlCountStreams(Oid dboid, int32 stream_id)
{
	List	   *slots = ControlListSlots(InvalidOid);
	int			n = 0;
	int			i;
	ListCell   *lc;

	foreach(lc, slots)
	{
		StreamIdentity *ident = lfirst(lc);

		if (ident->dboid != dboid || ident->stream_id != stream_id)
			n++;
	}
	LWLockAcquire(&FlowCtl->lock, LW_SHARED);
	for (i = 0; i < FlowCtl->max_streams; i++)
	{
		StreamCtl  *ctl = &FlowCtl->streams[i];

		if (ctl->in_use && ctl->adopting &&
			(ctl->dboid != dboid || ctl->stream_id != stream_id) &&
			ControlFindIdentity(slots, ctl->dboid, ctl->stream_id) == NULL)
			n++;
	}
	LWLockRelease(&FlowCtl->lock);
	list_free_deep(slots);
	return n;
}

/*
 * The identities of the persistent flowpg slots of a database (of every
 * database if dboid is InvalidOid): the durable list of streams.
 */
List *
ControlListSlots(Oid dboid)
{
	List	   *slots = NIL;
	int			i;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];
		StreamIdentity ident = {InvalidOid, 0, InvalidOid};
		bool		usable;

		if (!s->in_use)
			continue;
		SpinLockAcquire(&s->mutex);
		usable = s->data.persistency == RS_PERSISTENT &&
			strcmp(NameStr(s->data.plugin), "flowpg") == 0 &&
			FlowpgParseSlotName(NameStr(s->data.name), &ident.dboid,
								&ident.stream_id);
		SpinLockRelease(&s->mutex);
		if (usable && (!OidIsValid(dboid) || ident.dboid == dboid))
		{
			StreamIdentity *copy = palloc(sizeof(StreamIdentity));

			*copy = ident;
			slots = lappend(slots, copy);
		}
	}
	LWLockRelease(ReplicationSlotControlLock);
	return slots;
}

/* Does the database have flowpg slots (streams' or savepoints')? */
bool
ControlDatabaseHasSlots(Oid dboid)
{
	bool		found = false;
	int			i;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (i = 0; i < max_replication_slots && !found; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];

		if (!s->in_use)
			continue;
		SpinLockAcquire(&s->mutex);
		found = s->data.database == dboid &&
			strcmp(NameStr(s->data.plugin), "flowpg") == 0;
		SpinLockRelease(&s->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	return found;
}

/* Lower *oldest to lsn, if lsn is valid and older (or *oldest invalid). */
static void
keep_oldest(XLogRecPtr *oldest, XLogRecPtr lsn)
{
	if (!XLogRecPtrIsInvalid(lsn) &&
		(XLogRecPtrIsInvalid(*oldest) || lsn < *oldest))
		*oldest = lsn;
}

/*
 * The slots of a stream: its savepoints' (and its own too, with `own`).
 * Returns their names (palloc'd NameData); sets *oldest to the oldest
 * restart_lsn among them, the WAL they keep, and *applied (unless NULL) to
 * the oldest confirmed_flush_lsn, the position up to which their stream
 * has applied what they keep (invalid if none).
 */
static List *
stream_slots(Oid dboid, int32 stream_id, bool own, XLogRecPtr *oldest,
			 XLogRecPtr *applied)
{
	List	   *names = NIL;
	int			i;

	*oldest = InvalidXLogRecPtr;
	if (applied != NULL)
		*applied = InvalidXLogRecPtr;
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (i = 0; i < max_replication_slots; i++)
	{
		ReplicationSlot *s = &ReplicationSlotCtl->replication_slots[i];
		Oid			db;
		int32		id;
		int64		spid;
		bool		ours;
		XLogRecPtr	restart;
		XLogRecPtr	confirmed;
		NameData	name;

		if (!s->in_use)
			continue;
		SpinLockAcquire(&s->mutex);
		name = s->data.name;
		restart = s->data.restart_lsn;
		confirmed = s->data.confirmed_flush;
		SpinLockRelease(&s->mutex);
		ours = ((own && FlowpgParseSlotName(NameStr(name), &db, &id)) ||
				FlowpgParseSavepointSlotName(NameStr(name), &db, &id, &spid)) &&
			db == dboid && id == stream_id;
		if (!ours)
			continue;
		names = lappend(names, memcpy(palloc(sizeof(NameData)), &name, sizeof(NameData)));
		keep_oldest(oldest, restart);
		if (applied != NULL)
			keep_oldest(applied, confirmed);
	}
	LWLockRelease(ReplicationSlotControlLock);
	return names;
}

/*
 * Is the slot there, still keeping its WAL?  PostgreSQL invalidates a slot
 * that keeps more than max_slot_wal_keep_size (its restart_lsn goes), and
 * anyone with REPLICATION can drop a slot.
 */
bool
ControlSlotUsable(const char *slot_name)
{
	ReplicationSlot *slot;
	bool		usable = false;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	slot = SearchNamedReplicationSlot(slot_name, false);
	if (slot != NULL)
	{
		SpinLockAcquire(&slot->mutex);
		usable = !XLogRecPtrIsInvalid(slot->data.restart_lsn);
		SpinLockRelease(&slot->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	return usable;
}

/* Bytes of WAL from lsn to the current WAL position; -1 if lsn is invalid. */
static int64
wal_since(XLogRecPtr lsn)
{
	XLogRecPtr	now;

	if (XLogRecPtrIsInvalid(lsn))
		return -1;
	now = RecoveryInProgress() ? GetXLogReplayRecPtr(NULL) : GetXLogInsertRecPtr();
	return now > lsn ? (int64) (now - lsn) : 0;
}

/*
 * Bytes of WAL a stream's slots, its own and its savepoints', keep from
 * being removed (from the oldest restart_lsn among them to the current WAL
 * position); -1 if the stream has no slot.
 */
int64
ControlRetainedWal(Oid dboid, int32 stream_id)
{
	XLogRecPtr	oldest;

	list_free_deep(stream_slots(dboid, stream_id, true, &oldest, NULL));
	return wal_since(oldest);
}

/*
 * Bytes of WAL a stream's slots keep because the stream has not applied
 * it: from the oldest of its worker's position (`processed`, what it has
 * decoded and applied; if invalid, the position its own slot confirmed)
 * and its savepoints' positions, to the current WAL position.  What
 * flowpg.max_retained_wal bounds.  The slots may keep
 * more: the stream's own slot is confirmed only once a checkpoint holds
 * what it applied (a checkpoint interval's WAL, of the whole server,
 * behind), and a slot's restart_lsn cannot pass the start of a
 * transaction still open, on any table of the server, however far the
 * stream has got.
 */
int64
ControlUnappliedWal(Oid dboid, int32 stream_id, XLogRecPtr processed)
{
	XLogRecPtr	oldest;
	XLogRecPtr	applied;

	list_free_deep(stream_slots(dboid, stream_id, XLogRecPtrIsInvalid(processed),
								&oldest, &applied));
	keep_oldest(&applied, processed);
	return wal_since(applied);
}

/* More than flowpg.max_retained_wal bytes? */
bool
ControlOverRetainedWal(int64 unapplied)
{
	return flowpg_max_retained_wal >= 0 &&
		unapplied > (int64) flowpg_max_retained_wal * 1024 * 1024;
}

/* An amount of WAL for a message: in kB below 10 MB ("kept 1 MB, more than 1 MB" said nothing). */
char *
ControlWalAmount(int64 bytes)
{
	if (bytes >= 10 * 1024 * 1024)
		return psprintf(INT64_FORMAT " MB", bytes / (1024 * 1024));
	return psprintf(INT64_FORMAT " kB", (bytes + 1023) / 1024);
}

/* Replication slots not in use: room for as many new slots. */
int
ControlFreeReplicationSlots(void)
{
	int			free = 0;
	int			i;

	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	for (i = 0; i < max_replication_slots; i++)
		if (!ReplicationSlotCtl->replication_slots[i].in_use)
			free++;
	LWLockRelease(ReplicationSlotControlLock);
	return free;
}

/* Names of the savepoint slots of a stream (palloc'd NameData). */
List *
ControlListSavepointSlots(Oid dboid, int32 stream_id)
{
	XLogRecPtr	oldest;

	return stream_slots(dboid, stream_id, false, &oldest, NULL);
}

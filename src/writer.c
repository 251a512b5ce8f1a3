/*-------------------------------------------------------------------------
 *
 * writer.c
 *	  A stream's checkpoint writer: a second background process per stream
 *	  that writes the worker's periodic and forced checkpoints while the
 *	  worker goes on decoding.
 *
 * A checkpoint of 10,000 keys takes a process 25 to 45 ms here (result
 * rows, state log, the checkpoint's row, its commit).  Written by the
 * worker, that is time it does not decode: with 1 s checkpoints about 5%
 * of a catch-up.  The writer spends it on the other core.
 *
 * The protocol, one checkpoint at a time:
 *
 *	1. The worker chooses the checkpoint as it would write it itself (its
 *	   keys, the state log's part: checkpoint_choose in checkpoint.c),
 *	   copies the chosen keys' chunks into a job buffer in the shared
 *	   area, clears their dirty marks, posts the job (ctl->job_posted)
 *	   and sets the writer's latch.  It goes on decoding: what changes
 *	   from then on is the next checkpoint's.  A checkpoint of more than
 *	   100,000 keys (HANDOFF_MAX_KEYS) is posted as the keys' directory
 *	   slots instead, with no copy, and the worker waits for it: the
 *	   writer writes from the chunks themselves.
 *	2. The writer writes the job in one transaction, with the statements
 *	   the worker's own checkpoints use (checkpoint_run), commits it (a
 *	   periodic one without waiting for its flush), records where its
 *	   commit record ends, marks the job done (ctl->job_done) and sets the
 *	   worker's latch.  It updates the copies' TIDs (or the chunks') as
 *	   it writes their rows.
 *	3. The worker collects it at its next round (CheckpointCollect): the
 *	   chunks get their rows' TIDs, the checkpoint is published, and it
 *	   is confirmed on the slot once its commit is flushed, as any
 *	   checkpoint of its own (CheckpointConfirm); the flowpg.checkpoint
 *	   calls a forced one serves return then.
 *
 * A checkpoint due while one is being written waits for it; savepoints
 * and rewrites wait for it and are written by the worker itself, since
 * what they do next needs the state as the checkpoint wrote it.  Keeping
 * the checkpoints in one process also keeps the result table's pages
 * mapped in one process: the first touch of a shared buffer's pages costs
 * a process page faults (about 10 us a 4 kB page on these VMs).
 *
 * Crash story: a writer never outlives its worker.  The worker terminates
 * it and waits for it to exit before its own exit completes
 * (writer_stop), and a writer whose worker is gone exits.  So the next
 * worker, which restores the latest committed checkpoint, sees every
 * checkpoint a writer of its stream will ever commit.  A writer that fails
 * marks its job failed, and one that exits with a job posted is noticed
 * (WriterJobDone): either way the worker fails with an error and the next
 * one starts from the last checkpoint committed, as after any failure.
 * A kill -9 of either restarts the server, as for any backend.
 *
 * The writer connects as the stream's owner and compiles the stream (the
 * aggregates' final functions make the result rows).  The changes it
 * writes carry the worker's replication origin, so that the worker's
 * decoding drops them before its reorder buffer, as it does its own
 * checkpoints' (decoding every checkpoint's result rows and state log
 * again cost the worker what the writer saves it).  PostgreSQL 15 lets
 * one process at a time hold an origin's session, which only a commit
 * needs (to advance the origin's position): the writer sets the origin
 * that WAL records carry (replorigin_session_origin) without a session,
 * for its writes only, and clears it before its commit (CheckpointRunJob);
 * its commit records carry none, and decode as empty transactions.
 *
 * Background worker slots: a writer is started only while a slot stays
 * free besides (ControlFreeWorkerSlots), and writers give their slots up
 * when the launcher cannot start a stream's worker (WriterYield): a
 * stream without a worker is worse than one that writes its own
 * checkpoints.  A worker whose writer could not start, exited or gave its
 * slot up tries again after WRITER_RETRY_MS (its writer was gone for the
 * worker's life: one stream too many for the slots left every stream
 * without its writer).  Without a writer (flowpg.checkpoint_writer = off, no
 * slot, no room in the shared area for a job's copy) the worker writes
 * its checkpoints itself, as it always did.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "access/table.h"
#include "access/xact.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/origin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/pmsignal.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "compile.h"
#include "launcher.h"
#include "writer.h"

/* Who a writer works for: in its bgw_extra. */
typedef struct WriterIdentity
{
	Oid			dboid;
	int32		stream_id;
	Oid			owner;
	pid_t		worker_pid;
} WriterIdentity;

StaticAssertDecl(sizeof(WriterIdentity) <= BGW_EXTRALEN,
				 "WriterIdentity must fit in bgw_extra");

/* How long a worker that exits waits for its writer to be gone. */
#define WRITER_STOP_WAIT_MS		60000

/* How long a worker writes its checkpoints itself before it tries a writer again. */
#define WRITER_RETRY_MS			10000

/*
 * No writer for now: the worker writes its checkpoints itself, and tries
 * to start one again after WRITER_RETRY_MS.  Says why once, not at each
 * try that fails for the same reason.
 */
static void
writer_unavailable(FlowWorker *w, const char *why, bool hint)
{
	w->writer_retry_at = GetCurrentTimestamp() + WRITER_RETRY_MS * 1000L;
	if (w->writer_why != NULL && strcmp(w->writer_why, why) == 0)
		return;
	w->writer_why = why;
	ereport(LOG,
			(errmsg("flowpg: stream \"%s\" writes its checkpoints itself: %s",
					FlowpgLabel(w->def->name), why),
			 hint ? errhint("Raise max_worker_processes.") : 0));
}

/* Free the worker's job buffer, if it has one; no job may be in it. */
static void
job_buffer_free(FlowWorker *w)
{
	if (!DsaPointerIsValid(w->job))
		return;
	dsa_free(ControlArea(), w->job);
	w->job = InvalidDsaPointer;
}

/*
 * Terminate the worker's writer, if it has one, and wait until it has
 * exited; then free the job buffer.  A before_shmem_exit callback of the
 * worker (so it runs before the worker's StreamCtl entry says it is gone),
 * and WriterYield.
 */
static void
writer_stop(int code, Datum arg)
{
	FlowWorker *w = (FlowWorker *) DatumGetPointer(arg);
	pid_t		pid;
	int			waited = 0;

	/*
	 * After the postmaster's death the writer exits on its own, and the
	 * next server makes its shared memory anew: nothing to wait for.  (Its
	 * slot never says stopped then, and an exited writer stays a zombie
	 * until someone reaps it, which kill(pid, 0) cannot tell from a live
	 * one: the worker waited up to a minute, attached to the old shared
	 * memory, and the new server could not start meanwhile.)
	 */
	if (!PostmasterIsAlive())
		return;
	if (w->writer != NULL)
	{
		TerminateBackgroundWorker(w->writer);
		for (;;)
		{
			BgwHandleStatus status = GetBackgroundWorkerPid(w->writer, &pid);

			if (status == BGWH_STOPPED)
				break;
			/* keep the buffer: the writer may still read it */
			if (status == BGWH_POSTMASTER_DIED || !PostmasterIsAlive())
				return;
			if (waited++ >= WRITER_STOP_WAIT_MS)
			{
				/* keep the buffer: the writer may still read it */
				elog(WARNING, "flowpg: the checkpoint writer of stream %d did not exit",
					 w->def->id);
				return;
			}
			pg_usleep(1000L);
		}
		pfree(w->writer);
		w->writer = NULL;
	}
	w->job_inflight = false;
	job_buffer_free(w);
}

/*
 * Stop the worker's writer now, as its exit would (writer_stop).  Returns
 * false if a writer is left (it did not exit, or the postmaster died).
 */
bool
WriterStop(FlowWorker *w)
{
	writer_stop(0, PointerGetDatum(w));
	return w->writer == NULL;
}

/* Register the worker's writer; logs why not if it cannot. */
static void
writer_start(FlowWorker *w)
{
	BackgroundWorker bgw;
	WriterIdentity who;
	MemoryContext oldcxt;
	bool		registered;
	static bool callback_registered = false;

	if (ControlFreeWorkerSlots() < 2)
	{
		writer_unavailable(w, "no background worker slot to spare for a checkpoint writer", true);
		return;
	}
	SpinLockAcquire(&w->ctl->mutex);
	w->ctl->writer_pid = 0;
	w->ctl->writer_latch = NULL;
	w->ctl->job = InvalidDsaPointer;
	w->ctl->job_posted = w->ctl->job_done = 0;
	SpinLockRelease(&w->ctl->mutex);

	LauncherDescribeWorker(&bgw, "FlowWriterMain", "flowpg checkpoint writer");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "flowpg checkpoint writer for stream %d",
			 w->def->id);
	bgw.bgw_main_arg = Int32GetDatum(w->ctl_index);
	who.dboid = MyDatabaseId;
	who.stream_id = w->def->id;
	who.owner = w->def->owner;
	who.worker_pid = MyProcPid;
	memcpy(bgw.bgw_extra, &who, sizeof(who));
	bgw.bgw_notify_pid = MyProcPid;

	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	registered = RegisterDynamicBackgroundWorker(&bgw, &w->writer);
	MemoryContextSwitchTo(oldcxt);
	if (!registered)
	{
		w->writer = NULL;
		writer_unavailable(w, "no free background worker slot for a checkpoint writer", true);
		return;
	}
	w->writer_why = NULL;
	if (!callback_registered)
	{
		before_shmem_exit(writer_stop, PointerGetDatum(w));
		callback_registered = true;
	}
}

/*
 * Has the worker a writer ready for a job?  Starts one the first time it
 * is asked (the worker writes its checkpoints itself until it is ready),
 * and stops it, once it has no job, when flowpg.checkpoint_writer has been
 * turned off (a reload): the stream's writer_pid is NULL then, and its
 * background worker slot free.  Turned on again, it starts a new one.
 */
bool
WriterReady(FlowWorker *w)
{
	pid_t		pid;
	bool		ready;

	if (!flowpg_checkpoint_writer)
	{
		if (w->writer != NULL && !w->job_inflight)
		{
			writer_stop(0, PointerGetDatum(w));
			ereport(LOG,
					(errmsg("flowpg: stream \"%s\" writes its checkpoints itself: flowpg.checkpoint_writer is off",
							FlowpgLabel(w->def->name))));
		}
		return false;
	}
	if (w->writer_retry_at != 0)
	{
		if (GetCurrentTimestamp() < w->writer_retry_at)
			return false;
		w->writer_retry_at = 0;
	}
	if (w->writer == NULL)
	{
		writer_start(w);
		return false;
	}
	switch (GetBackgroundWorkerPid(w->writer, &pid))
	{
		case BGWH_STARTED:
			break;
		case BGWH_NOT_YET_STARTED:
			return false;
		default:
			/* it exited, ready or not: its error is in the log */
			pfree(w->writer);
			w->writer = NULL;
			w->writer_why = NULL;
			writer_unavailable(w, "its checkpoint writer exited", false);
			return false;
	}
	SpinLockAcquire(&w->ctl->mutex);
	ready = w->ctl->writer_pid == pid;
	SpinLockRelease(&w->ctl->mutex);
	return ready;
}

/*
 * Give the background worker slot of the worker's writer up (the launcher
 * could not start a stream's worker): it writes its checkpoints itself for
 * a while.
 */
void
WriterYield(FlowWorker *w)
{
	if (w->writer == NULL)
		return;
	(void) CheckpointCollect(w, true);
	writer_stop(0, PointerGetDatum(w));
	w->writer_why = NULL;
	writer_unavailable(w, "its checkpoint writer gave its background worker slot up for a stream's worker", false);
}

/*
 * A job buffer of at least `size` bytes, kept between jobs (its pages stay
 * mapped in both processes); NULL if the shared area has no room.
 */
CheckpointJob *
WriterJobBuffer(FlowWorker *w, Size size)
{
	dsa_area   *area = ControlArea();
	CheckpointJob *job;

	if (DsaPointerIsValid(w->job))
	{
		job = dsa_get_address(area, w->job);
		/* keep it unless it is too small, or much too large */
		if (job->capacity >= size &&
			(job->capacity <= 4 * size || job->capacity <= 1024 * 1024))
			return job;
		job_buffer_free(w);
	}
	size += size / 4;
	w->job = dsa_allocate_extended(area, size, DSA_ALLOC_HUGE | DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(w->job))
		return NULL;
	job = dsa_get_address(area, w->job);
	job->capacity = size;
	return job;
}

/*
 * Free the job buffer kept between jobs, unless a job in it is being
 * written: the state area is full (FlowState.reclaim).  The next
 * checkpoint allocates one again, or is written by the worker if there is
 * no room for it.
 */
bool
WriterReclaim(void *arg)
{
	FlowWorker *w = (FlowWorker *) arg;

	if (w->job_inflight || !DsaPointerIsValid(w->job))
		return false;
	job_buffer_free(w);
	return true;
}

CheckpointJob *
WriterJob(FlowWorker *w)
{
	return dsa_get_address(ControlArea(), w->job);
}

/* Hand the job in the buffer to the writer. */
void
WriterPost(FlowWorker *w)
{
	Latch	   *latch;

	SpinLockAcquire(&w->ctl->mutex);
	w->ctl->job = w->job;
	w->ctl->job_posted++;
	latch = w->ctl->writer_latch;
	SpinLockRelease(&w->ctl->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/* Has the writer done every job posted? */
static bool
jobs_done(StreamCtl *ctl)
{
	bool		done;

	SpinLockAcquire(&ctl->mutex);
	done = ctl->job_done == ctl->job_posted;
	SpinLockRelease(&ctl->mutex);
	return done;
}

/*
 * Is the job posted done?  With wait, wait until it is.  A writer that
 * exited without finishing it is an error.
 */
bool
WriterJobDone(FlowWorker *w, bool wait)
{
	bool		reset = false;

	for (;;)
	{
		pid_t		pid;

		if (jobs_done(w->ctl))
			break;
		if (GetBackgroundWorkerPid(w->writer, &pid) != BGWH_STARTED)
		{
			/* it may have finished the job, then exited */
			if (jobs_done(w->ctl))
				break;
			w->job_inflight = false;
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the checkpoint writer of stream \"%s\" exited while writing a checkpoint",
							FlowpgLabel(w->def->name)),
					 errhint("The stream starts again from its last checkpoint.")));
		}
		if (!wait)
			return false;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		reset = true;
		CHECK_FOR_INTERRUPTS();
	}
	/* what set the latch meanwhile may have been for the main loop */
	if (reset)
		SetLatch(MyLatch);
	return true;
}

/* Is the writer's worker still the stream's? */
static bool
worker_alive(StreamCtl *ctl, WriterIdentity *who)
{
	bool		alive;

	SpinLockAcquire(&ctl->mutex);
	alive = ctl->pid == who->worker_pid;
	SpinLockRelease(&ctl->mutex);
	return alive;
}

static void
writer_on_exit(int code, Datum arg)
{
	StreamCtl  *ctl = (StreamCtl *) DatumGetPointer(arg);

	SpinLockAcquire(&ctl->mutex);
	if (ctl->writer_pid == MyProcPid)
	{
		ctl->writer_pid = 0;
		ctl->writer_latch = NULL;
	}
	SpinLockRelease(&ctl->mutex);
}

/* Read and compile the stream, prepare the checkpoint statements. */
static bool
writer_setup(FlowWorker *w, WriterIdentity *who)
{
	MemoryContext oldcxt;
	char		origin_name[NAMEDATALEN];

	FlowpgStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	w->def_cxt = AllocSetContextCreate(w->cxt, "flowpg stream definition",
									   ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(w->def_cxt);
	/* the worker's lock order: source, result, then the stream */
	if (OidIsValid(get_extension_oid("flowpg", true)))
		w->def = CatalogLockStream(who->stream_id, AccessShareLock);
	MemoryContextSwitchTo(oldcxt);
	if (w->def == NULL || w->def->owner != who->owner)
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		return false;
	}
	SetConfigOption("application_name", w->def->name, PGC_USERSET, PGC_S_SESSION);
	CompileApplySettings(w->def->settings, GUC_ACTION_SET);
	WorkerCompile(w);
	CheckpointPrepare(w);
	FlowpgSlotName(origin_name, who->dboid, who->stream_id);
	w->origin = replorigin_by_name(origin_name, false);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return true;
}

/* The job posted is done (or failed): tell the worker. */
static void
writer_done(StreamCtl *ctl, uint64 posted)
{
	Latch	   *latch;

	SpinLockAcquire(&ctl->mutex);
	ctl->job_done = posted;
	latch = ctl->latch;
	SpinLockRelease(&ctl->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/* Write one job; an error is the job's, and then the writer's end. */
static void
writer_run(FlowWorker *w, StreamCtl *ctl, dsa_pointer jobp, uint64 posted,
		   MemoryContext job_cxt)
{
	CheckpointJob *job = dsa_get_address(ControlArea(), jobp);
	MemoryContext oldcxt = MemoryContextSwitchTo(job_cxt);

	/* query_start in pg_stat_activity: this checkpoint's start, not the first's */
	SetCurrentStatementStartTimestamp();
	pgstat_report_activity(STATE_RUNNING, "checkpoint");
	PG_TRY();
	{
		CheckpointRunJob(w, job);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(job_cxt);
		edata = CopyErrorData();
		job->sqlerrcode = edata->sqlerrcode;
		strlcpy(job->error, edata->message ? edata->message : "", FLOWPG_ERROR_LEN);
		strlcpy(job->detail, edata->detail ? edata->detail : "", FLOWPG_ERROR_LEN);
		strlcpy(job->hint, edata->hint ? edata->hint : "", FLOWPG_ERROR_LEN);
		job->failed = true;
		job->recompile = w->recompile;
		writer_done(ctl, posted);
		PG_RE_THROW();
	}
	PG_END_TRY();
	writer_done(ctl, posted);
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(job_cxt);
}

void
FlowWriterMain(Datum main_arg)
{
	StreamCtl  *ctl = &FlowCtl->streams[DatumGetInt32(main_arg)];
	WriterIdentity who;
	FlowWorker *w;
	MemoryContext job_cxt;

	memcpy(&who, MyBgworkerEntry->bgw_extra, sizeof(who));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	if (!worker_alive(ctl, &who))
		proc_exit(0);
	BackgroundWorkerInitializeConnectionByOid(who.dboid, who.owner, 0);
	FlowpgSetProcessSettings();

	w = MemoryContextAllocZero(TopMemoryContext, sizeof(FlowWorker));
	w->cxt = AllocSetContextCreate(TopMemoryContext, "flowpg checkpoint writer",
								   ALLOCSET_DEFAULT_SIZES);
	job_cxt = AllocSetContextCreate(w->cxt, "flowpg checkpoint job",
									ALLOCSET_DEFAULT_SIZES);
	w->ctl = ctl;
	if (!writer_setup(w, &who))
		proc_exit(0);

	on_shmem_exit(writer_on_exit, PointerGetDatum(ctl));
	SpinLockAcquire(&ctl->mutex);
	if (ctl->pid == who.worker_pid)
	{
		ctl->writer_pid = MyProcPid;
		ctl->writer_latch = MyLatch;
	}
	SpinLockRelease(&ctl->mutex);

	for (;;)
	{
		bool		alive;
		uint64		posted;
		uint64		done;
		dsa_pointer jobp;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		SpinLockAcquire(&ctl->mutex);
		alive = ctl->pid == who.worker_pid && ctl->writer_pid == MyProcPid;
		posted = ctl->job_posted;
		done = ctl->job_done;
		jobp = ctl->job;
		SpinLockRelease(&ctl->mutex);
		if (!alive)
			proc_exit(0);
		if (posted != done)
		{
			writer_run(w, ctl, jobp, posted, job_cxt);
			continue;
		}
		/* idle: flush the statistics of what it wrote, as an idle backend does */
		pgstat_report_stat(true);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*-------------------------------------------------------------------------
 *
 * control.h
 *	  The fixed shared-memory control area: one StreamCtl per running
 *	  stream, the launcher's latch, and the handle of the dsa area that holds
 *	  every stream's state.  See control.c for the locking rules.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_CONTROL_H
#define FLOWPG_CONTROL_H

#include "flowpg.h"

#include "nodes/pg_list.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/dsa.h"
#include "utils/timestamp.h"

/* Back-off between the starts of a stream's failing process. */
#define FLOWPG_RESTART_MIN_MS	1000
#define FLOWPG_RESTART_MAX_MS	60000

typedef enum StreamStatus
{
	STREAM_STARTING = 0,		/* worker requested or restoring state */
	STREAM_RUNNING,				/* worker decoding and applying */
	STREAM_PAUSED,				/* worker holds its state, applies nothing */
	STREAM_FAILED				/* worker stopped by an error; see last_error */
} StreamStatus;

/*
 * Which stream (from its slot's name), passed to its process with the role
 * the process connects as: the stream's owner, as far as the launcher
 * knows (StreamCtl.owner), or InvalidOid when it does not know yet.
 */
typedef struct StreamIdentity
{
	Oid			dboid;
	int32		stream_id;
	Oid			owner;
} StreamIdentity;

typedef struct StreamCtl
{
	/* Identity: written under FlowCtl->lock held exclusively. */
	bool		in_use;
	bool		dropping;		/* being dropped: never start a worker */
	Oid			dboid;
	int32		stream_id;
	bool		adopting;		/* a restored stream being rebuilt: the
								 * launcher (re)starts its adopter
								 * (adopt.c), not a worker */

	/* Everything below is protected by mutex. */
	slock_t		mutex;
	pid_t		pid;			/* worker, 0 if none */
	Latch	   *latch;			/* worker's latch, NULL if none */
	StreamStatus status;
	bool		state_ready;	/* shared state restored and usable */
	int32		restarts;		/* worker starts after the first */
	int32		failures;		/* consecutive failed starts */
	int32		setup_failures; /* of them, workers that failed before they
								 * ran (see setup_unapplied_wal) */
	uint64		fail_count;		/* failures said so far (mark_failed), never
								 * reset: a waiter tells a new one from one
								 * it has seen */
	int32		ckpt_failures;	/* workers that failed a checkpoint since
								 * one was published (the same) */
	TimestampTz restart_at;		/* launcher starts the worker after this */
	TimestampTz started_at;		/* when its latest worker started */
	TimestampTz slot_wait_since;	/* since when its process has waited for
									 * checkpoint writers to give a background
									 * worker slot up (0: it does not) */
	bool		no_worker_slot;	/* its last process found no background
								 * worker slot (the launcher warned) */
	int32		no_slot_tries;	/* starts in a row that found no background
								 * worker slot */
	int32		connect_failures;	/* its processes that could not connect
									 * since one last connected as its
									 * owner */
	bool		retry_requested;	/* flowpg.wait: start it again at once */
	Oid			owner;			/* the stream's owner, as whom its process
								 * connects; InvalidOid: unknown (after a
								 * restart), the next process connects as
								 * the bootstrap superuser only to read it */
	bool		reconnect;		/* the process exited to connect again as
								 * owner: start the next one at once */

	XLogRecPtr	processed_lsn;	/* source WAL applied to state */
	XLogRecPtr	failed_commit;	/* commit record of the source transaction
								 * on which the last worker failed, until a
								 * worker has checkpointed what came before
								 * it (invalid: none) */
	XLogRecPtr	careful_until;	/* a checkpoint holding the source up to
								 * here failed: the next worker merges one
								 * source transaction at a time until it
								 * has passed it (invalid: none; see
								 * WorkerMergeBatch) */
	XLogRecPtr	rows_failed_at; /* commit record of the source transaction
								 * after which a careful worker could not
								 * compute a row: its workers are suspect
								 * until a checkpoint past it (invalid:
								 * none; see rows_computable in worker.c) */
	XLogRecPtr	checkpoint_lsn; /* source position of the last checkpoint */
	XLogRecPtr	result_lsn;		/* result table exact up to here */
	XLogRecPtr	wait_lsn;		/* highest position a flowpg.wait awaits */
	TimestampTz waiter_seen_at; /* last time a flowpg.wait or
								 * flowpg.checkpoint call was seen waiting */
	int64		checkpoint_id;
	TimestampTz last_checkpoint_at;
	double		checkpoint_ms;	/* duration of the last checkpoint */
	uint64		checkpoints;	/* taken since the server started */
	double		checkpoint_total_ms;	/* their durations summed */
	TimestampTz caught_up_at;	/* last time processed_lsn reached the
								 * flush position */
	uint64		reload_requested;	/* catalog row changed: read it again */
	uint64		ckpt_requested; /* flowpg.checkpoint calls so far */
	uint64		ckpt_done;		/* requests served */
	XLogRecPtr	ckpt_target;	/* checkpoints and savepoints asked for
								 * hold everything committed up to here */
	uint64		sp_requested;	/* flowpg.savepoint calls so far */
	uint64		sp_attempted;	/* requests a worker began to serve */
	uint64		sp_done;		/* requests served */
	uint64		sp_abandoned;	/* requests a failed worker left undone,
								 * or their callers withdrew */
	int64		sp_id;			/* id of the last savepoint taken, 0 if
								 * no replication slot was free for it */
	char		sp_name[NAMEDATALEN];	/* name of the requested savepoint */

	uint64		events;			/* source rows decoded since worker start */
	double		events_per_second;	/* over the last second or so */
	uint64		keys;
	uint64		state_bytes;
	uint64		ignored_updates;
	uint64		ignored_deletes;
	uint64		ignored_truncates;
	char		last_error[FLOWPG_ERROR_LEN];
	TimestampTz last_error_at;

	/*
	 * The stream's state (a StateDirectory, see state.c).  state_lock held
	 * exclusively to replace the state or merge a batch into it, shared to
	 * read it.
	 */
	LWLock		state_lock;
	dsa_pointer state_handle;

	/*
	 * Set by the worker while it sleeps until a commit wakes it; clear while
	 * it runs or polls the WAL on its own (see wait_for_wal in worker.c).
	 * A committing backend sets the worker's latch only when this is set.
	 */
	pg_atomic_uint32 sleeping;

	/*
	 * The stream's checkpoint writer (writer.c), and the checkpoint handed
	 * to it: posted by the worker, done when job_done reaches job_posted.
	 * Under mutex.
	 */
	pid_t		writer_pid;		/* 0 until it is ready for jobs */
	Latch	   *writer_latch;
	dsa_pointer job;			/* a CheckpointJob */
	uint64		job_posted;
	uint64		job_done;

	/* Broadcast whenever result_lsn, ckpt_done or status changes. */
	ConditionVariable cv;
} StreamCtl;

typedef struct FlowControl
{
	LWLock		lock;			/* see control.c */
	int			tranche_id;
	dsa_handle	area_handle;	/* DSM_HANDLE_INVALID until first use */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	int			max_streams;
	bool		rescan_requested;	/* a database was copied: scan them all */
	pg_atomic_uint32 writers_yield; /* bumped when a stream's process found
									 * no background worker slot: writers
									 * give theirs up (WriterYield) */
	StreamCtl	streams[FLEXIBLE_ARRAY_MEMBER];
} FlowControl;

extern FlowControl *FlowCtl;

extern void ControlShmemRequest(void);
extern void ControlShmemStartup(void);

extern StreamCtl *ControlFind(Oid dboid, int32 stream_id);
extern StreamCtl *ControlFindLocked(Oid dboid, int32 stream_id);
extern StreamCtl *ControlAcquire(Oid dboid, int32 stream_id);
extern int	ControlFreeEntries(void);
extern int	ControlCountWorkerSlots(int *running, int *waiting);
extern int	ControlFreeWorkerSlots(void);
extern void ControlWakeLauncher(void);
extern void ControlRequestRescan(void);
extern void ControlWakeDatabase(Oid dboid);
extern dsa_area *ControlArea(void);
extern void ControlApplyStateLimit(void);
extern const char *ControlStatusName(StreamStatus status);
extern List *ControlListSlots(Oid dboid);
extern StreamIdentity *ControlFindIdentity(List *slots, Oid dboid, int32 stream_id);
extern int	ControlCountStreams(Oid dboid, int32 stream_id);
extern bool ControlDatabaseHasSlots(Oid dboid);
extern void ControlSetError(StreamCtl *ctl, const char *message);
extern void ControlFail(StreamCtl *ctl);
extern void ControlFailOver(StreamCtl *ctl);
extern void ControlConnect(StreamCtl *ctl, StreamIdentity *ident);
extern void ControlReconnectAs(StreamCtl *ctl, Oid owner);
extern void ControlRequestReload(Oid dboid, int32 stream_id, Oid owner);
extern void ControlScheduleRestart(StreamCtl *ctl);
extern void ControlRetryNow(StreamCtl *ctl);
extern List *ControlListAdopting(Oid dboid);
extern bool ControlSlotUsable(const char *slot_name);
extern int64 ControlRetainedWal(Oid dboid, int32 stream_id);
extern int	ControlFreeReplicationSlots(void);
extern int64 ControlUnappliedWal(Oid dboid, int32 stream_id,
								 XLogRecPtr processed);
extern bool ControlOverRetainedWal(int64 unapplied);
extern char *ControlWalAmount(int64 bytes);
extern List *ControlListSavepointSlots(Oid dboid, int32 stream_id);

#endif							/* FLOWPG_CONTROL_H */

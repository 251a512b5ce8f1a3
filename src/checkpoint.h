/*-------------------------------------------------------------------------
 *
 * checkpoint.h
 *	  Writing a stream's checkpoint and restoring from the latest one.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_CHECKPOINT_H
#define FLOWPG_CHECKPOINT_H

#include "flowpg.h"

#include "worker.h"

/*
 * What a checkpoint writes, as the worker chose it: its keys (the first
 * nrows get their result rows written, all nlog go to the state log), the
 * source position they hold, and what it deletes of the state log.
 * Whoever writes it fills in the rest.
 */
typedef struct CheckpointOrder
{
	XLogRecPtr	lsn;			/* the state's source position */
	TimestampTz started;
	int64		state_keys;		/* keys in state */
	int64		restored_keys_end;	/* see FlowWorker */
	int64		dead_below;		/* delete segments older than this
								 * checkpoint (-1: the one written), if
								 * not 0 */
	int64		dead_budget;	/* ... about this many entries of them */
	int			nrows;
	int			nlog;
	/* filled in by the writing process */
	int64		id;
	int64		bytes;			/* of the state log entries */
	int64		gone;			/* state log entries deleted */
} CheckpointOrder;

/*
 * A checkpoint handed to the stream's checkpoint writer
 * (writer.c), in the shared area: the order, then a copy of each of its
 * keys' chunks (MAXALIGNed StateChunks, capacity their size), whose TIDs
 * the writer updates as it writes their rows; or, in_place, the keys'
 * directory slots (uint32 each), and the writer writes from the chunks
 * themselves while the worker waits.
 */
typedef struct CheckpointJob
{
	Size		capacity;		/* bytes allocated, this header included */
	CheckpointOrder order;
	bool		lazy;			/* commit without waiting for the flush */
	bool		in_place;		/* slots, not copies: the worker waits */
	char		kind[16];		/* "periodic" or "forced" */
	XLogRecPtr	commit_end;		/* end of the writer's commit record */
	char		result_name[4 * NAMEDATALEN + 8];	/* the result table's
													 * qualified name, as the
													 * writer found it */
	bool		failed;			/* with the writer's error: */
	int			sqlerrcode;
	char		error[FLOWPG_ERROR_LEN];
	char		detail[FLOWPG_ERROR_LEN];
	char		hint[FLOWPG_ERROR_LEN];
	bool		recompile;		/* the error: what the writer compiled
								 * changed (WorkerCheckCompiled) */
} CheckpointJob;

#define CHECKPOINT_JOB_CHUNKS	MAXALIGN(sizeof(CheckpointJob))

extern void CheckpointPrepare(FlowWorker *w);
extern void CheckpointRefreshKeyIndex(FlowWorker *w);
extern void CheckpointPrepareIdentity(FlowWorker *w);
extern void CheckpointRestore(FlowWorker *w);
extern int64 CheckpointStore(FlowWorker *w, const char *kind);
extern void CheckpointDone(FlowWorker *w, int64 id, bool lazy);
extern void CheckpointConfirm(FlowWorker *w, bool force);
extern void CheckpointFlushUnconfirmed(FlowWorker *w);
extern int64 CheckpointWrite(FlowWorker *w, const char *kind);
extern void CheckpointHandOff(FlowWorker *w, const char *kind);
extern bool CheckpointCollect(FlowWorker *w, bool wait);
extern void CheckpointRunJob(FlowWorker *w, CheckpointJob *job);
extern int64 CheckpointSavepoint(FlowWorker *w, const char *name);

#endif							/* FLOWPG_CHECKPOINT_H */

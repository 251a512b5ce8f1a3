/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The stream worker: one background process per stream.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_WORKER_H
#define FLOWPG_WORKER_H

#include "flowpg.h"

#include "executor/spi.h"
#include "replication/logical.h"
#include "replication/origin.h"

#include "catalog.h"
#include "control.h"
#include "operators.h"
#include "state.h"

/* Everything one worker process knows about its stream. */
typedef struct FlowWorker
{
	StreamCtl  *ctl;
	StreamDef  *def;
	MemoryContext cxt;			/* lives as long as the worker */
	MemoryContext def_cxt;		/* holds def; replaced when it is read again */
	FlowQuery  *fq;
	FlowPlan   *plan;
	FlowBatch  *batch;
	FlowState  *state;
	LogicalDecodingContext *decoding;
	RepOriginId origin;
	char		slot_name[NAMEDATALEN];

	/* Positions in the source WAL; see the checkpoint protocol. */
	XLogRecPtr	restored_lsn;	/* transactions ending here or before are
								 * already in the restored state */
	XLogRecPtr	processed_lsn;	/* decoded up to here */
	XLogRecPtr	confirmed_lsn;	/* confirmed on the slot */
	XLogRecPtr	unconfirmed_commit; /* end of the commit of a checkpoint not
									 * flushed yet when it was taken (see
									 * CheckpointDone); invalid if none */
	XLogRecPtr	unconfirmed_lsn;	/* that checkpoint's source position */
	TimestampTz last_checkpoint;
	TimestampTz ckpt_started;	/* start of the checkpoint being taken */
	TimestampTz last_confirm;
	TimestampTz running_xacts_at;	/* last record of running transactions
									 * logged by DecodeConfirm */
	TimestampTz active_at;		/* last round that decoded new WAL */

	uint64		reload_seen;	/* ctl->reload_requested handled */
	uint64		sp_seen;		/* ctl->sp_requested handled */
	TimestampTz wal_checked_at; /* last check of max_retained_wal */
	TimestampTz started_at;		/* set up then */
	bool		caught_up_once; /* has reached the flush position since */
	TimestampTz rate_at;		/* start of the events/s interval */
	uint64		rate_events;	/* events at rate_at */

	/* Decoding of the current source transaction. */
	bool		skip_txn;
	XLogRecPtr	replaying_commit;	/* its commit record, while its changes
									 * are applied; invalid between */

	/*
	 * The commit of the source transaction that failed the previous worker
	 * (StreamCtl.failed_commit): this one stops before it, once, and
	 * checkpoints what it applied (see stop_at_failed_commit).
	 */
	XLogRecPtr	stop_before;
	bool		stop_reached;
	/*
	 * StreamCtl.careful_until: until the worker has passed it, it stops
	 * decoding after each commit of a source transaction that changed the
	 * state (commit_reached), merges it and computes the result rows of
	 * the keys it changed (see WorkerMergeBatch); careful_commit is that
	 * transaction's commit record, and careful_xid its id, until the end
	 * of the round.
	 */
	XLogRecPtr	careful_until;
	bool		commit_reached;
	XLogRecPtr	careful_commit;
	TransactionId careful_xid;
	bool		suspect;		/* a checkpoint failed since the last one
								 * published: computes the result rows
								 * before each periodic checkpoint (see
								 * rows_computable in worker.c) */
	TimestampTz postponed_since;	/* periodic checkpoints postponed since
									 * (0: they are not) */
	TimestampTz verify_retry_at;	/* next try, while postponed */
	int			retry_delay_ms; /* the wait before it */
	int			bad_index;		/* in the dirty list, the key whose row
								 * failed last */
	bool		recompile;		/* a function or domain it compiled changed
								 * (WorkerCheckCompiled) */
	bool		verifying;		/* a careful worker computes the rows of
								 * the keys a transaction changed */
	XLogRecPtr	ckpt_covering;	/* source position of the checkpoint the
								 * worker writes or collects; invalid
								 * otherwise */
	XLogRecPtr	round_start;	/* where the round being decoded and merged
								 * began; invalid between rounds */
	bool		running;		/* set up: in worker_loop */

	/* Counters published to StreamCtl. */
	uint64		events;
	uint64		ignored_updates;
	uint64		ignored_deletes;
	uint64		ignored_truncates;

	/* Checkpoint statements (checkpoint.c) */
	bool		result_changed; /* result table's definition invalidated */
	bool		key_index_stale;	/* the same, for the plan's key index
									 * (CheckpointRefreshKeyIndex) */
	bool		result_triggers;	/* the result table has triggers */
	TupleDesc	resultdesc;
	Oid			result_rowtype;
	SPIPlanPtr	result_delete;	/* empties the result table */
	SPIPlanPtr	result_upsert;
	SPIPlanPtr	result_tid_update;	/* NULL unless keyed with other columns */
	SPIPlanPtr	state_append;
	SPIPlanPtr	state_compact;
	SPIPlanPtr	checkpoint_next;
	SPIPlanPtr	checkpoint_insert;
	SPIPlanPtr	checkpoint_trim;
	SPIPlanPtr	savepoint_insert;
	SPIPlanPtr	savepoint_state_append;
	SPIPlanPtr	rewrite_done;
	StringInfoData segment;		/* a state log segment being filled */
	int64		log_entries;	/* key entries in flowpg.state */
	/* The state log's compaction in progress, if sweep_from != 0. */
	int64		sweep_from;		/* checkpoint id where it began (see
								 * THIS_CHECKPOINT in checkpoint.c) */
	uint64		sweep_pos;		/* next slot of the directory it visits */
	uint32		sweep;			/* its number, in the chunks it wrote */
	int64		sweep_entries;	/* entries written since it began */
	/* Segments a compaction left to delete, if dead_below != 0. */
	int64		dead_below;		/* those of older checkpoints */
	int64		dead_entries;	/* their entries */
	int64		restored_keys_end;	/* keys with lower ids came from the
									 * checkpoint the worker started from */

	/* The stream's checkpoint writer (writer.c); worker only. */
	int			ctl_index;		/* of ctl in FlowCtl->streams */
	struct BackgroundWorkerHandle *writer;	/* NULL if not started */
	TimestampTz writer_retry_at;	/* none could be started: the worker
									 * writes its checkpoints itself until
									 * then (0: it may start one) */
	const char *writer_why;		/* why, as last logged; NULL once a writer
								 * started */
	uint32		yield_seen;		/* FlowCtl->writers_yield handled */
	dsa_pointer job;			/* CheckpointJob buffer, kept between jobs */
	bool		job_inflight;	/* handed off, not collected yet */
	uint64		forced_request; /* flowpg.checkpoint calls a forced
								 * checkpoint handed off serves, or 0 */
	double		job_worker_ms;	/* time the worker spent handing it off */
	bool		job_no_room;	/* the last one did not fit: written here */
} FlowWorker;

extern PGDLLEXPORT void FlowWorkerMain(Datum main_arg);
extern void WorkerMergeBatch(FlowWorker *w);
extern void WorkerCompile(FlowWorker *w);
extern void WorkerCheckCompiledObjects(FlowWorker *w);
extern bool WorkerCompiledChanged;

/* see WorkerCheckCompiledObjects: a flag test, as it is called per row */
static inline void
WorkerCheckCompiled(FlowWorker *w)
{
	if (unlikely(WorkerCompiledChanged))
		WorkerCheckCompiledObjects(w);
}

#endif							/* FLOWPG_WORKER_H */

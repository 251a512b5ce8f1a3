/*-------------------------------------------------------------------------
 *
 * flowpg.h
 *	  Declarations shared by every flowpg module: GUC variables, naming
 *	  conventions and the process-global flags.
 *
 * Glossary (one word per idea, everywhere):
 *	stream		the user's definition: a query over one source table whose
 *				results are kept in a result table of the stream's name
 *	worker		the background process that runs one stream
 *	launcher	the background process that starts and restarts workers
 *	key			one group of the stream's GROUP BY (the empty key when the
 *				query has no GROUP BY)
 *	state		the aggregates' transition values of every key, in shared
 *				memory
 *	batch		the keys a worker pre-aggregates locally before merging them
 *				into state with the aggregates' combine functions
 *	checkpoint	one transaction writing the keys changed since the previous
 *				checkpoint, their result rows and the source position
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_H
#define FLOWPG_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "storage/ipc.h"
#include "storage/lockdefs.h"
#include "storage/pmsignal.h"

/* Name prefix of every replication slot and origin flowpg owns. */
#define FLOWPG_SLOT_PREFIX		"flowpg_"

/* Length of the last error kept per stream in shared memory. */
#define FLOWPG_ERROR_LEN		512

/* Field 4 of the advisory lock tag flowpg uses to serialize on a stream. */
#define FLOWPG_LOCK_CLASS		0x464C

/* GUC variables (flowpg.c) */
extern int	flowpg_checkpoint_interval;	/* ms */
extern int	flowpg_poll_interval;	/* ms */
extern int	flowpg_state_memory;	/* MB */
extern int	flowpg_max_streams;
extern int	flowpg_checkpoints_retained;
extern int	flowpg_decoding_work_mem;	/* kB */
extern int	flowpg_max_retained_wal;	/* MB, -1: no limit */
extern bool flowpg_checkpoint_writer;

/* True in a process whose flowpg library was loaded by the postmaster. */
extern bool flowpg_preloaded;

/*
 * Set while this process may run the flowpg output plugin: in a stream
 * worker, and in create_stream while it creates the stream's slot.  The
 * plugin's callbacks refuse to run otherwise (see decode.c).
 */
extern bool flowpg_decoding_allowed;

/* flowpg.c */
extern void FlowpgCheckLoaded(void);
extern void FlowpgCheckPrerequisites(void);
extern void FlowpgCheckNotStandby(FunctionCallInfo fcinfo);
extern void FlowpgCheckChange(FunctionCallInfo fcinfo);
extern int	FlowpgCheckpointIntervalMs(void);
extern const char *FlowpgLabel(const char *qualified);

/*
 * Slot and origin name of a stream: flowpg_<database>_<stream id>.  The
 * replication slots are the durable list of streams the launcher starts
 * workers for.
 */
extern char *FlowpgSlotOrigin(void);
extern void FlowpgSlotName(char *buf, Oid dboid, int32 stream_id);
extern bool FlowpgParseSlotName(const char *name, Oid *dboid, int32 *stream_id);

/*
 * Slot of a savepoint: flowpg_sp_<database>_<stream id>_<savepoint id>.
 * It keeps the WAL from the savepoint's position on; it is never used to
 * decode, only copied back into the stream's slot by flowpg.restore.
 */
extern void FlowpgSavepointSlotName(char *buf, Oid dboid, int32 stream_id,
									int64 savepoint_id);
extern bool FlowpgParseSavepointSlotName(const char *name, Oid *dboid,
										 int32 *stream_id, int64 *savepoint_id);

/*
 * The length of an interval in microseconds (a month is 30 days);
 * PG_INT64_MAX or PG_INT64_MIN past what an int64 holds.
 */
extern int64 FlowpgIntervalUsecs(const Interval *iv);

/* Transaction-scoped lock that serializes create, drop and worker start. */
extern void FlowpgLockStream(int32 stream_id, LOCKMODE mode);
extern bool FlowpgStreamLockHeld(int32 stream_id, LOCKMODE mode);
extern bool FlowpgSavepointsLockHeld(int32 stream_id);
extern void FlowpgUnlockStream(int32 stream_id, LOCKMODE mode);
extern void FlowpgLockSavepoints(int32 stream_id);

/* StartTransactionCommand, the transaction's start time marked first. */
extern void FlowpgStartTransaction(void);
extern void FlowpgSetProcessSettings(void);

/*
 * Exit at once if the postmaster died, in loops that run long without
 * waiting on a latch (decoding a large transaction, scanning a source):
 * an orphaned worker kept the old server's shared memory, and a new
 * server could not start until it was done (seconds to minutes).  On
 * Linux the check reads a flag the death signal sets.
 */
static inline void
FlowpgExitIfOrphaned(void)
{
#ifndef USE_POSTMASTER_DEATH_SIGNAL
	static uint32 calls = 0;

	/* elsewhere the check reads a pipe: once every 1024 calls */
	if (++calls % 1024 != 0)
		return;
#endif
	if (!PostmasterIsAlive())
		proc_exit(1);
}

#endif							/* FLOWPG_H */

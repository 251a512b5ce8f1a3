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

extern void CheckpointPrepare(FlowWorker *w);
extern void CheckpointRestore(FlowWorker *w);
extern int64 CheckpointStore(FlowWorker *w, const char *kind);
extern void CheckpointDone(FlowWorker *w, int64 id, bool lazy);
extern void CheckpointConfirm(FlowWorker *w, bool force);
extern void CheckpointFlushUnconfirmed(FlowWorker *w);
extern int64 CheckpointWrite(FlowWorker *w, const char *kind);
extern int64 CheckpointSavepoint(FlowWorker *w, const char *name);

#endif							/* FLOWPG_CHECKPOINT_H */

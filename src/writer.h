/*-------------------------------------------------------------------------
 *
 * writer.h
 *	  A stream's checkpoint writer: writes the worker's periodic
 *	  checkpoints in a process of its own.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_WRITER_H
#define FLOWPG_WRITER_H

#include "flowpg.h"

#include "checkpoint.h"
#include "worker.h"

extern bool WriterReady(FlowWorker *w);
extern CheckpointJob *WriterJobBuffer(FlowWorker *w, Size size);
extern bool WriterReclaim(void *arg);
extern CheckpointJob *WriterJob(FlowWorker *w);
extern void WriterPost(FlowWorker *w);
extern bool WriterJobDone(FlowWorker *w, bool wait);
extern bool WriterStop(FlowWorker *w);
extern void WriterYield(FlowWorker *w);
extern PGDLLEXPORT void FlowWriterMain(Datum main_arg);

#endif							/* FLOWPG_WRITER_H */

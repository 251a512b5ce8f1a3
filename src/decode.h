/*-------------------------------------------------------------------------
 *
 * decode.h
 *	  A stream's replication slot and the logical decoding loop that feeds
 *	  its operators.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_DECODE_H
#define FLOWPG_DECODE_H

#include "flowpg.h"

#include "utils/snapshot.h"

#include "worker.h"

extern void DecodeCreateSlot(const char *slot_name, Snapshot *snapshot);
extern void DecodeDropSlot(const char *slot_name);
extern void DecodeAwaitSlotFree(const char *slot_name);
extern void DecodeDropSlotAtCommit(const char *slot_name);
extern bool DecodeDropFreeSlot(const char *slot_name, pid_t *holder);
extern void DecodeDropSavepointSlots(Oid dboid, int32 stream_id);
extern void DecodeCopySlot(const char *src, const char *dst);
extern void DecodeRewindSlot(const char *src, const char *dst);
extern bool DecodeCopyOwnSlot(FlowWorker *w, const char *dst);
extern bool DecodeStart(FlowWorker *w);
extern bool DecodeRead(FlowWorker *w, int max_records);
extern void DecodeConfirm(FlowWorker *w, XLogRecPtr lsn);
extern void DecodeIgnoreXacts(bool ignore);
extern void DecodeBeforeOwnTransaction(void);
extern bool DecodeClaimSlot(const char *slot_name);
extern void DecodeUnclaimSlot(const char *slot_name);

#endif							/* FLOWPG_DECODE_H */

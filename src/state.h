/*-------------------------------------------------------------------------
 *
 * state.h
 *	  Keyed operator state of one stream, in the shared dsa area.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_STATE_H
#define FLOWPG_STATE_H

#include "flowpg.h"

#include "access/htup_details.h"
#include "storage/itemptr.h"
#include "control.h"

/*
 * One key and its state image.  `data` holds the key as a MinimalTuple
 * (MAXALIGNed) followed by the state image; `capacity` bytes are allocated
 * for both, so that a state that grows a little is updated in place.
 */
typedef struct StateChunk
{
	int64		key_id;			/* stable id, the key of flowpg.state */
	uint32		slot;			/* index in the stream's directory */
	uint32		key_len;
	uint32		state_len;
	uint32		capacity;
	int32		dirty_index;	/* index in the worker's dirty list or -1 */
	ItemPointerData tid;		/* the key's row in the result table, as
								 * last written; invalid if unknown */
	uint16		unused16;		/* keep data MAXALIGNed (asserted in
								 * state.c) */
	uint32		swept;			/* the worker's sweep of the state log that
								 * last wrote it (checkpoint.c), or 0 */
	char		data[FLEXIBLE_ARRAY_MEMBER];
} StateChunk;

#define StateChunkKey(chunk)	((MinimalTuple) (chunk)->data)
#define StateChunkState(chunk)	((chunk)->data + MAXALIGN((chunk)->key_len))

/*
 * The stream's directory of keys, in shared memory: where readers find
 * every chunk.
 */
typedef struct StateDirectory
{
	uint64		nkeys;
	uint64		capacity;
	dsa_pointer slots;			/* dsa_pointer[capacity] */
} StateDirectory;

/* A process's handle on one stream's state. */
typedef struct FlowState
{
	StreamCtl  *ctl;
	dsa_area   *area;
	StateDirectory *dir;

	/* Worker only: keys changed since the last checkpoint. */
	dsa_pointer *dirty;
	int			ndirty;
	int			maxdirty;
	int64		next_key_id;
	uint64		bytes;

	/*
	 * Worker only, optional: gives memory of the worker's own back to the
	 * area when it is full (its checkpoint writer's idle job buffer);
	 * returns whether it freed any.
	 */
	bool		(*reclaim) (void *arg);
	void	   *reclaim_arg;
} FlowState;

extern void StateDestroy(StreamCtl *ctl);
extern FlowState *StateCreate(StreamCtl *ctl);
extern FlowState *StateAttach(StreamCtl *ctl);
extern void StateDetach(FlowState *st);

extern StateChunk *StateGetChunk(FlowState *st, dsa_pointer p);
extern StateChunk *StateGetSlot(FlowState *st, uint64 slot);
extern dsa_pointer StateAddKey(FlowState *st, int64 key_id, MinimalTuple key,
							   const char *image, Size len);
extern dsa_pointer StateSetImage(FlowState *st, dsa_pointer chunkp,
								 const char *image, Size len);
extern char *StateImageInPlace(FlowState *st, dsa_pointer chunkp, Size len);
extern void StateMarkDirty(FlowState *st, dsa_pointer chunkp);
extern void StateClearDirty(FlowState *st);
extern void StateMarkAllDirty(FlowState *st);
extern void StatePublish(FlowState *st);
extern uint64 StateKeys(FlowState *st);
extern void StateReserve(FlowState *st, uint64 nkeys, uint64 bytes);

/* Callback of StateScan: one key's chunk. */
typedef void (*StateScanFn) (void *arg, StateChunk *chunk);
extern void StateScan(FlowState *st, StateScanFn fn, void *arg);

#endif							/* FLOWPG_STATE_H */

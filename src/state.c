/*-------------------------------------------------------------------------
 *
 * state.c
 *	  Keyed operator state of one stream, in shared memory.
 *
 * Each key of a stream is one StateChunk in the shared dsa area
 * (control.c): the key as a MinimalTuple followed by the serialized
 * transition values of all the stream's aggregates.  A per-stream
 * directory, an array of chunk pointers also in the area, is how other
 * processes (flowpg.live) find every chunk.
 *
 * The worker is the only writer, so lookups by key need no shared index:
 * the worker keeps its own (operators.c), which compares keys with the key
 * type's equality operator (keys equal for GROUP BY need not be equal
 * byte for byte: numeric 1.0 and 1.00).  An earlier version kept the keys
 * in a dshash table; its partition locks and chain walks cost a third of
 * the worker's time on high-cardinality streams.
 *
 * Locking: the worker holds its StreamCtl's state_lock exclusively while
 * it replaces the state or merges a batch into it; flowpg.live holds it
 * shared while it copies the chunks, so it sees the state as of a source
 * transaction boundary.  Neither needs anything else.
 *
 * Crash story: the state is never trusted after a failure.  A worker that
 * starts destroys whatever state its stream had (an earlier worker may have
 * died half-way through a merge) and rebuilds it from the latest checkpoint
 * (checkpoint.c).  After a postmaster crash the whole area is gone anyway.
 *
 * Memory: every allocation comes from the area, whose size is capped by
 * flowpg.state_memory; running out is an error that stops the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include <sys/mman.h>

#include "miscadmin.h"
#include "utils/memutils.h"

#include "state.h"

#define DIRECTORY_INITIAL	1024

/* a chunk's key is a MinimalTuple at the start of its data */
StaticAssertDecl(offsetof(StateChunk, data) % MAXIMUM_ALIGNOF == 0,
				 "StateChunk data must be MAXALIGNed");

/* Error raised when the state area is full. */
static void
state_out_of_memory(FlowState *st, Size request)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("stream state exceeds flowpg.state_memory (%d MB)",
					flowpg_state_memory),
			 errdetail("The stream holds %llu keys in %llu bytes and needed %zu more bytes.",
					   (unsigned long long) st->dir->nkeys,
					   (unsigned long long) st->bytes, request),
			 errhint("Raise flowpg.state_memory and reload the configuration; the stream resumes from its last checkpoint.")));
}

static dsa_pointer
state_alloc(FlowState *st, Size size)
{
	dsa_pointer p = dsa_allocate_extended(st->area, size, DSA_ALLOC_NO_OOM);

	/* the area is full: what the worker keeps for later goes first */
	if (!DsaPointerIsValid(p) && st->reclaim != NULL && st->reclaim(st->reclaim_arg))
		p = dsa_allocate_extended(st->area, size, DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(p))
		state_out_of_memory(st, size);
	return p;
}

static dsa_pointer *
directory_slots(dsa_area *area, StateDirectory *dir)
{
	return (dsa_pointer *) dsa_get_address(area, dir->slots);
}

/*
 * Free the stream's state, if it has one.  The caller holds
 * ctl->state_lock exclusively, and no worker of the stream runs.
 */
void
StateDestroy(StreamCtl *ctl)
{
	dsa_area   *area;
	StateDirectory *dir;
	dsa_pointer *slots;
	uint64		i;

	if (!DsaPointerIsValid(ctl->state_handle))
		return;
	area = ControlArea();
	dir = dsa_get_address(area, ctl->state_handle);
	slots = directory_slots(area, dir);
	for (i = 0; i < dir->nkeys; i++)
		dsa_free(area, slots[i]);
	dsa_free(area, dir->slots);
	dsa_free(area, ctl->state_handle);
	ctl->state_handle = InvalidDsaPointer;
}

/*
 * Give the stream an empty state, destroying any earlier one.  For the
 * worker; the caller holds ctl->state_lock exclusively.
 */
FlowState *
StateCreate(StreamCtl *ctl)
{
	FlowState  *st = palloc0(sizeof(FlowState));
	dsa_pointer dirp;

	st->ctl = ctl;
	st->area = ControlArea();
	StateDestroy(ctl);

	dirp = dsa_allocate_extended(st->area, sizeof(StateDirectory), DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(dirp))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("flowpg.state_memory (%d MB) is exhausted", flowpg_state_memory),
				 errhint("Raise flowpg.state_memory and reload the configuration.")));
	st->dir = dsa_get_address(st->area, dirp);
	st->dir->nkeys = 0;
	st->dir->capacity = DIRECTORY_INITIAL;
	st->dir->slots = state_alloc(st, sizeof(dsa_pointer) * DIRECTORY_INITIAL);
	ctl->state_handle = dirp;
	st->bytes = sizeof(StateDirectory) + sizeof(dsa_pointer) * DIRECTORY_INITIAL;

	st->maxdirty = 1024;
	st->dirty = palloc(sizeof(dsa_pointer) * st->maxdirty);
	st->next_key_id = 1;
	return st;
}

/*
 * A handle on a stream's state to read it, or NULL if it has none.  The
 * caller holds ctl->state_lock.
 */
FlowState *
StateAttach(StreamCtl *ctl)
{
	FlowState  *st;

	if (!DsaPointerIsValid(ctl->state_handle))
		return NULL;
	st = palloc0(sizeof(FlowState));
	st->ctl = ctl;
	st->area = ControlArea();
	st->dir = dsa_get_address(st->area, ctl->state_handle);
	return st;
}

void
StateDetach(FlowState *st)
{
	pfree(st);
}

StateChunk *
StateGetChunk(FlowState *st, dsa_pointer p)
{
	return (StateChunk *) dsa_get_address(st->area, p);
}

/* The chunk in a slot of the directory, slot < StateKeys(st). */
StateChunk *
StateGetSlot(FlowState *st, uint64 slot)
{
	Assert(slot < st->dir->nkeys);
	return (StateChunk *) dsa_get_address(st->area,
										  directory_slots(st->area, st->dir)[slot]);
}

uint64
StateKeys(FlowState *st)
{
	return st->dir->nkeys;
}

/* Allocate a chunk with room for a key and an image of `len` bytes. */
static dsa_pointer
state_alloc_chunk(FlowState *st, uint32 key_len, Size len, Size *size)
{
	Size		capacity = MAXALIGN(key_len) + len + len / 4;
	dsa_pointer p;

	*size = offsetof(StateChunk, data) + capacity;
	p = state_alloc(st, *size);
	((StateChunk *) dsa_get_address(st->area, p))->capacity = capacity;
	return p;
}

/* Move the directory to an array of `capacity` slots. */
static void
directory_grow(FlowState *st, uint64 capacity)
{
	StateDirectory *dir = st->dir;
	dsa_pointer bigger = state_alloc(st, sizeof(dsa_pointer) * capacity);

	memcpy(dsa_get_address(st->area, bigger), directory_slots(st->area, dir),
		   sizeof(dsa_pointer) * dir->nkeys);
	dsa_free(st->area, dir->slots);
	dir->slots = bigger;
	st->bytes += sizeof(dsa_pointer) * (capacity - dir->capacity);
	dir->capacity = capacity;
}

/* Give a chunk a slot in the directory, growing it as needed. */
static void
directory_add(FlowState *st, dsa_pointer chunkp)
{
	StateDirectory *dir = st->dir;

	if (dir->nkeys == dir->capacity)
		directory_grow(st, dir->capacity * 2);
	StateGetChunk(st, chunkp)->slot = (uint32) dir->nkeys;
	directory_slots(st->area, dir)[dir->nkeys++] = chunkp;
}

/*
 * Make room for a restore of `nkeys` keys whose keys and state images
 * take `bytes` bytes in all: a directory of nkeys slots, and the shared memory
 * the chunks are about to fill mapped in this process, in one call each
 * instead of a page fault every few keys.  A page fault costs some
 * microseconds on virtual machines (on this project's 2-vCPU VMs about
 * 10 us; perf of a restore of 1,000,000 keys, 2026-12-06: the first
 * writes to new chunks were a third of the worker's time; restores on a
 * dev cluster, six each: 595-766 ms with this, 850-1,348 ms without).
 * The chunks' memory is allocated as one object, populated and freed: its
 * pages stay in the area (dsa keeps a segment whose pages are freed
 * whole) and are where the chunks that follow go.  Only a hint: nothing
 * is populated where the kernel cannot, or the area has not the room.
 */
void
StateReserve(FlowState *st, uint64 nkeys, uint64 bytes)
{
	if (nkeys > st->dir->capacity && nkeys <= MaxAllocSize / sizeof(dsa_pointer))
		directory_grow(st, nkeys);
#ifdef MADV_POPULATE_WRITE
	{
		char	   *slots = (char *) directory_slots(st->area, st->dir);
		char	   *page = (char *) TYPEALIGN_DOWN(4096, slots);
		Size		size;
		dsa_pointer p;

		(void) madvise(page, slots - page + sizeof(dsa_pointer) * st->dir->capacity,
					   MADV_POPULATE_WRITE);

		/* a chunk: its header, its key and image, and slack */
		size = (Size) (nkeys * offsetof(StateChunk, data) + bytes * 5 / 4);
		if (size < 4 * 1024 * 1024)
			return;
		p = dsa_allocate_extended(st->area, size, DSA_ALLOC_HUGE | DSA_ALLOC_NO_OOM);
		if (!DsaPointerIsValid(p))
			return;
		(void) madvise(dsa_get_address(st->area, p), size, MADV_POPULATE_WRITE);
		dsa_free(st->area, p);
	}
#endif
}

/* Add a new key with its first state image; returns its chunk. */
dsa_pointer
StateAddKey(FlowState *st, int64 key_id, MinimalTuple key, const char *image,
			Size len)
{
	Size		size;
	dsa_pointer p = state_alloc_chunk(st, key->t_len, len, &size);
	StateChunk *chunk = dsa_get_address(st->area, p);

	chunk->key_id = key_id;
	chunk->key_len = key->t_len;
	chunk->state_len = len;
	chunk->dirty_index = -1;
	chunk->swept = 0;
	ItemPointerSetInvalid(&chunk->tid);
	memcpy(chunk->data, key, key->t_len);
	memcpy(StateChunkState(chunk), image, len);
	directory_add(st, p);

	st->bytes += size;
	if (key_id >= st->next_key_id)
		st->next_key_id = key_id + 1;
	return p;
}

/*
 * Where to write a new state image of `len` bytes for a key, in its chunk,
 * or NULL when it does not fit there (StateSetImage then moves the key).
 * The caller writes the whole image before anyone reads the chunk.
 */
char *
StateImageInPlace(FlowState *st, dsa_pointer chunkp, Size len)
{
	StateChunk *chunk = dsa_get_address(st->area, chunkp);

	if (MAXALIGN(chunk->key_len) + len > chunk->capacity)
		return NULL;
	chunk->state_len = len;
	return StateChunkState(chunk);
}

/*
 * Replace the state image of a key.  Returns the key's chunk, which moves
 * when the image no longer fits.
 */
dsa_pointer
StateSetImage(FlowState *st, dsa_pointer chunkp, const char *image, Size len)
{
	StateChunk *chunk = dsa_get_address(st->area, chunkp);
	StateChunk *moved;
	dsa_pointer newp;
	Size		size;

	if (MAXALIGN(chunk->key_len) + len <= chunk->capacity)
	{
		memcpy(StateChunkState(chunk), image, len);
		chunk->state_len = len;
		return chunkp;
	}

	newp = state_alloc_chunk(st, chunk->key_len, len, &size);
	moved = dsa_get_address(st->area, newp);
	chunk = dsa_get_address(st->area, chunkp);
	moved->key_id = chunk->key_id;
	moved->slot = chunk->slot;
	moved->key_len = chunk->key_len;
	moved->state_len = len;
	moved->dirty_index = chunk->dirty_index;
	moved->tid = chunk->tid;
	moved->swept = chunk->swept;
	memcpy(moved->data, chunk->data, chunk->key_len);
	memcpy(StateChunkState(moved), image, len);

	directory_slots(st->area, st->dir)[moved->slot] = newp;
	if (moved->dirty_index >= 0)
		st->dirty[moved->dirty_index] = newp;

	st->bytes += size;
	st->bytes -= offsetof(StateChunk, data) + chunk->capacity;
	dsa_free(st->area, chunkp);
	return newp;
}

/* Remember that a key changed since the last checkpoint. */
void
StateMarkDirty(FlowState *st, dsa_pointer chunkp)
{
	StateChunk *chunk = dsa_get_address(st->area, chunkp);

	if (chunk->dirty_index >= 0)
		return;
	if (st->ndirty == st->maxdirty)
	{
		st->maxdirty *= 2;
		st->dirty = repalloc_huge(st->dirty, sizeof(dsa_pointer) * st->maxdirty);
	}
	chunk->dirty_index = st->ndirty;
	st->dirty[st->ndirty++] = chunkp;
}

/* Forget the dirty keys: a checkpoint has written them. */
void
StateClearDirty(FlowState *st)
{
	int			i;

	for (i = 0; i < st->ndirty; i++)
		StateGetChunk(st, st->dirty[i])->dirty_index = -1;
	st->ndirty = 0;
}

/* Copy the state's size into the stream's control entry. */
void
StatePublish(FlowState *st)
{
	StreamCtl  *ctl = st->ctl;

	SpinLockAcquire(&ctl->mutex);
	ctl->keys = st->dir->nkeys;
	ctl->state_bytes = st->bytes;
	SpinLockRelease(&ctl->mutex);
}

/*
 * Call fn for every key.  The caller holds the stream's state_lock, or is
 * its worker.
 */
/* Mark every key dirty: the next checkpoint rewrites them all. */
void
StateMarkAllDirty(FlowState *st)
{
	dsa_pointer *slots = directory_slots(st->area, st->dir);
	uint64		i;

	for (i = 0; i < st->dir->nkeys; i++)
		StateMarkDirty(st, slots[i]);
}

void
StateScan(FlowState *st, StateScanFn fn, void *arg)
{
	dsa_pointer *slots = directory_slots(st->area, st->dir);
	uint64		i;

	for (i = 0; i < st->dir->nkeys; i++)
	{
		fn(arg, (StateChunk *) dsa_get_address(st->area, slots[i]));
	}
}

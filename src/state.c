/*-------------------------------------------------------------------------
 *
 * state.c
 *	  Keyed operator state of one stream, in shared memory.
 *
 * Each stream owns one dshash table in the shared dsa area (control.c).
 * The table maps a 32-bit hash of the group key to a chain of StateChunks,
 * one per key with that hash; which chunk holds a key is decided by the
 * key type's own equality operator (operators.c), because keys that are
 * equal for GROUP BY need not be equal byte for byte (numeric 1.0 and
 * 1.00).  A chunk holds the key as a MinimalTuple and the serialized
 * transition values of all the stream's aggregates.
 *
 * Locking: the worker is the only writer.  It holds its StreamCtl's
 * state_lock exclusively while it replaces the table or merges a batch, so
 * that flowpg.live, which holds it shared while it copies the chunks, sees
 * the state as of a transaction boundary.  dshash's own partition locks
 * are taken underneath as usual.
 *
 * Crash story: the state is never trusted after a failure.  A worker that
 * starts destroys whatever table its stream had (an earlier worker may have
 * died half-way through a merge) and rebuilds it from the latest checkpoint
 * (checkpoint.c).  After a postmaster crash the whole area is gone anyway.
 *
 * Memory: every allocation comes from the area, whose size is capped by
 * flowpg.state_memory; running out is an error that stops the worker.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "miscadmin.h"

#include "state.h"

static dshash_hash
state_bucket_hash(const void *key, size_t size, void *arg)
{
	/* keys are already well-mixed hash values */
	return *(const uint32 *) key;
}

static dshash_parameters
state_params(void)
{
	dshash_parameters params;

	params.key_size = sizeof(uint32);
	params.entry_size = sizeof(StateBucket);
	params.compare_function = dshash_memcmp;
	params.hash_function = state_bucket_hash;
	params.tranche_id = FlowCtl->tranche_id;
	return params;
}

/* Error raised when the state area is full. */
static void
state_out_of_memory(FlowState *st, Size request)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("stream state exceeds flowpg.state_memory (%d MB)",
					flowpg_state_memory),
			 errdetail("The stream holds %llu keys in %llu bytes and needed %zu more bytes.",
					   (unsigned long long) st->nkeys,
					   (unsigned long long) st->bytes, request),
			 errhint("Raise flowpg.state_memory and reload the configuration; the stream resumes from its last checkpoint.")));
}

/* Free every chunk of a table that is about to be destroyed. */
static void
state_free_chunks(dsa_area *area, dshash_table *table)
{
	dshash_seq_status status;
	StateBucket *bucket;

	dshash_seq_init(&status, table, true);
	while ((bucket = dshash_seq_next(&status)) != NULL)
	{
		dsa_pointer p = bucket->head;

		while (DsaPointerIsValid(p))
		{
			StateChunk *chunk = dsa_get_address(area, p);
			dsa_pointer next = chunk->next;

			dsa_free(area, p);
			p = next;
		}
		bucket->head = InvalidDsaPointer;
	}
	dshash_seq_term(&status);
}

/*
 * Free the stream's state table, if it has one.  The caller holds
 * ctl->state_lock exclusively, and no worker of the stream runs.
 */
void
StateDestroy(StreamCtl *ctl)
{
	dshash_parameters params = state_params();
	dsa_area   *area;
	dshash_table *table;

	if (!DsaPointerIsValid(ctl->state_handle))
		return;
	area = ControlArea();
	table = dshash_attach(area, &params, ctl->state_handle, NULL);
	state_free_chunks(area, table);
	dshash_destroy(table);
	ctl->state_handle = InvalidDsaPointer;
}

/*
 * Give the stream an empty state table, destroying any earlier one.  For
 * the worker; the caller holds ctl->state_lock exclusively.
 */
FlowState *
StateCreate(StreamCtl *ctl)
{
	FlowState  *st = palloc0(sizeof(FlowState));
	dshash_parameters params = state_params();

	st->ctl = ctl;
	st->area = ControlArea();
	StateDestroy(ctl);
	st->table = dshash_create(st->area, &params, NULL);
	ctl->state_handle = dshash_get_hash_table_handle(st->table);

	st->maxdirty = 1024;
	st->dirty = palloc(sizeof(dsa_pointer) * st->maxdirty);
	st->next_key_id = 1;
	return st;
}

/*
 * Attach to a stream's state table to read it, or return NULL if it has
 * none.  The caller holds ctl->state_lock.
 */
FlowState *
StateAttach(StreamCtl *ctl)
{
	FlowState  *st;
	dshash_parameters params;

	if (!DsaPointerIsValid(ctl->state_handle))
		return NULL;
	params = state_params();
	st = palloc0(sizeof(FlowState));
	st->ctl = ctl;
	st->area = ControlArea();
	st->table = dshash_attach(st->area, &params, ctl->state_handle, NULL);
	return st;
}

void
StateDetach(FlowState *st)
{
	dshash_detach(st->table);
	pfree(st);
}

/*
 * Find or create the bucket of a hash value and lock it exclusively; the
 * caller walks its chain and must call StateUnlockBucket.
 */
StateBucket *
StateLockBucket(FlowState *st, uint32 hash)
{
	bool		found;
	StateBucket *bucket = dshash_find_or_insert(st->table, &hash, &found);

	if (!found)
		bucket->head = InvalidDsaPointer;
	return bucket;
}

void
StateUnlockBucket(FlowState *st, StateBucket *bucket)
{
	dshash_release_lock(st->table, bucket);
}

StateChunk *
StateGetChunk(FlowState *st, dsa_pointer p)
{
	return (StateChunk *) dsa_get_address(st->area, p);
}

/* Allocate a chunk with room for a key and an image of `len` bytes. */
static dsa_pointer
state_alloc_chunk(FlowState *st, uint32 key_len, Size len, Size *size)
{
	Size		capacity = MAXALIGN(key_len) + len + len / 4;
	dsa_pointer p;

	*size = offsetof(StateChunk, data) + capacity;
	p = dsa_allocate_extended(st->area, *size, DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(p))
		state_out_of_memory(st, *size);
	((StateChunk *) dsa_get_address(st->area, p))->capacity = capacity;
	return p;
}

/* Add a new key with its first state image to a locked bucket. */
dsa_pointer
StateAddKey(FlowState *st, StateBucket *bucket, int64 key_id,
			MinimalTuple key, const char *image, Size len)
{
	Size		size;
	dsa_pointer p = state_alloc_chunk(st, key->t_len, len, &size);
	StateChunk *chunk = dsa_get_address(st->area, p);

	chunk->key_id = key_id;
	chunk->key_len = key->t_len;
	chunk->state_len = len;
	chunk->dirty_index = -1;
	memcpy(chunk->data, key, key->t_len);
	memcpy(StateChunkState(chunk), image, len);
	chunk->next = bucket->head;
	bucket->head = p;

	st->nkeys++;
	st->bytes += size;
	if (key_id >= st->next_key_id)
		st->next_key_id = key_id + 1;
	return p;
}

/*
 * Replace the state image of a key in a locked bucket.  Returns the key's
 * chunk, which moves when the image no longer fits.
 */
dsa_pointer
StateSetImage(FlowState *st, StateBucket *bucket, dsa_pointer chunkp,
			  const char *image, Size len)
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
	chunk = dsa_get_address(st->area, chunkp);	/* area may have grown */
	moved->next = chunk->next;
	moved->key_id = chunk->key_id;
	moved->key_len = chunk->key_len;
	moved->state_len = len;
	moved->dirty_index = chunk->dirty_index;
	memcpy(moved->data, chunk->data, chunk->key_len);
	memcpy(StateChunkState(moved), image, len);

	if (bucket->head == chunkp)
		bucket->head = newp;
	else
	{
		StateChunk *prev = dsa_get_address(st->area, bucket->head);

		while (prev->next != chunkp)
			prev = dsa_get_address(st->area, prev->next);
		prev->next = newp;
	}
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
	ctl->keys = st->nkeys;
	ctl->state_bytes = st->bytes;
	SpinLockRelease(&ctl->mutex);
}

/*
 * Call fn for every key.  The caller holds the stream's state_lock; fn runs
 * under a dshash partition lock, so it should only copy what it needs.
 */
void
StateScan(FlowState *st, StateScanFn fn, void *arg)
{
	dshash_seq_status status;
	StateBucket *bucket;

	dshash_seq_init(&status, st->table, false);
	while ((bucket = dshash_seq_next(&status)) != NULL)
	{
		dsa_pointer p;

		for (p = bucket->head; DsaPointerIsValid(p);)
		{
			StateChunk *chunk = dsa_get_address(st->area, p);

			fn(arg, StateChunkKey(chunk), StateChunkState(chunk),
			   chunk->state_len);
			p = chunk->next;
		}
	}
	dshash_seq_term(&status);
}

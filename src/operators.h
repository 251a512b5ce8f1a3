/*-------------------------------------------------------------------------
 *
 * operators.h
 *	  The stream's operators: filter, key, aggregate (transition, combine,
 *	  final) and output projection, run by PostgreSQL's own executor
 *	  expressions and aggregate support functions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_OPERATORS_H
#define FLOWPG_OPERATORS_H

#include "flowpg.h"

#include "access/htup.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/execnodes.h"
#include "utils/relcache.h"

#include "compile.h"
#include "state.h"

/* One transition value, with nodeAgg's meaning of noTransValue. */
typedef struct AggValue
{
	Datum		value;
	bool		isnull;
	bool		noTransValue;
	bool		borrowed;		/* by reference, in memory that is not its
								 * own allocation: never pfree'd */
} AggValue;

/* Everything needed to run one aggregate. */
typedef struct FlowAgg
{
	Aggref	   *aggref;
	int			numInputs;
	int			numFinalArgs;
	Oid			transtype;
	int16		transtypeLen;
	bool		transtypeByVal;
	Datum		initValue;
	bool		initValueIsNull;
	bool		has_finalfn;
	FmgrInfo	transfn;
	FmgrInfo	combinefn;
	FmgrInfo	finalfn;
	FmgrInfo	serialfn;
	FmgrInfo	deserialfn;
	FunctionCallInfo transfcinfo;
	FunctionCallInfo combinefcinfo;
	FunctionCallInfo finalfcinfo;
	FunctionCallInfo serialfcinfo;
	FunctionCallInfo deserialfcinfo;
	ExprState  *filter;
	ExprState **args;
	AttrNumber *arg_attno;		/* per argument: its source column if it is
								 * just that, else 0 */
} FlowAgg;

/* A stream's compiled operators, for one process. */
typedef struct FlowPlan
{
	FlowQuery  *fq;
	MemoryContext cxt;
	const char *name;			/* the stream's name, for messages (its
								 * caller sets it) */
	int			nkeys;
	int			naggs;
	FlowAgg    *aggs;
	bool		direct;			/* no aggregate has an internal state: a
								 * batch advances the stored states */
	bool		row_snapshot;	/* a row's operators call functions in SQL
								 * or a PL, which need an active snapshot */

	/* per source row */
	TupleTableSlot *srcslot;	/* laid out as the rows being read */
	TupleDesc	basedesc;		/* the source as the plan was built */
	Bitmapset  *srccols;		/* source columns the plan reads */
	ExprContext *econtext;
	ExprState  *where;
	ExprState **keys;
	AttrNumber *key_attno;		/* per key: its source column if it is just
								 * that, else 0 */
	AttrNumber	fetch_attno;	/* the last of those columns */

	/* keys */
	bool		key_byval;		/* one key, by value, equal only to itself
								 * bit for bit: compared and hashed as a
								 * Datum, no function calls */
	uint64		key_mask;		/* the bits of its Datum that are its value */
	TupleDesc	keydesc;
	FmgrInfo   *key_eq;
	FmgrInfo   *key_hash;
	Oid		   *key_coll;
	Datum	   *keyvals;		/* scratch */
	bool	   *keynulls;
	/* the result table's unique index, to check the entry of a new key */
	TupleDesc	key_index_desc; /* NULL: not known, or no key is a varlena */
	int		   *key_index_cols; /* per index column: its key */
	char	   *key_index_name;
	Size		key_index_max;	/* the largest entry a btree page takes */

	/* the aggregate support functions' view of their caller */
	AggState   *aggstate;
	ExprContext *aggecontext;

	/* output */
	TupleTableSlot *finalslot;	/* keys, then final aggregate values */
	TupleTableSlot *outslot;	/* the output row */
	ExprContext *outecontext;
	ProjectionInfo *outproj;
} FlowPlan;

/*
 * Local pre-aggregation of a run of source transactions, and the worker's
 * index of the keys in its shared state.
 */
typedef struct FlowBatch FlowBatch;

extern FlowPlan *PlanBuild(FlowQuery *fq);
extern void PlanSetSourceDesc(FlowPlan *plan, TupleDesc desc);
extern void PlanSetKeyIndex(FlowPlan *plan, Relation index, const int *cols);
extern bool PlanReadOnlyBegin(void);
extern void PlanReadOnlyEnd(FlowPlan *plan, bool was, bool failed);
extern void PlanRaiseWrite(const char *name, const char *detail,
						   const char *context) pg_attribute_noreturn();
extern TupleTableSlot *PlanFinalize(FlowPlan *plan, MinimalTuple key,
									const char *image, Size len);
extern TupleTableSlot *PlanFinalizeChunk(FlowPlan *plan, StateChunk *chunk);
extern uint32 PlanKeyHash(FlowPlan *plan, Datum *values, bool *isnull);
extern bool PlanKeysEqual(FlowPlan *plan, Datum *v1, bool *n1, Datum *v2,
						  bool *n2);
extern uint32 PlanStoredKeyHash(FlowPlan *plan, MinimalTuple key);
extern MinimalTuple PlanEmptyKey(FlowPlan *plan);
extern void PlanOutputToTable(TupleTableSlot *out, TupleDesc table,
							  Datum *values, bool *nulls);

extern FlowBatch *BatchCreate(FlowPlan *plan);
extern void BatchAdd(FlowBatch *batch, FlowState *st, HeapTuple tuple);
extern int	BatchGroups(FlowBatch *batch);
extern void BatchMerge(FlowBatch *batch, FlowState *st, bool verify);
extern void BatchVerify(FlowBatch *batch, FlowState *st);
extern void BatchReserveKeys(FlowBatch *batch, uint64 nkeys);
extern uint32 BatchPrefetchKey(FlowBatch *batch, MinimalTuple key);
extern bool BatchRestoreKey(FlowBatch *batch, FlowState *st, int64 key_id,
							MinimalTuple key, uint32 hash, const char *image,
							Size len, ItemPointer tid);
extern void BatchReset(FlowBatch *batch);

#endif							/* FLOWPG_OPERATORS_H */

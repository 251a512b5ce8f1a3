/*-------------------------------------------------------------------------
 *
 * operators.c
 *	  The stream's operators: filter, key, aggregate and output projection.
 *
 * Every expression runs in PostgreSQL's executor (ExecInitExpr and
 * friends) and every aggregate through its own support functions, called
 * the way nodeAgg.c calls them: transition functions while a worker
 * aggregates a batch of source rows in local memory, combine functions
 * when the batch is merged into the shared state, serialization functions
 * to store a transition value as flat bytes (the only thing shared memory
 * and the checkpoint tables can hold), and final functions to produce the
 * output row.  The support functions see a minimal AggState as their
 * context, which is all AggCheckCallContext() needs.
 *
 * A batch meets each key once through the worker's index of its keys
 * (one probe per row finds the key's chunk and its group in the batch).
 * When no aggregate has an internal state (a "direct" plan: count, sum,
 * avg, min, max of the usual types, ...), a key's group starts from the
 * key's stored transition values, the batch's rows advance them, and the
 * merge stores them back: no partial state, no combine call, and the rows
 * are aggregated in the order a batch query over the table would see them.
 * A deserialized internal state is only promised to combine and final
 * functions, not to the transition function (numeric_deserialize made
 * states that no longer added up squares, until a PostgreSQL minor
 * release fixed it), so a plan with such an aggregate aggregates a batch
 * into partial states from the initial values and combines them into the
 * stored states at the merge.
 *
 * A state image is the concatenation of each aggregate's transition value
 * in datumSerialize() format, internal states through their serialization
 * function, but for a NULL that a transition function returned (see
 * IMAGE_RETURNED_NULL).  A key is a MinimalTuple of the GROUP BY values.
 *
 * The per-row path is what a busy stream's worker spends most of its own
 * time on (test/bench/profile counts it), so the common cases skip steps:
 * keys and arguments that are plain columns are read from the deformed row
 * rather than through the expression evaluator; a single by-value key
 * whose equality is bitwise (integers, dates, ...: the btree "equalimage"
 * test) is hashed and compared as a Datum; a direct plan's group copies the
 * stored image's values into its own allocation; and a merged image is
 * written where the old one was when it fits, which is nearly always.
 *
 * Memory: a FlowPlan lives in its own context.  Per-row work happens in
 * the plan's per-tuple context, reset for every row; a batch's groups and
 * transition values live in the batch's context, reset after every merge
 * (its first megabyte is kept, not returned to the system each time);
 * merging and finalizing use contexts reset every few hundred keys and for
 * every key.  The key index lives as long as the plan.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include <sys/mman.h>

#include "access/detoast.h"
#include "access/heaptoast.h"
#include "access/itup.h"
#include "access/nbtree.h"
#include "access/table.h"
#include "catalog/pg_aggregate.h"
#include "catalog/pg_am.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_agg.h"
#include "port/pg_bitutils.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/expandeddatum.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "operators.h"

/*
 * A key the current batch has met, and its transition values.  They start
 * from the key's state as stored in its chunk when the plan is direct (the
 * rows advance the key's own transition values, as a batch query would),
 * or from the aggregates' initial values otherwise (a partial state,
 * combined into the stored one when the batch is merged), and from the
 * initial values for a key new to the state.  Only a new key keeps its
 * values here: an old one has them in its chunk.
 */
typedef struct BatchGroup
{
	uint32		hash;
	dsa_pointer chunk;			/* InvalidDsaPointer for a new key */
	Datum	   *keys;			/* a new key's values, else NULL */
	bool	   *nulls;
	AggValue	vals[FLEXIBLE_ARRAY_MEMBER];
} BatchGroup;

/*
 * The worker's index of its keys: from a key to its chunk in the shared
 * state and, once the current batch has met the key, to its group.  One
 * probe per source row finds both.
 *
 * An entry's group is an index into the batch's array of groups, valid
 * only while the batch lasts: it is the entry's if it is below the
 * batch's count and that group has the entry's chunk (chunks do not move
 * while a batch lasts, so no other key's group has it).  A key new in
 * this batch has no chunk until the batch is merged; its group, always
 * valid, holds its values meanwhile.
 *
 * The key a probe looks up (a KeyRef) says how to compare: a valid chunk
 * finds the entry of that chunk, a group the entry of that new key, and
 * neither the key whose values are in the IndexProbe.
 *
 * An entry of a single by-value key also keeps the low 32 bits of its
 * key's bits (in what would be padding).  Its hash is murmurhash32 of the
 * bits' two halves xored, a bijection, so hash and low bits together are
 * the whole key: a probe whose hash matches compares those, not the key
 * in the chunk (a read of shared memory, a cache miss per row with many
 * keys).  A null key and a key whose bits are 0 have the same hash and
 * low bits; those compare the long way.
 */
#define NO_GROUP	PG_UINT32_MAX

typedef struct KeyRef
{
	dsa_pointer chunk;
	uint32		group;
	uint32		low;			/* a by-value key's low bits, else 0 */
} KeyRef;

typedef struct IndexEntry
{
	KeyRef		ref;
	uint32		hash;
	char		status;
} IndexEntry;

typedef struct IndexProbe
{
	FlowPlan   *plan;
	FlowState  *st;
	FlowBatch  *batch;
	uint32		hash;
	Datum	   *vals;			/* the key looked up */
	bool	   *nulls;
	Datum	   *scratch;		/* a stored key, deformed */
	bool	   *scratch_nulls;
} IndexProbe;

static bool index_equal(IndexProbe *probe, KeyRef stored, KeyRef lookup);

#define KEYINDEX_FILLFACTOR 0.9	/* simplehash's default, named here */

#define SH_PREFIX keyindex
#define SH_FILLFACTOR KEYINDEX_FILLFACTOR
#define SH_ELEMENT_TYPE IndexEntry
#define SH_KEY_TYPE KeyRef
#define SH_KEY ref
#define SH_HASH_KEY(tb, key) (((IndexProbe *) (tb)->private_data)->hash)
#define SH_EQUAL(tb, a, b) index_equal((IndexProbe *) (tb)->private_data, a, b)
#define SH_STORE_HASH
#define SH_GET_HASH(tb, a) ((a)->hash)
#define SH_SCOPE static inline
#define SH_DECLARE
#define SH_DEFINE
#define SH_USE_NONDEFAULT_ALLOCATOR
#include "lib/simplehash.h"

/*
 * The index's array, in the index's memory context, but aligned to and
 * advised as huge pages where it is big enough to hold one.  The index of
 * a million keys is 48 MB, filled at random by a restore and probed at
 * random for every row, and on virtual machines the first touch of each
 * 4 kB page costs a fault of some microseconds (on this project's 2-vCPU
 * VMs about 10 us: writing 160 MB of fresh memory took 430 ms on 4 kB
 * pages, 12 ms on huge pages).  Restores of 1,000,000 keys on a dev
 * cluster (2026-12-06, six each): 600-777 ms with the advice, 709-799 ms
 * without.  The kernel heeds it where transparent huge pages are "always"
 * or "madvise"; elsewhere it changes nothing.
 */
#define KEYINDEX_HUGE_PAGE ((Size) 2 * 1024 * 1024)

static inline void *
keyindex_allocate(keyindex_hash *type, Size size)
{
	Size		align = size < KEYINDEX_HUGE_PAGE ? MAXIMUM_ALIGNOF : KEYINDEX_HUGE_PAGE;
	char	   *raw;
	char	   *data;

	/* room to align, and the raw pointer just below the aligned one */
	raw = MemoryContextAllocExtended(type->ctx, size + align + sizeof(char *),
									 MCXT_ALLOC_HUGE);
	data = (char *) TYPEALIGN(align, raw + sizeof(char *));
	((char **) data)[-1] = raw;
#ifdef MADV_HUGEPAGE
	if (align == KEYINDEX_HUGE_PAGE)
		(void) madvise(data, size & ~(KEYINDEX_HUGE_PAGE - 1), MADV_HUGEPAGE);
#endif
	memset(data, 0, size);
	return data;
}

static inline void
keyindex_free(keyindex_hash *type, void *pointer)
{
	pfree(((char **) pointer)[-1]);
}

/* One transition value as an image stores it: internal states serialized. */
typedef struct ImageValue
{
	Datum		value;
	bool		isnull;
	bool		returned_null;	/* NULL from the transition function */
	bool		byval;
	int16		typlen;
} ImageValue;

/*
 * The header of a transition value in an image where datumSerialize's
 * would be -2 (NULL): a NULL that an aggregate without an initial value
 * has as its state once its transition function returned NULL, not
 * because it has seen no row.  Strict transition functions are not
 * called with a NULL state: the state stays NULL for good, where a first
 * row would become the state of one with none yet.  Direct plans only:
 * the states of the others are combined, and combining, as PostgreSQL's
 * partial aggregation does, skips NULL partial states, so that a key's
 * stored state stays without a value until a partial state has one
 * (sum(int4) of a key's first rows, all NULL, is NULL: taken for a NULL
 * returned, it kept the key's sum NULL for good).
 */
#define IMAGE_RETURNED_NULL		(-3)

struct FlowBatch
{
	FlowPlan   *plan;
	MemoryContext cxt;			/* the groups and their values */
	MemoryContext mergecxt;		/* reset every MERGE_RESET_KEYS keys merged */

	/* the index of the keys in the shared state; lives with the plan */
	keyindex_hash *index;
	IndexProbe *probe;

	/* the current batch's groups, in the order it met them */
	BatchGroup **groups;
	int			ngroups;
	int			maxgroups;

	/* scratch space of merge_group, allocated once */
	AggValue   *vals;
	ImageValue *ivals;
	StringInfoData image;
	int			merged;

	/* the chunks the last merge wrote, if asked for (BatchVerify); in cxt */
	dsa_pointer *written;
	int			nwritten;
};

/* Keys merged between two resets of the merge context. */
#define MERGE_RESET_KEYS	256

/* ---------------------------------------------------------------------
 * Building the plan
 * ---------------------------------------------------------------------
 */

static Datum
get_init_value(Datum text_init, Oid transtype)
{
	Oid			typinput,
				typioparam;
	char	   *str = TextDatumGetCString(text_init);

	getTypeInputInfo(transtype, &typinput, &typioparam);
	return OidInputFunctionCall(typinput, str, typioparam, -1);
}

/* Look up a support function and give it its expression, as nodeAgg does. */
static FunctionCallInfo
init_support_fn(FlowPlan *plan, FmgrInfo *flinfo, Oid fn, Expr *expr,
				int nargs, Oid collation)
{
	FunctionCallInfo fcinfo = palloc0(SizeForFunctionCallInfo(nargs));

	fmgr_info(fn, flinfo);
	fmgr_info_set_expr((Node *) expr, flinfo);
	InitFunctionCallInfoData(*fcinfo, flinfo, nargs, collation,
							 (Node *) plan->aggstate, NULL);
	return fcinfo;
}

/*
 * The source column an expression is, if it is just one (the usual key or
 * aggregate argument): read straight from the row, not through the
 * expression evaluator.  Notes the last such column in the plan.
 */
static AttrNumber
column_of(FlowPlan *plan, Expr *expr)
{
	AttrNumber	attno;

	if (!IsA(expr, Var) || ((Var *) expr)->varattno <= 0)
		return 0;
	attno = ((Var *) expr)->varattno;
	plan->fetch_attno = Max(plan->fetch_attno, attno);
	return attno;
}

static void
build_agg(FlowPlan *plan, FlowAgg *agg, Aggref *aggref)
{
	HeapTuple	tuple;
	Form_pg_aggregate form;
	Oid			input_types[FUNC_MAX_ARGS];
	int			nargs = get_aggregate_argtypes(aggref, input_types);
	Oid			coll = aggref->inputcollid;
	Expr	   *expr;
	Datum		text_init;
	AclResult	aclresult;
	ListCell   *lc;
	int			i = 0;

	aclresult = pg_proc_aclcheck(aggref->aggfnoid, GetUserId(), ACL_EXECUTE);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_AGGREGATE,
					   get_func_name(aggref->aggfnoid));

	tuple = SearchSysCache1(AGGFNOID, ObjectIdGetDatum(aggref->aggfnoid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for aggregate %u", aggref->aggfnoid);
	form = (Form_pg_aggregate) GETSTRUCT(tuple);

	agg->aggref = aggref;
	agg->numInputs = nargs;
	agg->numFinalArgs = form->aggfinalextra ? nargs + 1 : 1;
	agg->transtype = resolve_aggregate_transtype(aggref->aggfnoid,
												 form->aggtranstype,
												 input_types, nargs);
	get_typlenbyval(agg->transtype, &agg->transtypeLen, &agg->transtypeByVal);
	text_init = SysCacheGetAttr(AGGFNOID, tuple, Anum_pg_aggregate_agginitval,
								&agg->initValueIsNull);
	if (!agg->initValueIsNull)
		agg->initValue = get_init_value(text_init, agg->transtype);

	build_aggregate_transfn_expr(input_types, nargs, 0, aggref->aggvariadic,
								 agg->transtype, coll, form->aggtransfn,
								 InvalidOid, &expr, NULL);
	agg->transfcinfo = init_support_fn(plan, &agg->transfn, form->aggtransfn,
									   expr, nargs + 1, coll);

	/* a combine function is a transition function over two states */
	build_aggregate_transfn_expr(&agg->transtype, 1, 0, false, agg->transtype,
								 coll, form->aggcombinefn, InvalidOid,
								 &expr, NULL);
	agg->combinefcinfo = init_support_fn(plan, &agg->combinefn,
										 form->aggcombinefn, expr, 2, coll);

	agg->has_finalfn = OidIsValid(form->aggfinalfn);
	if (agg->has_finalfn)
	{
		build_aggregate_finalfn_expr(input_types, agg->numFinalArgs,
									 agg->transtype, aggref->aggtype, coll,
									 form->aggfinalfn, &expr);
		agg->finalfcinfo = init_support_fn(plan, &agg->finalfn,
										   form->aggfinalfn, expr,
										   agg->numFinalArgs, coll);
	}
	if (agg->transtype == INTERNALOID)
	{
		build_aggregate_serialfn_expr(form->aggserialfn, &expr);
		agg->serialfcinfo = init_support_fn(plan, &agg->serialfn,
											form->aggserialfn, expr, 1,
											InvalidOid);
		build_aggregate_deserialfn_expr(form->aggdeserialfn, &expr);
		agg->deserialfcinfo = init_support_fn(plan, &agg->deserialfn,
											  form->aggdeserialfn, expr, 2,
											  InvalidOid);
	}
	ReleaseSysCache(tuple);

	if (aggref->aggfilter != NULL)
		agg->filter = ExecInitExpr(aggref->aggfilter, NULL);
	agg->args = palloc0(sizeof(ExprState *) * (nargs + 1));
	agg->arg_attno = palloc0(sizeof(AttrNumber) * (nargs + 1));
	foreach(lc, aggref->args)
	{
		Expr	   *arg = lfirst_node(TargetEntry, lc)->expr;

		agg->arg_attno[i] = column_of(plan, arg);
		agg->args[i++] = ExecInitExpr(arg, NULL);
	}
}

/*
 * Is equality under eqop the same as equality of the values' bits?  The
 * btree "equalimage" support function says so (as it does for B-tree
 * deduplication): true for integers, dates, timestamps, enums, ...;
 * false for numeric (1.0 = 1.00), floats (0 = -0) and types without one.
 */
static bool
equality_is_image(Oid eqop, Oid collation)
{
	List	   *interps = get_op_btree_interpretation(eqop);
	ListCell   *lc;

	foreach(lc, interps)
	{
		OpBtreeInterpretation *interp = lfirst(lc);
		Oid			proc;

		if (interp->strategy != BTEqualStrategyNumber ||
			interp->oplefttype != interp->oprighttype)
			continue;
		proc = get_opfamily_proc(interp->opfamily_id, interp->oplefttype,
								 interp->oprighttype, BTEQUALIMAGE_PROC);
		if (OidIsValid(proc) &&
			DatumGetBool(OidFunctionCall1Coll(proc, collation,
											  ObjectIdGetDatum(interp->oplefttype))))
			return true;
	}
	return false;
}

static void
build_keys(FlowPlan *plan)
{
	FlowQuery  *fq = plan->fq;
	ListCell   *lc,
			   *lc2;
	int			i = 0;

	plan->keys = palloc0(sizeof(ExprState *) * (plan->nkeys + 1));
	plan->key_attno = palloc0(sizeof(AttrNumber) * (plan->nkeys + 1));
	plan->key_eq = palloc0(sizeof(FmgrInfo) * (plan->nkeys + 1));
	plan->key_hash = palloc0(sizeof(FmgrInfo) * (plan->nkeys + 1));
	plan->key_coll = palloc0(sizeof(Oid) * (plan->nkeys + 1));
	plan->keyvals = palloc0(sizeof(Datum) * (plan->nkeys + 1));
	plan->keynulls = palloc0(sizeof(bool) * (plan->nkeys + 1));
	plan->keydesc = CreateTemplateTupleDesc(plan->nkeys);
	forboth(lc, fq->keys, lc2, fq->key_eqops)
	{
		Expr	   *expr = lfirst(lc);
		Oid			eqop = lfirst_oid(lc2);
		Oid			hash_fn,
					rhs_hash_fn;

		if (!get_op_hash_functions(eqop, &hash_fn, &rhs_hash_fn))
			elog(ERROR, "could not find hash function for operator %u", eqop);
		fmgr_info(get_opcode(eqop), &plan->key_eq[i]);
		fmgr_info(hash_fn, &plan->key_hash[i]);
		plan->key_coll[i] = exprCollation((Node *) expr);
		plan->key_attno[i] = column_of(plan, expr);
		plan->keys[i] = ExecInitExpr(expr, NULL);
		TupleDescInitEntry(plan->keydesc, i + 1, NULL, exprType((Node *) expr),
						   exprTypmod((Node *) expr), 0);
		TupleDescInitEntryCollation(plan->keydesc, i + 1, plan->key_coll[i]);
		i++;
	}
	plan->key_byval = plan->nkeys == 1 &&
		TupleDescAttr(plan->keydesc, 0)->attbyval &&
		equality_is_image(linitial_oid(fq->key_eqops), plan->key_coll[0]);
	if (plan->key_byval && TupleDescAttr(plan->keydesc, 0)->attlen < (int) sizeof(Datum))
		plan->key_mask = (UINT64CONST(1) << (8 * TupleDescAttr(plan->keydesc, 0)->attlen)) - 1;
	else
		plan->key_mask = ~UINT64CONST(0);
}

/* The final row's descriptor: the keys, then each aggregate's result. */
static TupleDesc
build_final_desc(FlowPlan *plan)
{
	TupleDesc	desc = CreateTemplateTupleDesc(plan->nkeys + plan->naggs);
	int			i;

	for (i = 0; i < plan->nkeys; i++)
		TupleDescCopyEntry(desc, i + 1, plan->keydesc, i + 1);
	for (i = 0; i < plan->naggs; i++)
	{
		Aggref	   *aggref = plan->aggs[i].aggref;

		TupleDescInitEntry(desc, plan->nkeys + i + 1, NULL, aggref->aggtype,
						   -1, 0);
		TupleDescInitEntryCollation(desc, plan->nkeys + i + 1,
									aggref->aggcollid);
	}
	return desc;
}

static bool
non_c_checker(Oid func, void *context)
{
	return !CompileFunctionIsC(func);
}

/*
 * Does the expression call a function written in SQL or a PL?  A domain's
 * constraints may, unseen in the expression.
 */
static bool
calls_non_c_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, CoerceToDomain) ||
		check_functions_in_node(node, non_c_checker, context))
		return true;
	return expression_tree_walker(node, calls_non_c_walker, context);
}

/*
 * Compile a stream's operators for this process, in a new memory context
 * under the current one, with the source table's descriptor as it is now.
 */
FlowPlan *
PlanBuild(FlowQuery *fq)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "flowpg plan",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	FlowPlan   *plan = palloc0(sizeof(FlowPlan));
	Relation	source = table_open(fq->source, AccessShareLock);
	TupleDesc	finaldesc;
	ListCell   *lc;
	int			i = 0;

	plan->fq = fq;
	plan->cxt = cxt;
	plan->nkeys = list_length(fq->keys);
	plan->naggs = list_length(fq->aggs);

	plan->basedesc = CreateTupleDescCopyConstr(RelationGetDescr(source));
	plan->srcslot = MakeSingleTupleTableSlot(plan->basedesc, &TTSOpsHeapTuple);
	pull_varattnos((Node *) fq->where, 1, &plan->srccols);
	pull_varattnos((Node *) fq->keys, 1, &plan->srccols);
	pull_varattnos((Node *) fq->aggs, 1, &plan->srccols);
	plan->econtext = CreateStandaloneExprContext();
	plan->econtext->ecxt_scantuple = plan->srcslot;
	plan->where = ExecInitQual(fq->where, NULL);

	plan->aggecontext = makeNode(ExprContext);
	plan->aggstate = makeNode(AggState);
	plan->aggstate->curaggcontext = plan->aggecontext;
	plan->aggstate->tmpcontext = plan->econtext;
	plan->aggstate->aggcontexts = palloc(sizeof(ExprContext *));
	plan->aggstate->aggcontexts[0] = plan->aggecontext;

	build_keys(plan);
	plan->aggs = palloc0(sizeof(FlowAgg) * (plan->naggs + 1));
	plan->direct = true;
	foreach(lc, fq->aggs)
	{
		build_agg(plan, &plan->aggs[i], lfirst(lc));
		if (plan->aggs[i].transtype == INTERNALOID)
			plan->direct = false;
		i++;
	}

	plan->row_snapshot = calls_non_c_walker((Node *) fq->where, NULL) ||
		calls_non_c_walker((Node *) fq->keys, NULL) ||
		calls_non_c_walker((Node *) fq->aggs, NULL);
	for (i = 0; i < plan->naggs; i++)
		if (!CompileFunctionIsC(plan->aggs[i].transfn.fn_oid))
			plan->row_snapshot = true;
	for (i = 0; i < plan->nkeys; i++)
		if (!CompileFunctionIsC(plan->key_eq[i].fn_oid) ||
			!CompileFunctionIsC(plan->key_hash[i].fn_oid))
			plan->row_snapshot = true;

	finaldesc = build_final_desc(plan);
	plan->finalslot = MakeSingleTupleTableSlot(finaldesc, &TTSOpsVirtual);
	plan->outslot = MakeSingleTupleTableSlot(ExecCleanTypeFromTL(fq->output),
											 &TTSOpsVirtual);
	plan->outecontext = CreateStandaloneExprContext();
	plan->outecontext->ecxt_outertuple = plan->finalslot;
	plan->outproj = ExecBuildProjectionInfo(fq->output, plan->outecontext,
											plan->outslot, NULL, finaldesc);

	table_close(source, AccessShareLock);
	MemoryContextSwitchTo(oldcxt);
	return plan;
}

/*
 * Read source rows as desc lays them out.  The caller passes the source's
 * descriptor as of the row being decoded (the historic catalog), which is
 * not always the one the plan was built with: ALTER TABLE ... ALTER COLUMN
 * ... TYPE of a column the stream does not use rewrites the table with a
 * new layout, and a worker built after it still decodes rows written
 * before it.  The columns the plan reads must keep their types (flowpg
 * refuses to change them); anything else may change.
 */
void
PlanSetSourceDesc(FlowPlan *plan, TupleDesc desc)
{
	TupleDesc	cur = plan->srcslot->tts_tupleDescriptor;
	MemoryContext oldcxt;
	int			col = -1;

	if (equalTupleDescs(desc, cur))
		return;
	while ((col = bms_next_member(plan->srccols, col)) >= 0)
	{
		AttrNumber	attno = col + FirstLowInvalidHeapAttributeNumber;
		Form_pg_attribute base;

		if (attno <= 0)
			elog(ERROR, "stream reads source attribute %d", attno);	/* refused by compile.c */
		base = TupleDescAttr(plan->basedesc, attno - 1);
		if (attno > desc->natts ||
			TupleDescAttr(desc, attno - 1)->attisdropped ||
			TupleDescAttr(desc, attno - 1)->atttypid != base->atttypid)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("column \"%s\" of source \"%s\" changed under its stream",
							NameStr(base->attname), get_rel_name(plan->fq->source)),
					 errdetail("The stream reads the column as type %s.",
							   format_type_be(base->atttypid)),
					 errhint("Drop the stream and create it again.")));
	}

	oldcxt = MemoryContextSwitchTo(plan->cxt);
	ExecDropSingleTupleTableSlot(plan->srcslot);
	if (cur != plan->basedesc)
		FreeTupleDesc(cur);
	plan->srcslot = MakeSingleTupleTableSlot(equalTupleDescs(desc, plan->basedesc) ?
											 plan->basedesc :
											 CreateTupleDescCopyConstr(desc),
											 &TTSOpsHeapTuple);
	plan->econtext->ecxt_scantuple = plan->srcslot;
	MemoryContextSwitchTo(oldcxt);
}

/* ---------------------------------------------------------------------
 * Keys
 * ---------------------------------------------------------------------
 */

/*
 * The bits of a by-value key: only its type's length of them
 * (plan->key_mask), as a Datum of a shorter type may come sign-extended or
 * not, depending on the function that made it.
 */
static inline uint64
key_bits(FlowPlan *plan, Datum value)
{
	return (uint64) value & plan->key_mask;
}

/*
 * Hash a key with its types' hash functions, as execGrouping.c does, or a
 * by-value key by its bits.  The hashes never leave the worker's index.
 */
uint32
PlanKeyHash(FlowPlan *plan, Datum *values, bool *isnull)
{
	uint32		hash = 0;
	int			i;

	if (plan->key_byval)
	{
		uint64		bits = isnull[0] ? 0 : key_bits(plan, values[0]);

		return murmurhash32((uint32) bits ^ (uint32) (bits >> 32));
	}
	for (i = 0; i < plan->nkeys; i++)
	{
		hash = pg_rotate_left32(hash, 1);
		if (!isnull[i])
			hash ^= DatumGetUInt32(FunctionCall1Coll(&plan->key_hash[i],
													 plan->key_coll[i],
													 values[i]));
	}
	return murmurhash32(hash);
}

/* Are two keys equal for GROUP BY?  NULLs group together. */
bool
PlanKeysEqual(FlowPlan *plan, Datum *v1, bool *n1, Datum *v2, bool *n2)
{
	int			i;

	if (plan->key_byval)
		return n1[0] == n2[0] &&
			(n1[0] || key_bits(plan, v1[0]) == key_bits(plan, v2[0]));
	for (i = 0; i < plan->nkeys; i++)
	{
		if (n1[i] != n2[i])
			return false;
		if (n1[i])
			continue;
		if (!DatumGetBool(FunctionCall2Coll(&plan->key_eq[i], plan->key_coll[i],
											v1[i], v2[i])))
			return false;
	}
	return true;
}

/* Deform a stored key; the values point into the key. */
static void
key_deform(FlowPlan *plan, MinimalTuple key, Datum *values, bool *isnull)
{
	HeapTupleData tuple;

	tuple.t_len = key->t_len + MINIMAL_TUPLE_OFFSET;
	tuple.t_data = (HeapTupleHeader) ((char *) key - MINIMAL_TUPLE_OFFSET);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	heap_deform_tuple(&tuple, plan->keydesc, values, isnull);
}

/* Hash of a stored key. */
uint32
PlanStoredKeyHash(FlowPlan *plan, MinimalTuple key)
{
	key_deform(plan, key, plan->keyvals, plan->keynulls);
	return PlanKeyHash(plan, plan->keyvals, plan->keynulls);
}

/* The key of a stream without GROUP BY, in the current memory context. */
MinimalTuple
PlanEmptyKey(FlowPlan *plan)
{
	return heap_form_minimal_tuple(plan->keydesc, NULL, NULL);
}

/*
 * The result table's unique index on the keys (cols[j] is the key in its
 * column j), into which a checkpoint inserts each new key's entry.  A
 * btree entry takes at most about a third of a page: a longer key would
 * fail every checkpoint, in a statement that names neither the key nor
 * the row.  check_key_size checks each new key at its row instead, which
 * fails the row's transaction as any error of a row's operators does.
 * Only keys of variable length can be too long.
 */
void
PlanSetKeyIndex(FlowPlan *plan, Relation index, const int *cols)
{
	MemoryContext oldcxt;
	PageHeaderData page;
	bool		varlena = false;
	int			j;

	if (plan->key_index_desc != NULL)
	{
		FreeTupleDesc(plan->key_index_desc);
		pfree(plan->key_index_cols);
		pfree(plan->key_index_name);
		plan->key_index_desc = NULL;
	}
	for (j = 0; j < plan->nkeys; j++)
		if (TupleDescAttr(plan->keydesc, j)->attlen < 0)
			varlena = true;
	/* NULL: the table has no such index now (a checkpoint refuses it) */
	if (index == NULL || !varlena || index->rd_rel->relam != BTREE_AM_OID)
		return;

	oldcxt = MemoryContextSwitchTo(plan->cxt);
	plan->key_index_desc = CreateTupleDescCopy(RelationGetDescr(index));
	/*
	 * Of an index with INCLUDE columns (made by hand), the key columns,
	 * which come first: their entry must fit, whatever the others add.
	 */
	plan->key_index_desc->natts = plan->nkeys;
	plan->key_index_cols = palloc(sizeof(int) * plan->nkeys);
	memcpy(plan->key_index_cols, cols, sizeof(int) * plan->nkeys);
	plan->key_index_name = pstrdup(RelationGetRelationName(index));
	MemoryContextSwitchTo(oldcxt);
	PageSetPageSizeAndVersion((Page) &page, BLCKSZ, PG_PAGE_LAYOUT_VERSION);
	plan->key_index_max = BTMaxItemSize((Page) &page);
}

static void
key_size_context(void *arg)
{
	errcontext("checking that a new group key fits in index \"%s\" of the stream's result table",
			   (const char *) arg);
}

/*
 * Does the new key in plan->keyvals/keynulls fit in the result table's
 * unique index?  Its entry is formed as the index forms it at a
 * checkpoint (from the key's values detoasted, as the state keeps them,
 * compressed as the index compresses them); index_form_tuple itself
 * refuses one past the largest any index takes, which is said the same
 * way.  In the per-row memory.
 */
static void
check_key_size(FlowPlan *plan)
{
	TupleDesc	desc = plan->key_index_desc;
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];
	ErrorContextCallback callback;
	MemoryContext cxt = CurrentMemoryContext;
	IndexTuple	itup;
	volatile Size size;
	int			j;

	for (j = 0; j < desc->natts; j++)
	{
		int			k = plan->key_index_cols[j];

		isnull[j] = plan->keynulls[k];
		values[j] = plan->keyvals[k];
		if (!isnull[j] && TupleDescAttr(desc, j)->attlen == -1)
			values[j] = PointerGetDatum(PG_DETOAST_DATUM(values[j]));
	}
	callback.callback = key_size_context;
	callback.arg = plan->key_index_name;
	callback.previous = error_context_stack;
	error_context_stack = &callback;
	size = 0;
	PG_TRY();
	{
		itup = index_form_tuple(desc, values, isnull);
		size = MAXALIGN(IndexTupleSize(itup));
		pfree(itup);
	}
	PG_CATCH();
	{
		/* past the largest entry any index takes ("index row requires") */
		if (geterrcode() != ERRCODE_PROGRAM_LIMIT_EXCEEDED)
			PG_RE_THROW();
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
	}
	PG_END_TRY();
	if (size == 0 || size > plan->key_index_max)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("group key too long for index \"%s\" of the stream's result table",
						plan->key_index_name),
				 size > 0 ?
				 errdetail("The key's index entry would take %zu bytes; an entry of a btree index takes at most %zu.",
						   size, plan->key_index_max) :
				 errdetail("The key's index entry would take more than any index entry can; an entry of a btree index takes at most %zu bytes.",
						   plan->key_index_max),
				 errhint("Group by a shorter expression of the key, such as md5() of a long text.")));
	error_context_stack = callback.previous;
}

/* ---------------------------------------------------------------------
 * Aggregate support functions, called as nodeAgg.c calls them
 * ---------------------------------------------------------------------
 */

static void
init_values(FlowPlan *plan, AggValue *vals, MemoryContext cxt)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	int			i;

	for (i = 0; i < plan->naggs; i++)
	{
		FlowAgg    *agg = &plan->aggs[i];

		vals[i].isnull = agg->initValueIsNull;
		vals[i].noTransValue = agg->initValueIsNull;
		vals[i].borrowed = false;
		vals[i].value = agg->initValueIsNull ? (Datum) 0 :
			datumCopy(agg->initValue, agg->transtypeByVal, agg->transtypeLen);
	}
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Keep a new by-reference transition value in cxt and free the old one,
 * as nodeAgg.c's ExecAggTransReparent does.
 */
static Datum
keep_trans_value(FlowAgg *agg, Datum newval, bool newnull,
				 Datum oldval, bool oldnull, bool borrowed, MemoryContext cxt)
{
	if (!newnull)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);

		if (!(DatumIsReadWriteExpandedObject(newval, false, agg->transtypeLen) &&
			  MemoryContextGetParent(DatumGetEOHP(newval)->eoh_context) == cxt))
			newval = datumCopy(newval, agg->transtypeByVal, agg->transtypeLen);
		MemoryContextSwitchTo(oldcxt);
	}
	if (!oldnull && !borrowed)
	{
		if (DatumIsReadWriteExpandedObject(oldval, false, agg->transtypeLen))
			DeleteExpandedObject(oldval);
		else
			pfree(DatumGetPointer(oldval));
	}
	return newval;
}

/*
 * Advance one transition value with the arguments already in
 * agg->transfcinfo->args[1..].  Runs in the per-row context; the value is
 * kept in cxt.
 */
static void
agg_advance(FlowPlan *plan, FlowAgg *agg, AggValue *tv, MemoryContext cxt)
{
	FunctionCallInfo fcinfo = agg->transfcinfo;
	Datum		newval;
	int			i;

	if (agg->transfn.fn_strict)
	{
		for (i = 1; i <= agg->numInputs; i++)
			if (fcinfo->args[i].isnull)
				return;
		if (tv->noTransValue)
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(cxt);

			tv->value = datumCopy(fcinfo->args[1].value, agg->transtypeByVal,
								  agg->transtypeLen);
			tv->isnull = false;
			tv->noTransValue = false;
			tv->borrowed = false;
			MemoryContextSwitchTo(oldcxt);
			return;
		}
		if (tv->isnull)
			return;
	}

	plan->aggecontext->ecxt_per_tuple_memory = cxt;
	fcinfo->args[0].value = tv->value;
	fcinfo->args[0].isnull = tv->isnull;
	fcinfo->isnull = false;
	newval = FunctionCallInvoke(fcinfo);
	if (!agg->transtypeByVal &&
		DatumGetPointer(newval) != DatumGetPointer(tv->value))
	{
		newval = keep_trans_value(agg, newval, fcinfo->isnull,
								  tv->value, tv->isnull, tv->borrowed, cxt);
		tv->borrowed = false;
	}
	tv->value = newval;
	tv->isnull = fcinfo->isnull;
	tv->noTransValue = false;
}

/* Combine a partial transition value into a state; everything in cxt. */
static void
agg_combine(FlowPlan *plan, FlowAgg *agg, AggValue *state,
			AggValue *partial, MemoryContext cxt)
{
	FunctionCallInfo fcinfo = agg->combinefcinfo;
	MemoryContext oldcxt;

	if (agg->combinefn.fn_strict)
	{
		if (partial->isnull)
			return;
		if (state->noTransValue)
		{
			oldcxt = MemoryContextSwitchTo(cxt);
			state->value = datumCopy(partial->value, agg->transtypeByVal,
									 agg->transtypeLen);
			MemoryContextSwitchTo(oldcxt);
			state->isnull = false;
			state->noTransValue = false;
			return;
		}
		if (state->isnull)
			return;
	}

	plan->aggecontext->ecxt_per_tuple_memory = cxt;
	oldcxt = MemoryContextSwitchTo(cxt);
	fcinfo->args[0].value = state->value;
	fcinfo->args[0].isnull = state->isnull;
	fcinfo->args[1].value = partial->value;
	fcinfo->args[1].isnull = partial->isnull;
	fcinfo->isnull = false;
	state->value = FunctionCallInvoke(fcinfo);
	/*
	 * In older minor releases of PostgreSQL 15 (15.18 for one), numeric's
	 * combine functions return a null pointer, not NULL, for two NULL
	 * states: take it for NULL.  Their state is `internal`, which
	 * PostgreSQL declares pass-by-value, so the test is not only for
	 * by-reference types.
	 */
	state->isnull = fcinfo->isnull ||
		((agg->transtype == INTERNALOID || !agg->transtypeByVal) &&
		 DatumGetPointer(state->value) == NULL);
	state->noTransValue = false;
	MemoryContextSwitchTo(oldcxt);
}

/* The aggregate's result from a transition value, in the current context. */
static void
agg_finalize(FlowPlan *plan, FlowAgg *agg, AggValue *tv,
			 Datum *result, bool *isnull)
{
	FunctionCallInfo fcinfo = agg->finalfcinfo;
	int			i;

	if (!agg->has_finalfn)
	{
		*result = tv->value;
		*isnull = tv->isnull;
		return;
	}
	fcinfo->args[0].value = tv->value;
	fcinfo->args[0].isnull = tv->isnull;
	for (i = 1; i < agg->numFinalArgs; i++)
	{
		fcinfo->args[i].value = (Datum) 0;
		fcinfo->args[i].isnull = true;
	}
	if (agg->finalfn.fn_strict && (tv->isnull || agg->numFinalArgs > 1))
	{
		*result = (Datum) 0;
		*isnull = true;
		return;
	}
	plan->aggecontext->ecxt_per_tuple_memory = CurrentMemoryContext;
	fcinfo->isnull = false;
	*result = FunctionCallInvoke(fcinfo);
	*isnull = fcinfo->isnull;
}

/* ---------------------------------------------------------------------
 * State images
 * ---------------------------------------------------------------------
 */

/*
 * Serialize what needs it and return the image's size; the values are in
 * out[0 .. naggs - 1], anything made in the current context.
 */
static Size
image_prepare(FlowPlan *plan, AggValue *vals, ImageValue *out)
{
	Size		size = 0;
	int			i;

	for (i = 0; i < plan->naggs; i++)
	{
		FlowAgg    *agg = &plan->aggs[i];
		ImageValue *iv = &out[i];

		iv->value = vals[i].value;
		iv->isnull = vals[i].isnull;
		iv->returned_null = plan->direct && vals[i].isnull &&
			!vals[i].noTransValue && agg->initValueIsNull;
		iv->byval = agg->transtypeByVal;
		iv->typlen = agg->transtypeLen;
		if (agg->transtype == INTERNALOID)
		{
			if (!iv->isnull)
			{
				FunctionCallInfo fcinfo = agg->serialfcinfo;

				plan->aggecontext->ecxt_per_tuple_memory = CurrentMemoryContext;
				fcinfo->args[0].value = iv->value;
				fcinfo->args[0].isnull = false;
				fcinfo->isnull = false;
				iv->value = FunctionCallInvoke(fcinfo);
				iv->isnull = fcinfo->isnull;
			}
			iv->byval = false;
			iv->typlen = -1;
		}
		size += datumEstimateSpace(iv->value, iv->isnull, iv->byval, iv->typlen);
	}
	return size;
}

/* Write prepared values as an image at dest, which has room for them. */
static void
image_write(FlowPlan *plan, ImageValue *values, char *dest)
{
	int			i;

	for (i = 0; i < plan->naggs; i++)
	{
		if (values[i].returned_null)
		{
			int			header = IMAGE_RETURNED_NULL;

			memcpy(dest, &header, sizeof(int));
			dest += sizeof(int);
			continue;
		}
		datumSerialize(values[i].value, values[i].isnull, values[i].byval,
					   values[i].typlen, &dest);
	}
}

/* Read transition values from an image into the current context. */
static void
image_read(FlowPlan *plan, const char *image, AggValue *vals)
{
	char	   *p = (char *) image;
	int			i;

	for (i = 0; i < plan->naggs; i++)
	{
		FlowAgg    *agg = &plan->aggs[i];
		bool		isnull;
		Datum		value;
		int			header;

		memcpy(&header, p, sizeof(int));
		if (header == IMAGE_RETURNED_NULL)
		{
			p += sizeof(int);
			vals[i].value = (Datum) 0;
			vals[i].isnull = true;
			vals[i].noTransValue = false;
			vals[i].borrowed = false;
			continue;
		}
		value = datumRestore(&p, &isnull);
		if (agg->transtype == INTERNALOID && !isnull)
		{
			FunctionCallInfo fcinfo = agg->deserialfcinfo;

			plan->aggecontext->ecxt_per_tuple_memory = CurrentMemoryContext;
			fcinfo->args[0].value = value;
			fcinfo->args[0].isnull = false;
			fcinfo->args[1].value = (Datum) 0;
			fcinfo->args[1].isnull = false;
			fcinfo->isnull = false;
			value = FunctionCallInvoke(fcinfo);
			isnull = fcinfo->isnull;
		}
		vals[i].value = value;
		vals[i].isnull = isnull;
		/* a NULL state of an aggregate without initial value has none yet */
		vals[i].noTransValue = isnull && agg->initValueIsNull;
		vals[i].borrowed = false;
	}
}

/*
 * The stored transition values of a key of a direct plan (no internal
 * states) as a new batch group's, in one allocation with the group: its
 * by-reference values are copies in the group's own memory.  What
 * datumRestore does, without a palloc and a call per value.
 */
static BatchGroup *
group_from_image(FlowPlan *plan, const char *image, Size len)
{
	Size		head = MAXALIGN(offsetof(BatchGroup, vals) + sizeof(AggValue) * plan->naggs);
	BatchGroup *group = palloc(head + len + MAXIMUM_ALIGNOF * plan->naggs);
	char	   *copy = (char *) group + head;
	const char *p = image;
	int			i;

	for (i = 0; i < plan->naggs; i++)
	{
		AggValue   *v = &group->vals[i];
		int			header;

		memcpy(&header, p, sizeof(int));
		p += sizeof(int);
		v->isnull = header == -2 || header == IMAGE_RETURNED_NULL;
		v->noTransValue = header == -2 && plan->aggs[i].initValueIsNull;
		v->borrowed = header > 0;
		if (header == -1)
		{
			memcpy(&v->value, p, sizeof(Datum));
			p += sizeof(Datum);
		}
		else if (header > 0)
		{
			memcpy(copy, p, header);
			v->value = PointerGetDatum(copy);
			copy += MAXALIGN(header);
			p += header;
		}
		else
			v->value = (Datum) 0;
	}
	Assert(p == image + len);
	return group;
}

/*
 * Compute the output row of a key from its state image (NULL for a key
 * with no rows yet, the initial values).  The row is in plan->outslot and
 * stays valid until the next call.
 */
TupleTableSlot *
PlanFinalize(FlowPlan *plan, MinimalTuple key, const char *image, Size len)
{
	MemoryContext cxt = plan->outecontext->ecxt_per_tuple_memory;
	MemoryContext oldcxt;
	TupleTableSlot *final = plan->finalslot;
	TupleTableSlot *volatile out = NULL;
	bool		read_only;

	ResetExprContext(plan->outecontext);
	oldcxt = MemoryContextSwitchTo(cxt);
	read_only = PlanReadOnlyBegin();
	PG_TRY();
	{
		AggValue   *vals;
		int			i;

		ExecClearTuple(final);
		key_deform(plan, key, final->tts_values, final->tts_isnull);
		vals = palloc(sizeof(AggValue) * (plan->naggs + 1));
		if (image != NULL)
			image_read(plan, image, vals);
		else
			init_values(plan, vals, cxt);
		for (i = 0; i < plan->naggs; i++)
			agg_finalize(plan, &plan->aggs[i], &vals[i],
						 &final->tts_values[plan->nkeys + i],
						 &final->tts_isnull[plan->nkeys + i]);
		ExecStoreVirtualTuple(final);
		out = ExecProject(plan->outproj);
	}
	PG_CATCH();
	{
		PlanReadOnlyEnd(plan, read_only, true);
	}
	PG_END_TRY();
	PlanReadOnlyEnd(plan, read_only, false);
	MemoryContextSwitchTo(oldcxt);
	return out;
}

/*
 * The user code a stream runs outside decoding (final and combine
 * functions, output expressions: at checkpoints, in merges, in
 * flowpg.live) runs in a transaction that may write (a checkpoint's, or
 * flowpg.live's caller's); it must not write any more than in decoding,
 * where a write takes a transaction ID, which decode.c refuses.  Such a
 * write went through: it committed with the checkpoint, again at each
 * computation of the row, and rows it inserted into the stream's own
 * source carried the worker's replication origin, whose changes the
 * worker's decoding skips, and were never counted.  So that code runs
 * with the transaction read-only, and a write it tries fails as one in
 * decoding does.  Returns what PlanReadOnlyEnd restores.
 */
bool
PlanReadOnlyBegin(void)
{
	bool		was = XactReadOnly;

	XactReadOnly = true;
	return was;
}

/*
 * End PlanReadOnlyBegin.  In a PG_CATCH block (failed), rethrow the error;
 * a write refused is reported as a stream's function's.
 */
void
PlanReadOnlyEnd(FlowPlan *plan, bool was, bool failed)
{
	ErrorData  *edata;
	MemoryContext oldcxt;

	XactReadOnly = was;
	if (!failed)
		return;
	if (was || geterrcode() != ERRCODE_READ_ONLY_SQL_TRANSACTION)
		PG_RE_THROW();
	oldcxt = MemoryContextSwitchTo(plan->cxt);
	edata = CopyErrorData();
	MemoryContextSwitchTo(oldcxt);
	FlushErrorState();
	PlanRaiseWrite(plan->name,
				   psprintf("A stream's functions may not write, lock rows (FOR SHARE) or advance sequences, neither as its worker decodes the WAL nor as its result rows are computed: %s",
							edata->message),
				   edata->context);
}

/*
 * Raise the error of a stream's function that wrote to the database (or
 * tried to): `name` is the stream's (NULL if not known), `detail` says
 * where, `context` is the write's own error context, if any.
 */
void
PlanRaiseWrite(const char *name, const char *detail, const char *context)
{
	ereport(ERROR,
			(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
			 name != NULL ?
			 errmsg("a function that stream \"%s\" calls wrote to the database",
					FlowpgLabel(name)) :
			 errmsg("a function that a stream calls wrote to the database"),
			 errdetail_internal("%s", detail),
			 context != NULL ? errcontext("%s", context) : 0,
			 errhint("Change the function so that it does not write (an IMMUTABLE function may call a VOLATILE one that does).")));
}

/* The same, for a key of the state: its chunk's key and image. */
TupleTableSlot *
PlanFinalizeChunk(FlowPlan *plan, StateChunk *chunk)
{
	return PlanFinalize(plan, StateChunkKey(chunk), StateChunkState(chunk),
						chunk->state_len);
}

/*
 * Spread an output row over the columns of its table, which may have
 * dropped columns in between.
 */
void
PlanOutputToTable(TupleTableSlot *out, TupleDesc table, Datum *values,
				  bool *nulls)
{
	int			n = 0;
	int			i;

	for (i = 0; i < table->natts; i++)
	{
		if (TupleDescAttr(table, i)->attisdropped)
		{
			values[i] = (Datum) 0;
			nulls[i] = true;
			continue;
		}
		values[i] = out->tts_values[n];
		nulls[i] = out->tts_isnull[n];
		n++;
	}
}

/* ---------------------------------------------------------------------
 * Batches
 * ---------------------------------------------------------------------
 */

FlowBatch *
BatchCreate(FlowPlan *plan)
{
	FlowBatch  *batch = MemoryContextAllocZero(plan->cxt, sizeof(FlowBatch));

	batch->plan = plan;

	/*
	 * A batch's groups take a few hundred kB on a busy stream; a first block
	 * that holds them is kept across resets, rather than given back to the
	 * system and faulted in again at every batch.
	 */
	batch->cxt = AllocSetContextCreate(plan->cxt, "flowpg batch",
									   1024 * 1024, 1024 * 1024,
									   ALLOCSET_DEFAULT_MAXSIZE);
	batch->mergecxt = AllocSetContextCreate(plan->cxt, "flowpg merge",
											ALLOCSET_DEFAULT_SIZES);
	batch->vals = MemoryContextAlloc(plan->cxt, sizeof(AggValue) * (plan->naggs + 1));
	batch->ivals = MemoryContextAlloc(plan->cxt, sizeof(ImageValue) * (plan->naggs + 1));
	batch->probe = MemoryContextAllocZero(plan->cxt, sizeof(IndexProbe));
	batch->probe->plan = plan;
	batch->probe->batch = batch;
	batch->probe->scratch = MemoryContextAlloc(plan->cxt, sizeof(Datum) * (plan->nkeys + 1));
	batch->probe->scratch_nulls = MemoryContextAlloc(plan->cxt, sizeof(bool) * (plan->nkeys + 1));
	batch->index = keyindex_create(plan->cxt, 1024, batch->probe);
	batch->maxgroups = 1024;
	batch->groups = MemoryContextAlloc(plan->cxt, sizeof(BatchGroup *) * batch->maxgroups);
	batch->image.data = MemoryContextAlloc(plan->cxt, 1024);
	batch->image.maxlen = 1024;
	resetStringInfo(&batch->image);
	return batch;
}

/* Compare a stored key with the key being looked up (see KeyRef). */
static bool
index_equal(IndexProbe *probe, KeyRef stored, KeyRef lookup)
{
	FlowPlan   *plan = probe->plan;
	BatchGroup *group;

	if (DsaPointerIsValid(lookup.chunk))
		return stored.chunk == lookup.chunk;
	if (lookup.group != NO_GROUP)
		return !DsaPointerIsValid(stored.chunk) && stored.group == lookup.group;
	/* the hashes are equal (simplehash compares them first): see KeyRef */
	if (plan->key_byval && lookup.low != 0)
		return stored.low == lookup.low;
	if (!DsaPointerIsValid(stored.chunk))
	{
		group = probe->batch->groups[stored.group];
		return PlanKeysEqual(plan, group->keys, group->nulls,
							 probe->vals, probe->nulls);
	}
	if (plan->key_byval)
	{
		MinimalTuple key = StateChunkKey(StateGetChunk(probe->st, stored.chunk));
		bool		isnull = (key->t_infomask & HEAP_HASNULL) && att_isnull(0, key->t_bits);

		if (isnull || probe->nulls[0])
			return isnull && probe->nulls[0];
		return key_bits(plan, fetch_att((char *) key - MINIMAL_TUPLE_OFFSET + key->t_hoff,
										true, TupleDescAttr(plan->keydesc, 0)->attlen)) ==
			key_bits(plan, probe->vals[0]);
	}
	key_deform(plan, StateChunkKey(StateGetChunk(probe->st, stored.chunk)),
			   probe->scratch, probe->scratch_nulls);
	return PlanKeysEqual(plan, probe->scratch, probe->scratch_nulls,
						 probe->vals, probe->nulls);
}

/* The index entry of a key, by its values; created empty if new. */
static IndexEntry *
index_entry(FlowBatch *batch, FlowState *st, uint32 hash, Datum *vals,
			bool *nulls, bool *found)
{
	IndexProbe *probe = batch->probe;
	KeyRef		lookup = {InvalidDsaPointer, NO_GROUP, 0};

	if (batch->plan->key_byval && !nulls[0])
		lookup.low = (uint32) key_bits(batch->plan, vals[0]);
	probe->st = st;
	probe->hash = hash;
	probe->vals = vals;
	probe->nulls = nulls;
	return keyindex_insert_hash(batch->index, lookup, hash, found);
}

/*
 * The index entry of the batch's group i: by its chunk for an old key, by
 * the group for a new one.  It must be there.
 */
static IndexEntry *
index_entry_of(FlowBatch *batch, int i)
{
	BatchGroup *group = batch->groups[i];
	KeyRef		lookup = {group->chunk, NO_GROUP, 0};
	IndexEntry *entry;

	if (!DsaPointerIsValid(group->chunk))
		lookup.group = i;
	batch->probe->hash = group->hash;
	entry = keyindex_lookup_hash(batch->index, lookup, group->hash);
	if (entry == NULL)
		elog(ERROR, "flowpg: a key of the batch is missing from the index");
	return entry;
}

/* A copy of the key in plan->keyvals/keynulls, in the current context. */
static void
copy_key(FlowPlan *plan, BatchGroup *group)
{
	int			i;

	group->keys = palloc(sizeof(Datum) * (plan->nkeys + 1));
	group->nulls = palloc(sizeof(bool) * (plan->nkeys + 1));
	for (i = 0; i < plan->nkeys; i++)
	{
		Form_pg_attribute att = TupleDescAttr(plan->keydesc, i);

		group->nulls[i] = plan->keynulls[i];
		if (plan->keynulls[i])
			group->keys[i] = (Datum) 0;
		else if (att->attlen == -1)
			group->keys[i] = PointerGetDatum(PG_DETOAST_DATUM_COPY(plan->keyvals[i]));
		else
			group->keys[i] = datumCopy(plan->keyvals[i], att->attbyval,
									   att->attlen);
	}
}

/*
 * The batch group of the key in plan->keyvals/keynulls: the one the batch
 * already has, or a new one, starting from the key's stored state (direct
 * plans) or from the initial values.
 */
static BatchGroup *
batch_group(FlowBatch *batch, FlowState *st, uint32 hash)
{
	FlowPlan   *plan = batch->plan;
	MemoryContext oldcxt;
	IndexEntry *entry;
	BatchGroup *group;
	bool		found;

	entry = index_entry(batch, st, hash, plan->keyvals, plan->keynulls, &found);
	if (found && entry->ref.group < batch->ngroups)
	{
		group = batch->groups[entry->ref.group];
		if (!DsaPointerIsValid(entry->ref.chunk) || group->chunk == entry->ref.chunk)
			return group;
	}
	Assert(!found || DsaPointerIsValid(entry->ref.chunk));

	oldcxt = MemoryContextSwitchTo(batch->cxt);
	if (found && plan->direct)
	{
		StateChunk *chunk = StateGetChunk(st, entry->ref.chunk);

		group = group_from_image(plan, StateChunkState(chunk), chunk->state_len);
	}
	else
	{
		group = palloc(offsetof(BatchGroup, vals) + sizeof(AggValue) * plan->naggs);
		init_values(plan, group->vals, batch->cxt);
	}
	group->hash = hash;
	group->chunk = found ? entry->ref.chunk : InvalidDsaPointer;
	group->keys = NULL;
	group->nulls = NULL;
	if (!found)
		copy_key(plan, group);
	MemoryContextSwitchTo(oldcxt);

	if (batch->ngroups == batch->maxgroups)
	{
		batch->maxgroups *= 2;
		batch->groups = repalloc_huge(batch->groups,
									  sizeof(BatchGroup *) * batch->maxgroups);
	}
	entry->ref.group = batch->ngroups;
	batch->groups[batch->ngroups++] = group;
	if (!found && plan->key_index_desc != NULL)
		check_key_size(plan);
	return group;
}

/* A key or an argument: a column of the row, or an expression over it. */
static inline Datum
row_value(FlowPlan *plan, ExprState *expr, AttrNumber attno, bool *isnull)
{
	if (attno > 0)
	{
		*isnull = plan->srcslot->tts_isnull[attno - 1];
		return plan->srcslot->tts_values[attno - 1];
	}
	return ExecEvalExpr(expr, plan->econtext, isnull);
}

/*
 * Run one source row through the operators into the batch: filter, key,
 * then each aggregate's FILTER, arguments and transition function.  st is
 * the stream's state, which only its worker changes.
 */
static void
batch_add_row(FlowBatch *batch, FlowState *st, HeapTuple tuple)
{
	FlowPlan   *plan = batch->plan;
	ExprContext *econtext = plan->econtext;
	MemoryContext oldcxt;
	BatchGroup *group;
	int			i;

	ResetExprContext(econtext);
	oldcxt = MemoryContextSwitchTo(econtext->ecxt_per_tuple_memory);
	if (HeapTupleHasExternal(tuple))
		tuple = toast_flatten_tuple(tuple, plan->srcslot->tts_tupleDescriptor);
	ExecStoreHeapTuple(tuple, plan->srcslot, false);

	if (plan->where != NULL && !ExecQual(plan->where, econtext))
	{
		MemoryContextSwitchTo(oldcxt);
		return;
	}
	if (plan->fetch_attno > 0)
		slot_getsomeattrs(plan->srcslot, plan->fetch_attno);
	for (i = 0; i < plan->nkeys; i++)
		plan->keyvals[i] = row_value(plan, plan->keys[i], plan->key_attno[i],
									 &plan->keynulls[i]);
	group = batch_group(batch, st,
						PlanKeyHash(plan, plan->keyvals, plan->keynulls));

	for (i = 0; i < plan->naggs; i++)
	{
		FlowAgg    *agg = &plan->aggs[i];
		FunctionCallInfo fcinfo = agg->transfcinfo;
		int			j;

		if (agg->filter != NULL)
		{
			bool		isnull;
			Datum		pass = ExecEvalExpr(agg->filter, econtext, &isnull);

			if (isnull || !DatumGetBool(pass))
				continue;
		}
		for (j = 0; j < agg->numInputs; j++)
			fcinfo->args[j + 1].value = row_value(plan, agg->args[j],
												  agg->arg_attno[j],
												  &fcinfo->args[j + 1].isnull);
		agg_advance(plan, agg, &group->vals[i], batch->cxt);
	}
	MemoryContextSwitchTo(oldcxt);
	ExecClearTuple(plan->srcslot);
}

/* BatchAdd's work, with an active snapshot when the operators need one. */
void
BatchAdd(FlowBatch *batch, FlowState *st, HeapTuple tuple)
{
	bool		snapshot = batch->plan->row_snapshot && !ActiveSnapshotSet();

	/*
	 * Functions in SQL or a PL run queries, which need an active snapshot;
	 * decoding has none set.  The operators run with decoding's historic
	 * snapshot set aside (add_row in decode.c): theirs is one of now, which
	 * such functions, immutable (compile.c refuses stable ones), do not
	 * read anything with but the catalog.
	 */
	if (snapshot)
		PushActiveSnapshot(GetTransactionSnapshot());
	batch_add_row(batch, st, tuple);
	if (snapshot)
		PopActiveSnapshot();
}

int
BatchGroups(FlowBatch *batch)
{
	return batch->ngroups;
}

/*
 * Store one batch group as its key's state: its values as they are, or,
 * for a partial state of an old key, combined into the stored one.
 */
static void
merge_group(FlowBatch *batch, FlowState *st, int i)
{
	BatchGroup *group = batch->groups[i];
	FlowPlan   *plan = batch->plan;
	MemoryContext cxt = batch->mergecxt;
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	AggValue   *vals = group->vals;
	dsa_pointer chunk = group->chunk;
	char	   *dest;
	Size		size;
	int			j;

	if (DsaPointerIsValid(chunk) && !plan->direct)
	{
		vals = batch->vals;
		image_read(plan, StateChunkState(StateGetChunk(st, chunk)), vals);
		for (j = 0; j < plan->naggs; j++)
			agg_combine(plan, &plan->aggs[j], &vals[j], &group->vals[j], cxt);
	}
	size = image_prepare(plan, vals, batch->ivals);

	/* usually the new image fits where the old one was */
	if (DsaPointerIsValid(chunk) && (dest = StateImageInPlace(st, chunk, size)) != NULL)
		image_write(plan, batch->ivals, dest);
	else
	{
		resetStringInfo(&batch->image); /* its buffer lives in the plan's context */
		enlargeStringInfo(&batch->image, size);
		image_write(plan, batch->ivals, batch->image.data);
		batch->image.len = size;
		if (DsaPointerIsValid(chunk))
			chunk = StateSetImage(st, chunk, batch->image.data, size);
		else
		{
			MinimalTuple key = heap_form_minimal_tuple(plan->keydesc,
													   group->keys, group->nulls);

			chunk = StateAddKey(st, st->next_key_id, key, batch->image.data, size);
		}
		if (chunk != group->chunk)
			index_entry_of(batch, i)->ref.chunk = chunk;
	}
	StateMarkDirty(st, chunk);
	if (batch->written != NULL)
		batch->written[batch->nwritten++] = chunk;

	MemoryContextSwitchTo(oldcxt);
	if (++batch->merged % MERGE_RESET_KEYS == 0)
		MemoryContextReset(cxt);
}

/*
 * Make room in the key index for nkeys keys before a restore inserts them,
 * so that it does not grow (and rehash every key it has) a dozen times on
 * the way to a million.
 */
void
BatchReserveKeys(FlowBatch *batch, uint64 nkeys)
{
	uint64		size = (uint64) (nkeys / KEYINDEX_FILLFACTOR) + 1;

	if (size > batch->index->size && size <= PG_UINT32_MAX)
		keyindex_grow(batch->index, size);
}

/*
 * The hash of a stored key for BatchRestoreKey, its bucket of the key
 * index fetched into the cache meanwhile.  A restore hashes a few keys
 * ahead of the ones it inserts, so that the cache misses of their random
 * buckets overlap instead of stalling one insert each (the index of a
 * million keys is 48 MB; perf of such a restore: 0.6 us an insert, nearly
 * all of it the first load of the bucket).  Restores of 1,000,000 keys on
 * a dev cluster (2026-12-06, six each): 595-766 ms with the prefetch,
 * 698-927 ms without.
 */
uint32
BatchPrefetchKey(FlowBatch *batch, MinimalTuple key)
{
	uint32		hash = PlanStoredKeyHash(batch->plan, key);

#if defined(__GNUC__) || defined(__clang__)
	__builtin_prefetch(&batch->index->data[hash & batch->index->sizemask], 1);
#endif
	return hash;
}

/*
 * Put a key entry of the checkpointed state, whose hash BatchPrefetchKey
 * gave, into the shared state and the index, unless the key is there
 * already: the restore reads the log newest entry first, so an entry read
 * earlier is the newer one.  `tid` is where the key's result row was (or
 * invalid).  Returns whether the entry went in.  For the
 * worker's restore; the caller holds the state_lock.
 */
bool
BatchRestoreKey(FlowBatch *batch, FlowState *st, int64 key_id,
				MinimalTuple key, uint32 hash, const char *image, Size len,
				ItemPointer tid)
{
	FlowPlan   *plan = batch->plan;
	bool		found;
	IndexEntry *entry;

	key_deform(plan, key, plan->keyvals, plan->keynulls);
	entry = index_entry(batch, st, hash, plan->keyvals, plan->keynulls, &found);
	if (found)
		return false;
	entry->ref.chunk = StateAddKey(st, key_id, key, image, len);
	entry->ref.group = NO_GROUP;
	StateGetChunk(st, entry->ref.chunk)->tid = *tid;
	return true;
}

/*
 * Merge every group of the batch into the stream's state.  With verify,
 * keep the chunks written, for BatchVerify.  The caller holds the
 * stream's state_lock exclusively.
 */
void
BatchMerge(FlowBatch *batch, FlowState *st, bool verify)
{
	int			i;
	bool		read_only = PlanReadOnlyBegin();	/* combine functions */

	batch->probe->st = st;
	batch->written = verify ?
		MemoryContextAlloc(batch->cxt, sizeof(dsa_pointer) * (batch->ngroups + 1)) :
		NULL;
	batch->nwritten = 0;
	PG_TRY();
	{
		for (i = 0; i < batch->ngroups; i++)
			merge_group(batch, st, i);
	}
	PG_CATCH();
	{
		PlanReadOnlyEnd(batch->plan, read_only, true);
	}
	PG_END_TRY();
	PlanReadOnlyEnd(batch->plan, read_only, false);
	MemoryContextReset(batch->mergecxt);
}

/*
 * After BatchMerge with verify, and before BatchReset: compute the output
 * row of each key the merge wrote, as a checkpoint would, so that an
 * error in it (a final function's, an output expression's) is raised
 * here, on the batch that causes it.  Without the state_lock: only the
 * worker changes the state, and the rows run user code.
 */
void
BatchVerify(FlowBatch *batch, FlowState *st)
{
	int			i;

	for (i = 0; i < batch->nwritten; i++)
	{
		(void) PlanFinalizeChunk(batch->plan, StateGetChunk(st, batch->written[i]));
	}
}

/* Forget the batch's groups (the index's entries no longer reach them). */
void
BatchReset(FlowBatch *batch)
{
	MemoryContextReset(batch->cxt);
	batch->ngroups = 0;
	batch->written = NULL;
	batch->nwritten = 0;
}

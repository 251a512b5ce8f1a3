/*-------------------------------------------------------------------------
 *
 * compile.h
 *	  From a stream's SELECT to the operators' description.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_COMPILE_H
#define FLOWPG_COMPILE_H

#include "flowpg.h"

#include "access/tupdesc.h"
#include "nodes/parsenodes.h"
#include "utils/guc.h"

/*
 * A validated stream query, split into what the operators evaluate.  All
 * expressions have been through expression_planner, so the executor can
 * run them as they are.
 */
typedef struct FlowQuery
{
	Query	   *query;			/* as analyzed; stored in the catalog */
	Oid			source;			/* source table */
	bool		partitioned;	/* source is a partitioned table */
	List	   *where;			/* implicit-AND list over the source row */
	List	   *keys;			/* GROUP BY expressions over the source row */
	List	   *key_eqops;		/* their equality operators (Oid list) */
	List	   *aggs;			/* distinct Aggrefs, arguments planned */

	/*
	 * Output columns: expressions over Var(OUTER_VAR, k) where k numbers
	 * the keys 1..nkeys and then the aggregates' final values.
	 */
	List	   *output;			/* TargetEntry list, resno 1..n */
	TupleDesc	outdesc;		/* names and types of the output columns */
	int		   *key_outcol;		/* output column (1-based) of each key */
	bool		recorded_transtypes;	/* this compile recorded aggregate
										 * state types the query lacked (a
										 * plan stored by an older flowpg) */
} FlowQuery;

extern FlowQuery *CompileQueryText(const char *sql);
extern FlowQuery *CompileQueryTree(Query *query);
extern void CompileCheckPermissions(FlowQuery *fq);
extern void CompileCheckPartition(Oid partition, Oid source, bool attach);
extern bool CompileAccessMethodIsHeap(Oid am);
extern bool CompileFunctionIsC(Oid func);
extern char *CompileDeparse(Query *query);
extern FlowQuery *CompileDefinition(const char *definition);
extern void CompileRecordDependencies(FlowQuery *fq, Oid result);
extern List *CompileCaptureSettings(void);
extern void CompileApplySettings(List *settings, GucAction action);

#endif							/* FLOWPG_COMPILE_H */

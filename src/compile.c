/*-------------------------------------------------------------------------
 *
 * compile.c
 *	  From a stream's SELECT to the operators' description (FlowQuery).
 *
 * PostgreSQL's own parser and analyzer read the query.  This file decides
 * whether flowpg can run it, refusing everything else with
 * ERRCODE_FEATURE_NOT_SUPPORTED and a message that names the construct,
 * and splits the accepted query into the parts the operators evaluate: the
 * WHERE filter, the GROUP BY keys, the aggregates and the output columns
 * rewritten over keys and final aggregate values.
 *
 * The analyzed Query is what the catalog stores (as nodeToString, like a
 * view's rule), so a worker recompiles exactly the query that was checked
 * at create_stream, whatever its search_path, and renaming the source
 * table does not break it.
 *
 * No locks or shared memory here; callers are in a transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "flowpg.h"

#include "access/htup_details.h"
#include "access/tableam.h"
#include "catalog/dependency.h"
#include "catalog/heap.h"
#include "catalog/pg_extension.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "utils/guc.h"
#include "catalog/catalog.h"
#include "catalog/pg_aggregate.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/analyze.h"
#include "parser/parse_agg.h"
#include "parser/parse_clause.h"
#include "storage/lmgr.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/ruleutils.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#include "utils/typcache.h"
#include "utils/varlena.h"

#include "compile.h"

static void
not_supported(const char *what, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s are not supported in a stream", what),
			 hint ? errhint("%s", hint) : 0));
}

/* Refuse every query shape other than SELECT ... FROM one table ... GROUP BY. */
static void
check_query_shape(Query *query)
{
	if (query->commandType != CMD_SELECT || query->utilityStmt != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a stream query must be a SELECT statement"),
				 query->utilityStmt != NULL ?
				 errdetail("The statement is %s, not SELECT.",
						   GetCommandTagName(CreateCommandTag(query->utilityStmt))) : 0,
				 query->utilityStmt != NULL && IsA(query->utilityStmt, CreateTableAsStmt) ?
				 errhint("Leave INTO out: flowpg.create_stream creates the stream's result table.") : 0));
	if (query->cteList != NIL)
		not_supported("WITH queries (common table expressions)",
					  "Write the query over the source table directly.");
	if (query->setOperations != NULL)
		not_supported("set operations (UNION, INTERSECT, EXCEPT)",
					  "Create one stream per branch.");
	if (query->hasSubLinks)
		not_supported("subqueries", NULL);
	if (query->hasWindowFuncs)
		not_supported("window functions", NULL);
	if (query->hasTargetSRFs)
		not_supported("set-returning functions", NULL);
	if (query->distinctClause != NIL)
		not_supported("SELECT DISTINCT and DISTINCT ON",
					  "Use GROUP BY over the same columns.");
	if (query->sortClause != NIL)
		not_supported("ORDER BY clauses",
					  "Sort when you read the result table.");
	if (query->limitCount != NULL || query->limitOffset != NULL)
		not_supported("LIMIT and OFFSET clauses",
					  "Limit when you read the result table.");
	if (query->groupingSets != NIL)
		not_supported("GROUPING SETS, ROLLUP and CUBE",
					  "Create one stream per grouping.");
	if (query->havingQual != NULL)
		not_supported("HAVING clauses",
					  "Filter when you read the result table.");
	if (query->rowMarks != NIL)
		not_supported("locking clauses (FOR UPDATE, FOR SHARE)", NULL);
	if (query->constraintDeps != NIL)
		not_supported("columns that are functionally dependent on a grouped primary key",
					  "List every output column that is not an aggregate in GROUP BY.");
	if (list_length(query->jointree->fromlist) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a stream query must read one source table"),
				 errhint("Add a FROM clause naming the table whose inserted rows the stream processes.")));
	if (list_length(query->jointree->fromlist) != 1 ||
		list_length(query->rtable) != 1 ||
		!IsA(linitial(query->jointree->fromlist), RangeTblRef))
		not_supported("joins",
					  "A stream reads exactly one source table.");
	if (!query->hasAggs && query->groupClause == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a stream query must aggregate"),
				 errdetail("flowpg maintains GROUP BY keys and aggregates; a query without them is a plain filter."),
				 errhint("Add aggregate functions, a GROUP BY clause, or both.")));
}

/*
 * Refuse a source whose row security policies apply to the current user:
 * a stream sees every inserted row.  Checked again at every checkpoint
 * (policies may be enabled later).
 */
static void
check_row_security(Oid relid)
{
	if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" has row-level security enabled",
						get_rel_name(relid)),
				 errdetail("A stream sees every inserted row, so it cannot apply row security policies.")));
}

/* The table access method of a table (InvalidOid for a partitioned one). */
static Oid
rel_access_method(Oid relid)
{
	HeapTuple	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Form_pg_class form;
	Oid			am;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	form = (Form_pg_class) GETSTRUCT(tuple);
	am = form->relkind == RELKIND_RELATION ? form->relam : InvalidOid;
	ReleaseSysCache(tuple);
	return am;
}

/*
 * A partition of a partitioned source, at any level, must write its rows
 * to the WAL as an ordinary permanent heap table does: decoding never sees
 * the rows of a foreign, temporary or unlogged partition, nor those of a
 * table access method other than heap, which the stream's query reads.  Refused when the stream is created and whenever such a
 * partition would join the source (catalog.c); attach says whether the
 * table is being attached.
 */
void
CompileCheckPartition(Oid partition, Oid source, bool attach)
{
	const char *kind = NULL;
	Oid			am = rel_access_method(partition);

	if (get_rel_relkind(partition) == RELKIND_FOREIGN_TABLE)
		kind = "a foreign table";
	else if (OidIsValid(am) && !CompileAccessMethodIsHeap(am))
		kind = psprintf("a table of access method \"%s\"", get_am_name(am));
	else if (get_rel_persistence(partition) == RELPERSISTENCE_TEMP)
		kind = "a temporary table";
	else if (get_rel_persistence(partition) == RELPERSISTENCE_UNLOGGED)
		kind = "an unlogged table";
	if (kind == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 attach ?
			 errmsg("cannot attach table \"%s\" as a partition of stream source \"%s\"",
					get_rel_name(partition), get_rel_name(source)) :
			 errmsg("partition \"%s\" of source \"%s\" is %s",
					get_rel_name(partition), get_rel_name(source), kind),
			 attach ? errdetail("Table \"%s\" is %s.", get_rel_name(partition), kind) : 0,
			 errhint("A stream reads its source's rows from the write-ahead log as heap tables write them; make every partition an ordinary logged heap table.")));
}

/*
 * Whether a table access method stores its rows as heap does, writing the
 * heap's WAL records, which logical decoding turns into rows: heap, and
 * any access method whose handler is heap's.
 */
bool
CompileAccessMethodIsHeap(Oid am)
{
	HeapTuple	tuple = SearchSysCache1(AMOID, ObjectIdGetDatum(am));
	Oid			handler;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for access method %u", am);
	handler = ((Form_pg_am) GETSTRUCT(tuple))->amhandler;
	ReleaseSysCache(tuple);
	return GetTableAmRoutine(handler) == GetHeapamTableAmRoutine();
}

/* Refuse sources whose inserted rows logical decoding cannot deliver. */
static void
check_source(RangeTblEntry *rte)
{
	const char *relname;
	const char *kind = NULL;
	Oid			am;

	if (rte->rtekind != RTE_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a stream's FROM clause must name a table"),
				 errdetail("Functions, VALUES lists and subqueries in FROM are not supported.")));
	relname = get_rel_name(rte->relid);

	switch (rte->relkind)
	{
		case RELKIND_RELATION:
			break;
		case RELKIND_VIEW:
			kind = "a view";
			break;
		case RELKIND_MATVIEW:
			kind = "a materialized view";
			break;
		case RELKIND_FOREIGN_TABLE:
			kind = "a foreign table";
			break;
		case RELKIND_PARTITIONED_TABLE:
			if (!rte->inh)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("source \"%s\" is a partitioned table named with ONLY", relname),
						 errdetail("ONLY a partitioned table holds no rows."),
						 errhint("Leave out ONLY: the stream reads the rows inserted into every partition.")));
			break;
		default:
			kind = "not an ordinary table";
			break;
	}
	if (kind != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" is %s", relname, kind),
				 errdetail("A stream reads the rows inserted into one ordinary table."),
				 errhint("Create the stream over the underlying table.")));

	if (rte->relid < FirstNormalObjectId || IsCatalogRelationOid(rte->relid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" is a system catalog", relname)));
	if (strcmp(get_namespace_name(get_rel_namespace(rte->relid)), "flowpg") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" is one of flowpg's own tables", relname)));

	switch (get_rel_persistence(rte->relid))
	{
		case RELPERSISTENCE_TEMP:
			kind = "a temporary table";
			break;
		case RELPERSISTENCE_UNLOGGED:
			kind = "an unlogged table";
			break;
		default:
			break;
	}
	if (kind != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" is %s", relname, kind),
				 errdetail("Streams read the write-ahead log, which does not hold the rows of temporary or unlogged tables.")));

	am = rel_access_method(rte->relid);
	if (OidIsValid(am) && !CompileAccessMethodIsHeap(am))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" is a table of access method \"%s\"", relname,
						get_am_name(am)),
				 errdetail("Streams decode the heap's records in the write-ahead log; other table access methods write other records.")));

	if (rte->tablesample != NULL)
		not_supported("TABLESAMPLE clauses", NULL);
	if (rte->relkind == RELKIND_PARTITIONED_TABLE)
	{
		List	   *parts;
		ListCell   *lc;

		/*
		 * The table before its partitions, in PostgreSQL's order: the other
		 * deadlocked with a DETACH PARTITION or DROP TABLE of a partition.
		 */
		LockRelationOid(rte->relid, AccessShareLock);
		parts = find_all_inheritors(rte->relid, AccessShareLock, NULL);

		foreach(lc, parts)
			CompileCheckPartition(lfirst_oid(lc), rte->relid, false);
	}
	else if (rte->inh && has_subclass(rte->relid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("source \"%s\" has inheritance children", relname),
				 errhint("Use FROM ONLY %s, or create one stream per child table.",
						 quote_identifier(relname))));
	check_row_security(rte->relid);
}

/*
 * Functions a stream cannot call.  A stream evaluates its expressions when
 * its worker processes a row, and again after a failure, so each must give
 * the same result every time for the same row: volatile functions cannot;
 * nor can the stable functions whose result is the evaluating transaction's
 * or session's (its time, its xid, its process), listed here; nor stable
 * functions in SQL or a procedural language, which may read tables (a
 * worker would read them as they are when it runs, not as they were when
 * the row was inserted); nor the built-in functions that look up what the
 * catalog says of objects (privileges, names, descriptions: see
 * catalog_function), which change under a stream.  Stable built-in
 * functions otherwise depend only on their arguments and the worker's
 * settings (and on what the catalog says of types, such as an enum's
 * labels).
 */
typedef struct BadFunction
{
	Oid			func;			/* the function, or InvalidOid */
	const char *what;			/* or the SQL construct */
	char		why;			/* 'v' volatile, 'c' context, 's' stable PL,
								 * 'k' catalog */
	Oid			domain;			/* the domain whose CHECK calls it, if any */
} BadFunction;

static const Oid context_functions[] = {
	F_NOW, F_TRANSACTION_TIMESTAMP, F_STATEMENT_TIMESTAMP,
	F_TXID_CURRENT, F_TXID_CURRENT_IF_ASSIGNED, F_TXID_CURRENT_SNAPSHOT,
	F_PG_CURRENT_XACT_ID, F_PG_CURRENT_XACT_ID_IF_ASSIGNED,
	F_PG_CURRENT_SNAPSHOT, F_PG_BACKEND_PID, F_PG_POSTMASTER_START_TIME,
	F_PG_CONF_LOAD_TIME, F_PG_TRIGGER_DEPTH, F_INET_CLIENT_ADDR,
	F_INET_CLIENT_PORT, F_INET_SERVER_ADDR, F_INET_SERVER_PORT,
	/* the evaluating session's settings (a stream keeps only some) */
	F_CURRENT_SETTING_TEXT, F_CURRENT_SETTING_TEXT_BOOL,
	/* ages counted from the evaluating transaction's */
	F_AGE_XID, F_MXID_AGE,
	F_PG_MY_TEMP_SCHEMA, F_PG_IS_OTHER_TEMP_SCHEMA
};

/* Does name begin with prefix and end with suffix? */
static bool
name_matches(const char *name, const char *prefix, const char *suffix)
{
	size_t		len = strlen(name);

	return strncmp(name, prefix, strlen(prefix)) == 0 &&
		len >= strlen(prefix) + strlen(suffix) &&
		strcmp(name + len - strlen(suffix), suffix) == 0;
}

/*
 * Built-in functions that look up what the catalog says of objects: who
 * may do what (has_table_privilege, pg_has_role, ...), what a name stands
 * for or an oid is called (to_regclass, the casts to and from regclass and
 * its kin, format_type, pg_get_userbyid, pg_get_*def, ...), which objects
 * the search path shows, their descriptions (obj_description).  A worker
 * evaluates them with the catalog as it is when it processes the row (or
 * computes a result row, or again after a failure), and the batch query
 * as it is when the query runs: a GRANT, a table created or renamed in
 * between makes them differ.  And the statistics functions
 * (pg_stat_get_*): what the server has counted when the worker evaluates
 * them ('c').
 */
static const char *const catalog_function_names[] = {
	"pg_has_role", "row_security_active", "format_type", "current_schema",
	"current_schemas", "current_database", "current_user", "session_user",
	"pg_describe_object", "pg_identify_object",
	"pg_identify_object_as_address", "pg_tablespace_location",
	"pg_relation_filenode", "pg_relation_filepath", "pg_filenode_relation",
	"pg_collation_for", "oidvectortypes", "pg_relation_is_updatable",
	"pg_column_is_updatable", "pg_index_has_property",
	"pg_index_column_has_property", "pg_indexam_has_property",
	"pg_relation_is_publishable",
	"regclass", "regclassin", "regclassout", "regtypein", "regtypeout",
	"regprocin", "regprocout", "regprocedurein", "regprocedureout",
	"regoperin", "regoperout", "regoperatorin", "regoperatorout",
	"regnamespacein", "regnamespaceout", "regrolein", "regroleout",
	"regcollationin", "regcollationout", "regconfigin", "regconfigout",
	"regdictionaryin", "regdictionaryout"
};

static char
catalog_function(Oid func)
{
	char	   *name;
	char		why = 0;
	int			i;

	if (func >= FirstNormalObjectId || (name = get_func_name(func)) == NULL)
		return 0;
	if (strncmp(name, "pg_stat_get_", 12) == 0 || strcmp(name, "getpgusername") == 0)
		why = 'c';
	else if (name_matches(name, "has_", "_privilege") ||
			 name_matches(name, "to_reg", "") ||
			 name_matches(name, "pg_get_", "") ||
			 name_matches(name, "", "_description") ||
			 name_matches(name, "pg_", "_is_visible") ||
			 name_matches(name, "", "_to_xml") ||
			 name_matches(name, "", "_to_xmlschema") ||
			 name_matches(name, "", "_to_xml_and_xmlschema"))
		why = 'k';
	for (i = 0; why == 0 && i < lengthof(catalog_function_names); i++)
		if (strcmp(name, catalog_function_names[i]) == 0)
			why = 'k';
	pfree(name);
	return why;
}

static Oid
func_language(Oid func)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(func));
	Oid			lang;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for function %u", func);
	lang = ((Form_pg_proc) GETSTRUCT(tuple))->prolang;
	ReleaseSysCache(tuple);
	return lang;
}

/* Is the function written in C (or built in), rather than SQL or a PL? */
bool
CompileFunctionIsC(Oid func)
{
	Oid			lang = func_language(func);

	return lang == INTERNALlanguageId || lang == ClanguageId;
}

static bool
bad_function_checker(Oid func, void *context)
{
	BadFunction *bad = context;
	char		volatility = func_volatile(func);
	int			i;

	bad->func = func;
	if (volatility == PROVOLATILE_VOLATILE)
		bad->why = 'v';
	else if (volatility == PROVOLATILE_STABLE && func >= FirstNormalObjectId &&
			 !CompileFunctionIsC(func))
		bad->why = 's';
	else
	{
		for (i = 0; i < lengthof(context_functions); i++)
			if (context_functions[i] == func)
			{
				bad->why = 'c';
				return true;
			}
		bad->why = catalog_function(func);
		return bad->why != 0;
	}
	return true;
}

/*
 * CURRENT_TIMESTAMP and its kin, the evaluating transaction's time, and
 * CURRENT_USER and its kin, the evaluating session's role (the stream's
 * owner, who may give it away), its database's name, its search path's
 * first schema (as the catalog has them then: see catalog_function).
 */
static const char *
value_function_name(SQLValueFunction *svf)
{
	switch (svf->op)
	{
		case SVFOP_CURRENT_DATE:
			return "CURRENT_DATE";
		case SVFOP_CURRENT_TIME:
		case SVFOP_CURRENT_TIME_N:
			return "CURRENT_TIME";
		case SVFOP_CURRENT_TIMESTAMP:
		case SVFOP_CURRENT_TIMESTAMP_N:
			return "CURRENT_TIMESTAMP";
		case SVFOP_LOCALTIME:
		case SVFOP_LOCALTIME_N:
			return "LOCALTIME";
		case SVFOP_LOCALTIMESTAMP:
		case SVFOP_LOCALTIMESTAMP_N:
			return "LOCALTIMESTAMP";
		case SVFOP_CURRENT_ROLE:
			return "CURRENT_ROLE";
		case SVFOP_CURRENT_USER:
			return "CURRENT_USER";
		case SVFOP_USER:
			return "USER";
		case SVFOP_SESSION_USER:
			return "SESSION_USER";
		case SVFOP_CURRENT_CATALOG:
			return "CURRENT_CATALOG";
		case SVFOP_CURRENT_SCHEMA:
			return "CURRENT_SCHEMA";
	}
	return NULL;
}

static bool find_bad_function_walker(Node *node, BadFunction *bad);

/* Is the type one of the reg* types, whose output is an object's name? */
static bool
reg_type(Oid type)
{
	switch (getBaseType(type))
	{
		case REGCLASSOID:
		case REGTYPEOID:
		case REGPROCOID:
		case REGPROCEDUREOID:
		case REGOPEROID:
		case REGOPERATOROID:
		case REGNAMESPACEOID:
		case REGROLEOID:
		case REGCOLLATIONOID:
		case REGCONFIGOID:
		case REGDICTIONARYOID:
			return true;
	}
	return false;
}

/* A reg* type, or an array of one. */
static bool
reg_or_reg_array(Oid type)
{
	Oid			elem;

	type = getBaseType(type);
	elem = get_element_type(type);
	return reg_type(type) || (OidIsValid(elem) && reg_type(elem));
}

/*
 * Does the expression's value hold a reg* value: is it of such a type, an
 * array of one, a row with one?  Printing it prints names, as the catalog
 * has them then (see catalog_function); so do the functions that take
 * any type and print their arguments (format, concat, to_json, the output
 * of arrays and rows), which the casts to text refused do not show.
 */
static bool
holds_reg_value(Node *expr, int depth)
{
	Oid			type = getBaseType(exprType(expr));

	if (reg_or_reg_array(type))
		return true;
	if (depth > 4)
		return false;
	if (IsA(expr, RowExpr))
	{
		ListCell   *lc;

		foreach(lc, ((RowExpr *) expr)->args)
			if (holds_reg_value(lfirst(lc), depth + 1))
				return true;
	}
	else if (IsA(expr, ArrayExpr))
	{
		ListCell   *lc;

		foreach(lc, ((ArrayExpr *) expr)->elements)
			if (holds_reg_value(lfirst(lc), depth + 1))
				return true;
	}
	else if (type_is_rowtype(type) && type != RECORDOID)
	{
		TupleDesc	desc = lookup_rowtype_tupdesc(type, -1);
		bool		found = false;
		int			i;

		for (i = 0; i < desc->natts && !found; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			found = !att->attisdropped && reg_or_reg_array(att->atttypid);
		}
		ReleaseTupleDesc(desc);
		return found;
	}
	return false;
}

/*
 * A reg* value given to a function that takes any type (a pseudo-type
 * parameter: "any", anyelement, anyarray, ...), or converted to text
 * through its type's output (an array's, a row's).
 */
static bool
prints_reg_value(Node *node, BadFunction *bad)
{
	Oid			func = InvalidOid;
	List	   *args = NIL;
	ListCell   *lc;
	Oid		   *params = NULL;
	int			nparams = 0;

	if (IsA(node, CoerceViaIO))
	{
		if (!holds_reg_value((Node *) ((CoerceViaIO *) node)->arg, 0))
			return false;
		bad->func = InvalidOid;
		bad->what = psprintf("a cast of a %s value to %s",
							 format_type_be(exprType((Node *) ((CoerceViaIO *) node)->arg)),
							 format_type_be(((CoerceViaIO *) node)->resulttype));
		bad->why = 'k';
		return true;
	}
	if (IsA(node, FuncExpr))
	{
		func = ((FuncExpr *) node)->funcid;
		args = ((FuncExpr *) node)->args;
	}
	else if (IsA(node, Aggref))
	{
		func = ((Aggref *) node)->aggfnoid;
		foreach(lc, ((Aggref *) node)->args)
			args = lappend(args, ((TargetEntry *) lfirst(lc))->expr);
	}
	else if (IsA(node, OpExpr) || IsA(node, DistinctExpr) || IsA(node, NullIfExpr))
	{
		func = ((OpExpr *) node)->opfuncid;
		args = ((OpExpr *) node)->args;
	}
	if (!OidIsValid(func) || args == NIL)
		return false;
	foreach(lc, args)
	{
		int			i = foreach_current_index(lc);

		if (!holds_reg_value(lfirst(lc), 0))
			continue;
		if (params == NULL)
			(void) get_func_signature(func, &params, &nparams);
		/* a variadic function's arguments past its last have that type */
		if (nparams > 0 &&
			get_typtype(params[Min(i, nparams - 1)]) == TYPTYPE_PSEUDO)
		{
			bad->func = InvalidOid;
			bad->what = psprintf("%s given a %s value", format_procedure(func),
								 format_type_be(exprType(lfirst(lc))));
			bad->why = 'k';
			return true;
		}
	}
	return false;
}

/*
 * The CHECK constraints of a domain a stream coerces to, and of its base
 * domains, run as its expressions do: they were not looked at, so that a
 * volatile function or a stable one in a PL went unrefused there.  As
 * planned for the type cache (SQL functions inlined where they can be).
 */
static bool
find_bad_domain_function(Oid domain, BadFunction *bad)
{
	/* palloc'd: the memory context's reset callback points into it */
	DomainConstraintRef *ref = palloc(sizeof(DomainConstraintRef));
	ListCell   *lc;

	InitDomainConstraintRef(domain, ref, CurrentMemoryContext, false);
	foreach(lc, ref->constraints)
	{
		DomainConstraintState *con = lfirst(lc);

		if (con->constrainttype == DOM_CONSTRAINT_CHECK &&
			find_bad_function_walker((Node *) con->check_expr, bad))
			return true;
	}
	return false;
}

static bool
find_bad_function_walker(Node *node, BadFunction *bad)
{
	if (node == NULL)
		return false;
	if (check_functions_in_node(node, bad_function_checker, bad))
		return true;
	if (IsA(node, NextValueExpr))
	{
		bad->func = F_NEXTVAL;
		bad->why = 'v';
		return true;
	}
	if (IsA(node, SQLValueFunction) &&
		(bad->what = value_function_name((SQLValueFunction *) node)) != NULL)
	{
		bad->func = InvalidOid;
		bad->why = 'c';
		return true;
	}
	if (prints_reg_value(node, bad))
		return true;
	if (IsA(node, CoerceToDomain) &&
		find_bad_domain_function(((CoerceToDomain *) node)->resulttype, bad))
	{
		if (!OidIsValid(bad->domain))
			bad->domain = ((CoerceToDomain *) node)->resulttype;
		return true;
	}
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, find_bad_function_walker,
								 bad, 0);
	return expression_tree_walker(node, find_bad_function_walker, bad);
}

static void
report_bad_function(BadFunction *bad, const char *role)
{
	const char *name = OidIsValid(bad->func) ? format_procedure(bad->func) : bad->what;

	if (bad->why == 'v')
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("volatile function %s is not supported in a stream%s",
						name, role),
				 errdetail("A stream evaluates its expressions again when it recovers from a failure, and must get the same result."),
				 errhint("Use immutable or stable expressions, or compute the value when the row is inserted.")));
	if (bad->why == 's')
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("stable function %s is not supported in a stream%s",
						name, role),
				 errdetail("It is written in %s and may read tables, which a stream would read as they are when its worker runs, not as they were when the row was inserted.",
						   get_language_name(func_language(bad->func), false)),
				 errhint("Declare the function IMMUTABLE if its result depends only on its arguments.")));
	if (bad->why == 'k')
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s is not supported in a stream%s", name, role),
				 errdetail("It looks up what the system catalogs say of objects (privileges, names, descriptions), which change: a stream sees them as they are when its worker processes the row, not when the query is run."),
				 errhint("Store the value in a column of the source table when the row is inserted.")));
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("%s is not supported in a stream%s", name, role),
			 errdetail("Its result depends on the transaction or session that evaluates it, and a stream evaluates it when its worker processes the row, and again after a failure."),
			 errhint("Store the value in a column of the source table when the row is inserted, for example with DEFAULT now() or DEFAULT current_user.")));
}

/*
 * Refuse functions a stream cannot call (see BadFunction), anywhere in its
 * planned expressions: SQL functions have been inlined where they can be.
 */
static void
check_functions(FlowQuery *fq)
{
	BadFunction bad = {InvalidOid, NULL, 0, InvalidOid};

	if (find_bad_function_walker((Node *) fq->where, &bad) ||
		find_bad_function_walker((Node *) fq->keys, &bad) ||
		find_bad_function_walker((Node *) fq->aggs, &bad) ||
		find_bad_function_walker((Node *) fq->output, &bad))
		report_bad_function(&bad, OidIsValid(bad.domain) ?
							psprintf(" (a CHECK constraint of domain %s calls it)",
									 format_type_be(bad.domain)) : "");
}

/* The same for an aggregate's support functions. */
static void
check_support_function(Oid func, const char *agg)
{
	BadFunction bad = {InvalidOid, NULL, 0, InvalidOid};

	if (OidIsValid(func) && bad_function_checker(func, &bad))
		report_bad_function(&bad, psprintf(" (it is a support function of aggregate %s)", agg));
}

static bool
find_row_var_walker(Node *node, Var **found)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var) && ((Var *) node)->varlevelsup == 0 &&
		((Var *) node)->varattno <= 0)
	{
		*found = (Var *) node;
		return true;
	}
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, find_row_var_walker, found, 0);
	return expression_tree_walker(node, find_row_var_walker, found);
}

/*
 * Refuse system columns and whole-row references.  Decoded rows carry no
 * system columns (xmin, ctid, tableoid would all read as 0), and a whole
 * row changes with the table's columns, which a stream's results cannot
 * follow back in time.
 */
static void
check_row_vars(Query *query, RangeTblEntry *rte)
{
	Var		   *var = NULL;

	if (!query_tree_walker(query, find_row_var_walker, &var, 0))
		return;
	if (var->varattno == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a stream cannot read whole rows of its source \"%s\"",
						get_rel_name(rte->relid)),
				 errdetail("A whole row changes with the columns of the table, and the stream's results could not follow."),
				 errhint("Name the columns the stream reads, such as count(*) for count(%s).",
						 rte->eref->aliasname)));
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("system column \"%s\" is not available to a stream",
					NameStr(SystemAttributeDefinition(var->varattno)->attname)),
			 errdetail("A stream reads rows as logical decoding delivers them, without system columns."),
			 errhint("Store the value in a column of the source table.")));
}

static bool
find_grouping_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (IsA(node, GroupingFunc))
		return true;
	return expression_tree_walker(node, find_grouping_walker, context);
}

/*
 * Refuse aggregates that cannot be computed by transition + combine.  And
 * keep the state type of each in its Aggref (aggtranstype, which only the
 * planner sets otherwise), so that the plan a stream stores records it:
 * the states in its checkpoints and shared memory are of that type, and
 * CREATE OR REPLACE AGGREGATE may change it since.  Read as another type,
 * a state would crash the server (a worker restarting, flowpg.live).
 * Returns whether it recorded the state type (the Aggref had none).
 */
static bool
check_aggregate(Aggref *aggref)
{
	const char *name = format_procedure(aggref->aggfnoid);
	HeapTuple	tuple;
	Form_pg_aggregate form;
	bool		combine,
				serialize;
	Oid			support[5];
	Oid			input_types[FUNC_MAX_ARGS];
	Oid			transtype;
	int			nargs;
	int			i;

	if (aggref->aggkind != AGGKIND_NORMAL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("ordered-set aggregate %s is not supported in a stream", name)));
	if (aggref->aggdistinct != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("DISTINCT aggregate %s is not supported in a stream", name),
				 errhint("Group by the distinct expression in a stream, and count its rows when you read the result table.")));
	if (aggref->aggorder != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("ORDER BY inside aggregate %s is not supported in a stream", name)));

	tuple = SearchSysCache1(AGGFNOID, ObjectIdGetDatum(aggref->aggfnoid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for aggregate %u", aggref->aggfnoid);
	form = (Form_pg_aggregate) GETSTRUCT(tuple);
	combine = OidIsValid(form->aggcombinefn);
	serialize = form->aggtranstype != INTERNALOID ||
		(OidIsValid(form->aggserialfn) && OidIsValid(form->aggdeserialfn));
	support[0] = form->aggtransfn;
	support[1] = form->aggcombinefn;
	support[2] = form->aggserialfn;
	support[3] = form->aggdeserialfn;
	support[4] = form->aggfinalfn;
	nargs = get_aggregate_argtypes(aggref, input_types);
	transtype = resolve_aggregate_transtype(aggref->aggfnoid, form->aggtranstype,
											input_types, nargs);
	ReleaseSysCache(tuple);
	for (i = 0; i < lengthof(support); i++)
		check_support_function(support[i], name);

	if (!combine || !serialize)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("aggregate %s is not supported in a stream", name),
				 errdetail(!combine ?
						   "It has no combine function." :
						   "Its transition state is internal and it has no serialization functions."),
				 errhint("flowpg merges partial aggregates, so it needs aggregates with a combine function (and serialization functions for an internal state), such as count, sum, avg, min, max and the stddev and variance families.")));
	if (!OidIsValid(aggref->aggtranstype))
	{
		aggref->aggtranstype = transtype;
		return true;
	}
	if (aggref->aggtranstype != transtype)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("aggregate %s has changed its state type since the stream was created", name),
				 errdetail("The stream's states of it are of type %s; the aggregate's are of type %s now.",
						   format_type_be(aggref->aggtranstype), format_type_be(transtype)),
				 errhint("Define the aggregate as it was, or rebuild the stream from its source table with flowpg.rebuild_stream.")));
	return false;
}

typedef struct OutputContext
{
	List	   *keys;
	List	   *aggs;
	bool		recorded_transtypes;
} OutputContext;

/*
 * Rewrite an output expression over Var(OUTER_VAR, k): k = 1..nkeys are the
 * group keys, then come the distinct aggregates' final values.
 */
static Node *
output_mutator(Node *node, OutputContext *cxt)
{
	ListCell   *lc;
	int			i = 0;

	if (node == NULL)
		return NULL;
	if (IsA(node, Aggref))
	{
		Aggref	   *aggref = (Aggref *) node;

		foreach(lc, cxt->aggs)
		{
			if (equal(lfirst(lc), aggref))
				break;
			i++;
		}
		if (lc == NULL)
		{
			if (check_aggregate(aggref))
				cxt->recorded_transtypes = true;
			cxt->aggs = lappend(cxt->aggs, aggref);
		}
		return (Node *) makeVar(OUTER_VAR, list_length(cxt->keys) + i + 1,
								aggref->aggtype, -1, aggref->aggcollid, 0);
	}
	foreach(lc, cxt->keys)
	{
		i++;
		if (equal(node, lfirst(lc)))
			return (Node *) makeVar(OUTER_VAR, i, exprType(node),
									exprTypmod(node), exprCollation(node), 0);
	}
	return expression_tree_mutator(node, output_mutator, (void *) cxt);
}

static bool
find_source_var_walker(Node *node, Var **found)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var) && ((Var *) node)->varno != OUTER_VAR)
	{
		*found = (Var *) node;
		return true;
	}
	return expression_tree_walker(node, find_source_var_walker, found);
}

/* The SQL text of an expression over the source table, for messages. */
static char *
deparse_key(FlowQuery *fq, Expr *expr)
{
	List	   *dpcontext = deparse_context_for(get_rel_name(fq->source),
											   fq->source);

	return deparse_expression((Node *) expr, dpcontext, false, false);
}

/*
 * Is a value of this type, or of a type it is made of (an array's
 * elements, a domain's base type, a range's bounds), a composite value?
 * PostgreSQL hashes a composite value over the attributes its type has
 * when it hashes it: after ALTER TYPE ... ADD or DROP ATTRIBUTE, a key
 * equal to one in a stream's state hashes otherwise, and the stream would
 * keep it twice.
 */
static bool
type_has_composite(Oid type)
{
	Oid			elem;

	type = getBaseType(type);
	if (type == RECORDOID || type_is_rowtype(type))
		return true;
	if (OidIsValid(elem = get_element_type(type)))
		return type_has_composite(elem);
	if (type_is_range(type))
		return type_has_composite(get_range_subtype(type));
	if (type_is_multirange(type))
		return type_has_composite(get_multirange_range(type));
	return false;
}

/* Collect GROUP BY keys; each must also be an output column. */
static void
compile_keys(FlowQuery *fq, Query *query)
{
	ListCell   *lc;
	int			i = 0;

	if (list_length(query->groupClause) > INDEX_MAX_KEYS)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a stream cannot group by more than %d keys", INDEX_MAX_KEYS),
				 errdetail("The result table has a unique index on its keys, and an index takes at most %d columns.",
						   INDEX_MAX_KEYS),
				 errhint("Group by fewer keys: combine several into one, such as an array of them.")));
	fq->key_outcol = palloc0(sizeof(int) * (list_length(query->groupClause) + 1));
	foreach(lc, query->groupClause)
	{
		SortGroupClause *sgc = lfirst(lc);
		TargetEntry *tle = get_sortgroupclause_tle(sgc, query->targetList);
		Oid			type = exprType((Node *) tle->expr);

		if (tle->resjunk)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("GROUP BY expression %s must also be an output column of a stream",
							deparse_key(fq, tle->expr)),
					 errdetail("flowpg finds a key's row in the result table by the key's value."),
					 errhint("Add the GROUP BY expression to the select list.")));
		if (!sgc->hashable)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("GROUP BY key of type %s is not supported in a stream",
							format_type_be(type)),
					 errdetail("flowpg needs a hashable equality operator for every key.")));
		if (!OidIsValid(lookup_type_cache(getBaseType(type), TYPECACHE_CMP_PROC)->cmp_proc))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("GROUP BY key of type %s is not supported in a stream",
							format_type_be(type)),
					 errdetail("The result table has a unique index on its keys, and the type (or its elements') has no default operator class for a btree index."),
					 errhint("Group by the key cast to a type that has one, such as text.")));
		if (type_has_composite(type))
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("GROUP BY key of composite type %s is not supported in a stream",
							format_type_be(type)),
					 errdetail("A composite value hashes over the attributes its type has now: after ALTER TYPE adds or drops one, the stream could not find its keys."),
					 errhint("Group by the composite's fields, such as (col).a, (col).b.")));
		fq->keys = lappend(fq->keys, tle->expr);
		fq->key_eqops = lappend_oid(fq->key_eqops, sgc->eqop);
		fq->key_outcol[i++] = tle->resno;
	}
}

/* Rewrite the output columns over keys and aggregates. */
static void
compile_output(FlowQuery *fq, Query *query)
{
	OutputContext cxt = {fq->keys, NIL, false};
	ListCell   *lc;
	int			resno = 0;

	foreach(lc, query->targetList)
	{
		TargetEntry *tle = lfirst(lc);
		TargetEntry *out;
		Var		   *var = NULL;

		if (tle->resjunk)
			continue;
		out = flatCopyTargetEntry(tle);
		out->resno = ++resno;
		out->expr = (Expr *) output_mutator((Node *) tle->expr, &cxt);
		if (find_source_var_walker((Node *) out->expr, &var))
			ereport(ERROR,
					(errcode(ERRCODE_GROUPING_ERROR),
					 errmsg("column \"%s\" must appear in the GROUP BY clause or be used in an aggregate function",
							get_attname(fq->source, var->varattno, false))));
		fq->output = lappend(fq->output, out);
	}
	fq->aggs = cxt.aggs;
	fq->recorded_transtypes = cxt.recorded_transtypes;
}

/* Run PostgreSQL's expression preprocessing, as for index expressions. */
static void
plan_expressions(FlowQuery *fq, Query *query)
{
	ListCell   *lc;

	if (query->jointree->quals != NULL)
		fq->where = make_ands_implicit(expression_planner((Expr *) query->jointree->quals));
	foreach(lc, fq->keys)
		lfirst(lc) = expression_planner(lfirst(lc));
	foreach(lc, fq->aggs)
	{
		Aggref	   *aggref = copyObject(lfirst(lc));
		ListCell   *lc2;

		foreach(lc2, aggref->args)
		{
			TargetEntry *arg = lfirst(lc2);

			arg->expr = expression_planner(arg->expr);
		}
		if (aggref->aggfilter != NULL)
			aggref->aggfilter = expression_planner(aggref->aggfilter);
		lfirst(lc) = aggref;
	}
	foreach(lc, fq->output)
	{
		TargetEntry *tle = lfirst(lc);

		tle->expr = expression_planner(tle->expr);
	}
}

/* Check that output column names are unique: they become a table's columns. */
static void
check_output_names(Query *query)
{
	ListCell   *lc;
	List	   *seen = NIL;

	foreach(lc, query->targetList)
	{
		TargetEntry *tle = lfirst(lc);
		ListCell   *lc2;

		if (tle->resjunk)
			continue;
		foreach(lc2, seen)
		{
			if (strcmp(lfirst(lc2), tle->resname) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_DUPLICATE_COLUMN),
						 errmsg("output column name \"%s\" appears more than once in the stream query",
								tle->resname),
						 errhint("Give each output column a distinct name with AS.")));
		}
		if (exprType((Node *) tle->expr) == RECORDOID ||
			get_typtype(exprType((Node *) tle->expr)) == TYPTYPE_PSEUDO)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("output column \"%s\" has pseudo-type %s",
							tle->resname, format_type_be(exprType((Node *) tle->expr))),
					 errhint("Cast the expression to a concrete type.")));
		seen = lappend(seen, tle->resname);
	}
}

/*
 * Validate an analyzed stream query and split it into the operators'
 * parts.  Raises ERRCODE_FEATURE_NOT_SUPPORTED for anything flowpg cannot
 * run exactly.
 */
FlowQuery *
CompileQueryTree(Query *query)
{
	FlowQuery  *fq = palloc0(sizeof(FlowQuery));
	RangeTblEntry *rte;

	check_query_shape(query);
	rte = linitial_node(RangeTblEntry, query->rtable);
	check_source(rte);
	check_row_vars(query, rte);
	if (find_grouping_walker((Node *) query->targetList, NULL))
		not_supported("GROUPING() functions", NULL);
	check_output_names(query);

	fq->query = query;
	fq->source = rte->relid;
	fq->partitioned = rte->relkind == RELKIND_PARTITIONED_TABLE;
	fq->outdesc = ExecCleanTypeFromTL(query->targetList);
	compile_keys(fq, query);
	compile_output(fq, query);
	plan_expressions(fq, query);
	check_functions(fq);
	return fq;
}

/* The one SELECT statement of sql, parsed and analyzed. */
static Query *
analyze_text(const char *sql)
{
	List	   *raw = pg_parse_query(sql);
	RawStmt    *stmt;

	if (list_length(raw) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a stream query must be exactly one SELECT statement"),
				 errdetail("The query text holds %d statements.", list_length(raw))));
	stmt = linitial_node(RawStmt, raw);
	if (!IsA(stmt->stmt, SelectStmt))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a stream query must be a SELECT statement"),
				 errdetail("The statement is %s, not SELECT.",
						   GetCommandTagName(CreateCommandTag(stmt->stmt)))));

	return parse_analyze_fixedparams(stmt, sql, NULL, 0, NULL);
}

/* Parse and analyze a stream's query text, then compile it. */
FlowQuery *
CompileQueryText(const char *sql)
{
	return CompileQueryTree(analyze_text(sql));
}

/*
 * Check that the current user may read what the stream reads: SELECT on
 * the source table (or its columns), with no row security policies that
 * apply to it.  Raises the usual permission error.
 */
void
CompileCheckPermissions(FlowQuery *fq)
{
	ExecCheckRTPerms(fq->query->rtable, true);
	check_row_security(fq->source);
}

/*
 * The settings a stream's definition is written and read with, until the
 * caller's GUC nest level ends: those pg_dump writes with and sets in the
 * dump, so that names and constants read back as they were.  The names are
 * schema-qualified (an empty search_path); timestamps are written with
 * their offset from UTC, and floats exactly.  Under the creating session's
 * settings '2026-01-01 00:00+05:30' was written as '01/01/2026 00:00:00
 * IST' (read back as Israel's time), 0.30000000000000004 as 0.3, and
 * 'x\y' was read as 'xy' with standard_conforming_strings off.
 */
static void
definition_settings(void)
{
	static const char *const fixed[][2] = {
		{"search_path", ""},
		{"DateStyle", "ISO, MDY"},
		{"IntervalStyle", "postgres"},
		{"extra_float_digits", "3"},
		{"standard_conforming_strings", "on"},
		{"lc_monetary", "C"},
		{"xmloption", "content"},
		{"array_nulls", "on"},
	};
	int			i;

	for (i = 0; i < lengthof(fixed); i++)
		(void) set_config_option(fixed[i][0], fixed[i][1], PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
}

/*
 * The query as text with every name it uses schema-qualified, as pg_dump
 * writes a view: what a restored dump compiles again, whatever the
 * restoring session's settings (see definition_settings).  The names are
 * looked up by the query's object ids, so they are the names as they are
 * now (see CatalogRefreshDefinitions).
 */
char *
CompileDeparse(Query *query)
{
	int			nest = NewGUCNestLevel();
	char	   *text;

	definition_settings();
	text = pg_get_querydef(query, false);
	AtEOXact_GUC(false, nest);
	return text;
}

/*
 * Compile the text CompileDeparse made: it is read with the same
 * settings, then the query is compiled with the settings in
 * force, which the caller has made the stream's.  Compiling inlines SQL
 * functions, whose bodies are parsed then, and evaluates calls of
 * immutable functions on constants: with the stream's search_path, as its
 * worker's compile does, so that a rebuilt stream computes what the
 * stream computed (a function body naming public's objects unqualified
 * failed the rebuild, with an empty one).
 */
FlowQuery *
CompileDefinition(const char *definition)
{
	int			nest = NewGUCNestLevel();
	Query	   *query;

	definition_settings();
	query = analyze_text(definition);
	AtEOXact_GUC(false, nest);
	return CompileQueryTree(query);
}

/*
 * Settings whose values change what PostgreSQL's stable built-in functions
 * return: date_trunc('day', timestamptz) and casts between timestamptz and
 * date or text depend on TimeZone, to_char on DateStyle and the lc_
 * settings, float output on extra_float_digits, to_tsvector(text) on
 * default_text_search_config, casts of text to regclass on search_path,
 * casts of text to timestamptz on timezone_abbreviations (what "IST"
 * means), to arrays on array_nulls, of regclass to text on
 * quote_all_identifiers, ...  A stream evaluates its query with the
 * values the session that created it had, wherever and whenever its
 * worker runs (the worker's own defaults come from the database and role,
 * which can differ and change), so that its results equal its query run
 * in that session.
 */
static const char *const stream_settings[] = {
	"TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits",
	"lc_monetary", "lc_numeric", "lc_time", "bytea_output",
	"default_text_search_config", "xmlbinary", "xmloption", "search_path",
	"timezone_abbreviations", "array_nulls", "quote_all_identifiers"
};

/* The current values of those settings: "name=value" strings. */
List *
CompileCaptureSettings(void)
{
	List	   *settings = NIL;
	int			i;

	for (i = 0; i < lengthof(stream_settings); i++)
		settings = lappend(settings,
						   psprintf("%s=%s", stream_settings[i],
									GetConfigOptionByName(stream_settings[i], NULL, false)));
	return settings;
}

/*
 * A search_path with pg_temp last.  Where it is not named, PostgreSQL
 * searches the session's temporary schema first for tables and types: in
 * flowpg.live, the caller's, where the caller could put a type named like
 * one the owner's functions name (a domain pg_temp.text whose CHECK calls
 * the caller's function), and have it run as the owner.  PostgreSQL
 * advises the same for SECURITY DEFINER functions.  Only in a caller's
 * session: a worker's temporary schema is its owner's, and a function
 * that reads its search_path there reads the stream's as it was set.
 */
static char *
temp_schema_last(const char *value)
{
	char	   *raw = pstrdup(value);
	List	   *names;
	ListCell   *lc;
	StringInfoData buf;

	if (!SplitIdentifierString(raw, ',', &names))
		elog(ERROR, "malformed stream search_path \"%s\"", value);
	initStringInfo(&buf);
	foreach(lc, names)
	{
		if (strcmp(lfirst(lc), "pg_temp") == 0)
			continue;
		appendStringInfo(&buf, "%s, ", quote_identifier(lfirst(lc)));
	}
	appendStringInfoString(&buf, "pg_temp");
	return buf.data;
}

/*
 * Apply a stream's settings: for the session (GUC_ACTION_SET, in a worker)
 * or until the caller's GUC nest level ends (GUC_ACTION_SAVE, in a
 * caller's session: with pg_temp last in search_path).
 */
void
CompileApplySettings(List *settings, GucAction action)
{
	ListCell   *lc;

	foreach(lc, settings)
	{
		char	   *name = pstrdup(lfirst(lc));
		char	   *value = strchr(name, '=');

		if (value == NULL)
			elog(ERROR, "malformed stream setting \"%s\"", name);
		*value++ = '\0';
		if (action == GUC_ACTION_SAVE && strcmp(name, "search_path") == 0)
			value = temp_schema_last(value);
		(void) set_config_option(name, value, PGC_USERSET, PGC_S_SESSION,
								 action, true, 0, false);
	}
}

/* Make the result table depend on what the query uses and on flowpg. */
void
CompileRecordDependencies(FlowQuery *fq, Oid result)
{
	ObjectAddress table;
	ObjectAddress extension;

	ObjectAddressSet(table, RelationRelationId, result);
	ObjectAddressSet(extension, ExtensionRelationId,
					 get_extension_oid("flowpg", false));
	recordDependencyOnExpr(&table, (Node *) fq->query, NIL, DEPENDENCY_NORMAL);
	recordDependencyOn(&table, &extension, DEPENDENCY_AUTO);
}

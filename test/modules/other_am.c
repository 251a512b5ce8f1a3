/*
 * other_am.c
 *	  A table access method for flowpg's tests only: it stores rows as heap
 *	  does, through a copy of heap's routine, so that PostgreSQL sees an
 *	  access method other than heap (flowpg tells them apart by the
 *	  routine its handler returns).  Tests check that flowpg refuses it
 *	  for a stream's source and its partitions.  Not installed with flowpg.
 */
#include "postgres.h"

#include "access/tableam.h"
#include "fmgr.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(other_am_handler);

static TableAmRoutine routine;

Datum
other_am_handler(PG_FUNCTION_ARGS)
{
	routine = *GetHeapamTableAmRoutine();
	PG_RETURN_POINTER(&routine);
}

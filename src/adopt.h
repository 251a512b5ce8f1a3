/*-------------------------------------------------------------------------
 *
 * adopt.h
 *	  Rebuilding streams restored from a dump.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_ADOPT_H
#define FLOWPG_ADOPT_H

#include "flowpg.h"

#include "control.h"

extern void AdoptRequest(StreamIdentity *ident);
extern void AdoptSweepOrigins(void);
extern PGDLLEXPORT void FlowAdoptMain(Datum main_arg);
extern PGDLLEXPORT void AdoptScanMain(Datum main_arg);

#endif							/* FLOWPG_ADOPT_H */

/*-------------------------------------------------------------------------
 *
 * api.h
 *	  Helpers shared by the SQL-callable functions (api.c, savepoint.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_API_H
#define FLOWPG_API_H

#include "flowpg.h"

#include "fmgr.h"

#include "catalog.h"
#include "control.h"

extern char *ApiTextArg(FunctionCallInfo fcinfo, int n, const char *what);
extern StreamDef *ApiStreamToChange(FunctionCallInfo fcinfo);
extern void ApiCheckNotFailed(StreamDef *def);
extern StreamCtl *ApiAwaitControl(StreamDef *def, TimestampTz deadline);
extern void ApiRaiseIfFailed(StreamDef *def, StreamCtl *ctl);
extern void ApiSleepUntil(StreamDef *def, StreamCtl *ctl, TimestampTz deadline,
						  const char *what, XLogRecPtr target);
extern void ApiWakeWorker(StreamCtl *ctl);
extern XLogRecPtr ApiCommittedLsn(void);
extern XLogRecPtr ApiRequestTarget(StreamCtl *ctl);

#endif							/* FLOWPG_API_H */

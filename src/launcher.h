/*-------------------------------------------------------------------------
 *
 * launcher.h
 *	  The launcher: keeps one worker running per stream.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_LAUNCHER_H
#define FLOWPG_LAUNCHER_H

#include "flowpg.h"

#include "postmaster/bgworker.h"

extern void LauncherRegister(void);
extern void LauncherDescribeWorker(BackgroundWorker *bgw, const char *function,
								   const char *type);
extern PGDLLEXPORT void FlowLauncherMain(Datum main_arg);

#endif							/* FLOWPG_LAUNCHER_H */

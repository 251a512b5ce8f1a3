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

extern void LauncherRegister(void);
extern PGDLLEXPORT void FlowLauncherMain(Datum main_arg);

#endif							/* FLOWPG_LAUNCHER_H */

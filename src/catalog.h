/*-------------------------------------------------------------------------
 *
 * catalog.h
 *	  The flowpg.stream catalog, and the transaction hooks that make
 *	  creating and dropping a stream transactional.
 *
 *-------------------------------------------------------------------------
 */
#ifndef FLOWPG_CATALOG_H
#define FLOWPG_CATALOG_H

#include "flowpg.h"

#include "datatype/timestamp.h"
#include "storage/lockdefs.h"

/* One row of flowpg.stream. */
typedef struct StreamDef
{
	int32		id;
	char	   *name;
	Oid			result;
	Oid			source;
	Oid			owner;
	char	   *query;
	char	   *definition;		/* query with qualified names */
	char	   *plan;
	int			checkpoint_interval;	/* ms, or -1 for the GUC */
	bool		paused;
	bool		rewrite;		/* rewrite the result table (after restore) */
	char	   *failure;		/* why it failed for good, or NULL */
	bool		restored;		/* loaded from a dump, not rebuilt yet */
	List	   *settings;		/* "name=value": see CompileCaptureSettings */
	char	   *slot_origin;	/* where its slot was made: FlowpgSlotOrigin */
} StreamDef;

/* Saved identity while running as the extension owner. */
typedef struct CatalogPrivilege
{
	Oid			saved_user;
	int			saved_sec;
	int			nest;			/* GUC nest level of the pinned search_path */
} CatalogPrivilege;

extern void CatalogBecomeOwner(CatalogPrivilege *priv);
extern void CatalogRestoreUser(CatalogPrivilege *priv);

extern StreamDef *CatalogReadStream(int32 id);
extern void CatalogStorePlan(int32 id, const char *plan);
extern bool CatalogChangedHere(int32 stream_id);
extern void CatalogNoteLocks(void);
extern void CatalogReleaseLocks(void);
extern bool CatalogPendingChanges(int32 stream_id);
extern StreamDef *CatalogLockStream(int32 id, LOCKMODE mode);
extern StreamDef *CatalogFindByResult(Oid result);
extern StreamDef *CatalogLookup(text *name);
extern void CatalogInsertStream(StreamDef *def);
extern void CatalogUpdateStream(StreamDef *def);
extern void CatalogCheckOwner(StreamDef *def);
extern void CatalogFollowTableOwner(StreamDef *def);
extern int	CatalogIntervalMs(StreamDef *def);
extern uint64 CatalogExec(const char *sql, int nargs, Oid *types, Datum *values,
						  int expected);
extern bool CatalogSavepointExists(int64 id);
extern void CatalogMarkFailed(int32 id, const char *message);
extern void CatalogAdoptStream(StreamDef *def);
extern void CatalogRefreshDefinitions(void);
extern List *CatalogListRestored(void);
extern Oid	CatalogTableOwner(Oid relid);
extern Oid	CatalogStreamRelid(void);
extern void CatalogCheckCanOwn(Oid role);
extern void CatalogRebuildStream(int32 id);
extern void CatalogRebuildCopies(void);
extern bool CatalogInserting(void);
extern void CatalogRepairCheckpointIds(int32 stream_id);
extern void CatalogPendingAdopt(int32 stream_id);

extern void CatalogRegisterHooks(void);
extern void CatalogPendingCreate(void);
extern void CatalogPendingLocked(int32 stream_id);
extern void StreamStopAndDrop(Oid dboid, int32 stream_id);
extern void StreamHold(Oid dboid, int32 stream_id);
extern void CatalogPendingSlotDrop(Oid dboid, int32 stream_id, int64 savepoint_id);

#endif							/* FLOWPG_CATALOG_H */


/*
 * Copyright (C) The presence module authors
 *
 * What the table loads back from PostgreSQL: the warm start (the syncer
 * loads the last_seen and invisible flag of the users PostgreSQL knows
 * into a table created anew, page by page) and the pending lookups (a
 * worker asks, for a few ms of its new users at once, whether they chose
 * to appear offline; until the answer they are offline to everyone).
 */


#ifndef _NGX_HTTP_PRESENCE_WARM_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_WARM_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include "ngx_http_presence_table.h"
#include "ngx_http_presence_pg.h"
#include "ngx_http_presence_sync_ring.h"


/* users a page of the warm start loads */
#define NGX_PRESENCE_WARM_PAGE       10000

/* ms a new user's id waits for others to be asked with it, at most */
#define NGX_PRESENCE_PEND_WAIT       5

/* ids asked in one query */
#define NGX_PRESENCE_PEND_BATCH      10000


/* the warm start's progress, in the syncer's shared zone */
typedef struct {
    uint64_t                       warmed;       /* users loaded */
    uint32_t                       id;           /* the last one */
    uint32_t                       done;
} ngx_presence_warm_sh_t;


/* the warm start is over: the users loaded go to the other stores */
typedef void (*ngx_presence_warm_done_pt)(void *data);


typedef struct {
    ngx_presence_pg_pool_t        *pg;
    ngx_presence_table_t          *table;
    ngx_presence_warm_sh_t        *sh;
    ngx_log_t                     *log;
    ngx_presence_warm_done_pt      done;
    void                          *data;

    ngx_presence_pg_query_t       *query;
    ngx_msec_t                     backoff;
    ngx_event_t                    retry;
    unsigned                       running:1;
} ngx_presence_warm_t;


/*
 * A user seen while it was pending, and offline since: its state goes to
 * the stores (it, an entry of the change ring) though it was never dirty.
 */
typedef void (*ngx_presence_pend_store_pt)(void *data,
    ngx_presence_ring_item_t *it);


typedef struct {
    ngx_presence_pg_pool_t        *pg;
    ngx_presence_table_t          *table;
    ngx_log_t                     *log;
    ngx_presence_pend_store_pt     store;
    void                          *data;

    uint32_t                      *pend;         /* ids waiting */
    ngx_uint_t                     npend;
    ngx_uint_t                     size;
    uint32_t                      *asked;        /* the ids of the query */
    ngx_uint_t                     nasked;
    ngx_presence_pg_query_t       *query;
    ngx_msec_t                     backoff;      /* 0: PostgreSQL answers */
    ngx_event_t                    timer;
} ngx_presence_pend_t;


/* in the process: the fields above the query set, the rest zeroed */
void ngx_presence_warm_init(ngx_presence_warm_t *w);

/* a page, unless one is on its way, a retry waits, or all is loaded */
void ngx_presence_warm_run(ngx_presence_warm_t *w);

/* this process stops syncing: no query, no retry */
void ngx_presence_warm_stop(ngx_presence_warm_t *w);


void ngx_presence_pend_init(ngx_presence_pend_t *pd);

/*
 * table->pending: the invisible flag of id is asked of PostgreSQL within
 * NGX_PRESENCE_PEND_WAIT ms, and ngx_presence_resolve()d.  While
 * PostgreSQL is down the user stays pending (privacy first), asked again
 * with backoff.
 */
void ngx_presence_pend_add(ngx_presence_pend_t *pd, uint32_t id);

/* worker exit */
void ngx_presence_pend_stop(ngx_presence_pend_t *pd);


#endif /* _NGX_HTTP_PRESENCE_WARM_H_INCLUDED_ */


/*
 * The nginx symbols that the module's C tests (t/table_test.c,
 * t/subs_test.c, t/ring_test.c, t/kafka_test.c) and util/bench/table.c
 * stub, one set for all: each compiles one or two files of src/
 * unchanged and links no nginx core, but for the slab allocator, mutex
 * and rbtree of t/nginx-core that t/subs_test.c links.
 *
 * Included once, by the one C file of a test program (it defines what it
 * stubs), after ngx_config.h and ngx_core.h.  Always there: the globals,
 * a fixed clock (stub_set_clock), ngx_log_error_core (calling stub_log
 * when the test sets it), ngx_debug_point, and TAP (ok, done_testing).
 * On request, before the #include:
 *
 *   NGX_STUBS_SHM   ngx_slab_calloc from an arena the test hands over
 *                   (stub_arena: a MAP_SHARED mapping for forked workers),
 *                   else calloc; ngx_shmtx_lock/unlock as a spin lock on
 *                   the pid, so the master can free a dead holder's;
 *                   ngx_slab_alloc_locked/free_locked of small chunks
 *                   from the arena, freed ones kept in a list of the
 *                   pool's "data" (shared with forked workers)
 *   NGX_STUBS_CONF  pools (calloc), ngx_array_push, ngx_atoi, ngx_cpystrn,
 *                   ngx_sprintf of "%ui", ngx_conf_log_error, and timers
 *                   without a tree: ngx_rbtree_insert/delete on
 *                   stub_timers[], which the test's own loop runs
 */


#ifndef _NGX_PRESENCE_STUBS_H_INCLUDED_
#define _NGX_PRESENCE_STUBS_H_INCLUDED_


#include <sched.h>
#include <stdarg.h>
#include <stdio.h>


static ngx_time_t       stub_time;

volatile ngx_msec_t     ngx_current_msec;
volatile ngx_time_t    *ngx_cached_time = &stub_time;
volatile ngx_cycle_t   *ngx_cycle;
ngx_int_t               ngx_process_slot;
ngx_pid_t               ngx_pid;
ngx_int_t               ngx_ncpu = 2;
ngx_uint_t              ngx_pagesize = 4096;
ngx_uint_t              ngx_pagesize_shift;
ngx_uint_t              ngx_cacheline_size = 64;

/* the log's formats are nginx's, not printf's: a test reads fmt itself */
static void           (*stub_log)(ngx_uint_t level, const char *fmt,
                                  va_list args);

static int              tests, failed;


void
ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err,
    const char *fmt, ...)
{
    va_list  args;

    if (stub_log) {
        va_start(args, fmt);
        stub_log(level, fmt, args);
        va_end(args);
    }
}


void
ngx_debug_point(void)
{
    abort();
}


/* ngx_current_msec and ngx_time(): ms from an arbitrary epoch */

static ngx_inline void
stub_set_clock(ngx_msec_t ms)
{
    ngx_current_msec = ms;
    stub_time.sec = 1764300000 + ms / 1000;
    stub_time.msec = ms % 1000;
}


static ngx_inline void
ok(int cond, const char *name)
{
    tests++;

    if (!cond) {
        failed++;
    }

    printf("%sok %d - %s\n", cond ? "" : "not ", tests, name);
    fflush(stdout);
}


/* the plan, and the exit status of main() */

static ngx_inline int
done_testing(void)
{
    printf("1..%d\n", tests);

    return failed ? 1 : 0;
}


#if (NGX_STUBS_SHM)

static u_char          *stub_arena_start, *stub_arena_end;


static ngx_inline void
stub_arena(u_char *start, size_t size)
{
    stub_arena_start = start;
    stub_arena_end = start + size;
}


void *
ngx_slab_calloc(ngx_slab_pool_t *pool, size_t size)
{
    u_char  *p;

    if (stub_arena_start == NULL) {
        return calloc(1, size);
    }

    p = ngx_align_ptr(stub_arena_start, 64);

    if (p + size > stub_arena_end) {
        return NULL;
    }

    stub_arena_start = p + size;

    return p;
}


void
ngx_shmtx_lock(ngx_shmtx_t *mtx)
{
    while (!ngx_atomic_cmp_set(mtx->lock, 0, ngx_pid)) {
        sched_yield();
    }
}


void
ngx_shmtx_unlock(ngx_shmtx_t *mtx)
{
    (void) ngx_atomic_cmp_set(mtx->lock, ngx_pid, 0);
}


/* chunks of at most 64 bytes, the caller holds the pool's mutex */

void *
ngx_slab_alloc_locked(ngx_slab_pool_t *pool, size_t size)
{
    void  **p;

    if (size > 64) {
        return NULL;
    }

    p = pool->data;

    if (p) {
        pool->data = *p;
        return p;
    }

    return ngx_slab_calloc(pool, 64);
}


void
ngx_slab_free_locked(ngx_slab_pool_t *pool, void *p)
{
    *(void **) p = pool->data;
    pool->data = p;
}

#endif


#if (NGX_STUBS_CONF)

#define STUB_TIMERS  16

ngx_rbtree_t            ngx_event_timer_rbtree;
static ngx_rbtree_node_t  *stub_timers[STUB_TIMERS];


void *
ngx_palloc(ngx_pool_t *pool, size_t size)
{
    return calloc(1, size);
}


void *
ngx_pnalloc(ngx_pool_t *pool, size_t size)
{
    return calloc(1, size);
}


void *
ngx_pcalloc(ngx_pool_t *pool, size_t size)
{
    return calloc(1, size);
}


void *
ngx_array_push(ngx_array_t *a)
{
    void  *elts;

    if (a->nelts == a->nalloc) {
        elts = calloc(2 * a->nalloc, a->size);
        if (elts == NULL) {
            return NULL;
        }

        ngx_memcpy(elts, a->elts, a->nelts * a->size);
        a->elts = elts;
        a->nalloc *= 2;
    }

    return (u_char *) a->elts + a->size * a->nelts++;
}


ngx_int_t
ngx_atoi(u_char *line, size_t n)
{
    ngx_int_t  value;

    if (n == 0 || n > 18) {
        return NGX_ERROR;
    }

    for (value = 0; n--; line++) {
        if (*line < '0' || *line > '9') {
            return NGX_ERROR;
        }

        value = value * 10 + (*line - '0');
    }

    return value;
}


u_char *
ngx_cpystrn(u_char *dst, u_char *src, size_t n)
{
    if (n == 0) {
        return dst;
    }

    while (--n) {
        *dst = *src;

        if (*dst == '\0') {
            return dst;
        }

        dst++;
        src++;
    }

    *dst = '\0';

    return dst;
}


/* only "%ui": any other format aborts the test */

u_char *
ngx_sprintf(u_char *buf, const char *fmt, ...)
{
    va_list  args;

    if (strcmp(fmt, "%ui") != 0) {
        abort();
    }

    va_start(args, fmt);
    buf += sprintf((char *) buf, "%lu", (unsigned long) va_arg(args,
                                                               ngx_uint_t));
    va_end(args);

    return buf;
}


void
ngx_conf_log_error(ngx_uint_t level, ngx_conf_t *cf, ngx_err_t err,
    const char *fmt, ...)
{
    printf("# conf: %s\n", fmt);
}


void
ngx_rbtree_insert(ngx_rbtree_t *tree, ngx_rbtree_node_t *node)
{
    int  i;

    for (i = 0; i < STUB_TIMERS; i++) {
        if (stub_timers[i] == NULL) {
            stub_timers[i] = node;
            return;
        }
    }

    abort();
}


void
ngx_rbtree_delete(ngx_rbtree_t *tree, ngx_rbtree_node_t *node)
{
    int  i;

    for (i = 0; i < STUB_TIMERS; i++) {
        if (stub_timers[i] == node) {
            stub_timers[i] = NULL;
            return;
        }
    }

    abort();
}

#endif


#endif /* _NGX_PRESENCE_STUBS_H_INCLUDED_ */

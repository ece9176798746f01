
/*
 * Unit tests of the presence table, without nginx around it (run by
 * t/000-table.t): the table code is src/ngx_http_presence_table.c
 * compiled unchanged; the few nginx symbols it uses are stubbed, and its
 * "shared memory" is a MAP_SHARED mapping, so that forked processes play
 * the workers.  Prints TAP.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include "../src/ngx_http_presence_table.h"


volatile ngx_msec_t     ngx_current_msec;
volatile ngx_time_t    *ngx_cached_time;
ngx_int_t               ngx_process_slot;
ngx_pid_t               ngx_pid;
ngx_uint_t              ngx_pagesize = 4096;

static ngx_time_t       test_time;
static ngx_log_t        test_log;
static u_char          *arena, *arena_end;
static int              tests, failed;


void *
ngx_slab_calloc(ngx_slab_pool_t *pool, size_t size)
{
    u_char  *p;

    p = ngx_align_ptr(arena, 64);

    if (p + size > arena_end) {
        return NULL;
    }

    arena = p + size;

    return p;
}


void
ngx_log_error_core(ngx_uint_t level, ngx_log_t *log, ngx_err_t err,
    const char *fmt, ...)
{
}


static void
ok(int cond, const char *name)
{
    tests++;

    if (!cond) {
        failed++;
    }

    printf("%sok %d - %s\n", cond ? "" : "not ", tests, name);
    fflush(stdout);
}


static void
set_clock(ngx_msec_t ms)
{
    ngx_current_msec = ms;
    test_time.sec = 1764300000 + ms / 1000;
    test_time.msec = ms % 1000;
}


static void
sweep_until(ngx_presence_table_t *t, ngx_msec_t ms)
{
    while (ngx_current_msec < ms) {
        set_clock(ngx_current_msec + NGX_PRESENCE_TICK);
        (void) ngx_presence_sweep(t, ngx_pid);
    }
}


static void
new_table(ngx_presence_table_t *t, size_t size)
{
    ngx_memzero(t, sizeof(ngx_presence_table_t));
    ngx_str_set(&t->name, "test");
    t->log = &test_log;

    arena = mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_SHARED|MAP_ANONYMOUS,
                 -1, 0);
    arena_end = arena + size;

    if (ngx_presence_table_init(t, NULL, size / 2) != NGX_OK) {
        printf("Bail out! table init\n");
        exit(1);
    }
}


static ngx_uint_t
status_of(ngx_presence_table_t *t, uint32_t id, ngx_presence_status_t *st)
{
    ngx_presence_node_t  *node;

    node = ngx_presence_table_lookup(t, id);
    if (node == NULL) {
        return 0;
    }

    ngx_presence_read(node, st);

    return 1;
}


/* a pid that surely belongs to no process: a child that has exited */

static ngx_pid_t
dead_pid(void)
{
    ngx_pid_t  pid;

    pid = fork();

    if (pid == 0) {
        _exit(0);
    }

    waitpid(pid, NULL, 0);

    return pid;
}


static void
test_expiry(void)
{
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    new_table(&t, 8 * 1024 * 1024);
    set_clock(1000000);

    ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, 7), 1764301000000,
                           1000, 0);
    ok(status_of(&t, 7, &st) && st.online && st.seq == 1,
       "a heartbeat makes the user online, seq 1");

    sweep_until(&t, 1000000 + 900);
    ok(status_of(&t, 7, &st) && st.online, "online before the timeout");

    sweep_until(&t, 1000000 + 1200);
    ok(status_of(&t, 7, &st) && !st.online && st.seq == 2
       && st.last_seen == 1764301000000,
       "offline after the timeout, last seen at the heartbeat");
    ok(t.sh->online == 0, "online counter back to 0");
}


/* a worker killed while it held the sweep lock: the next one takes over */

static void
test_dead_lock_holder(void)
{
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    new_table(&t, 8 * 1024 * 1024);
    set_clock(2000000);

    ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, 9), 1764302000000,
                           500, 0);

    t.sh->sweep_lock = dead_pid();

    set_clock(2000000 + 800);
    ok(ngx_presence_sweep(&t, ngx_pid) == 1,
       "the sweep lock of a dead process is taken over");
    ok(status_of(&t, 9, &st) && !st.online, "and the user expired");
    ok(t.sh->sweep_lock == 0, "and the lock released");

    ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, 9), 1764302001000,
                           500, 0);
    t.sh->sweep_lock = getppid();            /* a live process holds it */
    set_clock(2000000 + 2000);
    ok(ngx_presence_sweep(&t, ngx_pid) == 0,
       "a lock held by a live process is left alone");
    t.sh->sweep_lock = 0;
    ok(ngx_presence_sweep(&t, ngx_pid) == 1, "then the sweep goes on");
}


/* a sweeper killed with buckets in hand: the audit finds the users */

static void
test_orphans(void)
{
    uint32_t               id;
    ngx_uint_t             i, lost;
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    new_table(&t, 2 * 1024 * 1024);
    set_clock(3000000);

    for (id = 1; id <= 100; id++) {
        ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, id),
                               1764303000000, 300, 0);
    }

    /* what a sweeper killed after taking the buckets would leave */
    for (i = 0; i < NGX_PRESENCE_WHEEL; i++) {
        t.sh->wheel[i] = 0;
    }

    /* the audit knows them lost a turn of the wheel after their tick */
    sweep_until(&t, 3000000 + 300 + NGX_PRESENCE_TICK
                    * (NGX_PRESENCE_WHEEL + 20 + 2 + t.sh->capacity / 1024));

    lost = 0;
    for (id = 1; id <= 100; id++) {
        lost += (status_of(&t, id, &st) && st.online);
    }

    ok(lost == 0, "users lost off the wheel are expired by the audit");
    ok(t.sh->online == 0, "online counter back to 0 after the audit");

    /* and they come back normally, on the wheel again */
    ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, 5), 1764303010000,
                           300, 0);
    sweep_until(&t, ngx_current_msec + 200);
    ok(status_of(&t, 5, &st) && st.online && st.seq == 3,
       "a heartbeat after the audit makes the user online again");
    sweep_until(&t, ngx_current_msec + 400);
    ok(status_of(&t, 5, &st) && !st.online && st.seq == 4,
       "and the wheel expires it again");
}


/*
 * Four processes heartbeat, hide and show the same 200 users at random
 * while the clock runs and every one of them sweeps.  Afterwards: seq is
 * odd exactly for the visibly online, the online counter equals their
 * number, each id is in the table once.
 */

static void
check_table(ngx_presence_table_t *t, const char *when, ngx_uint_t gauge)
{
    char                   name[128];
    uint32_t               n, online, odd_mismatch;
    ngx_uint_t             i;
    ngx_presence_status_t  st;

    n = 0;
    online = 0;
    odd_mismatch = 0;

    for (i = 0; i < t->sh->capacity; i++) {
        if (t->sh->nodes[i].id == 0) {
            continue;
        }

        n++;
        ngx_presence_read(&t->sh->nodes[i], &st);
        online += st.online;

        if (st.online) {
            printf("# still online: user %u, state %016lx, queued for %u, "
                   "swept to %lu\n", t->sh->nodes[i].id,
                   (unsigned long) t->sh->nodes[i].state,
                   t->sh->nodes[i].queued, (unsigned long) t->sh->swept);
        }
        odd_mismatch += ((st.seq & 1) != st.online);
    }

    snprintf(name, sizeof(name), "%s: 200 users, each in the table once",
             when);
    ok(n == 200 && t->sh->tracked == 200, name);
    snprintf(name, sizeof(name),
             "%s: seq odd exactly for the visibly online", when);
    ok(odd_mismatch == 0, name);
    snprintf(name, sizeof(name), "%s: after the timeout no one is online",
             when);
    ok(online == 0, name);

    if (gauge) {
        snprintf(name, sizeof(name), "%s: the online counter agrees", when);
        ok(t->sh->online == 0, name);
    }
}


static void
random_ops(ngx_presence_table_t *t, volatile ngx_msec_t *clock,
    ngx_uint_t count, ngx_uint_t ticker)
{
    uint32_t              id;
    ngx_uint_t            ops;
    ngx_presence_node_t  *node;

    for (ops = 0; ops < count; ops++) {
        set_clock(*clock);

        id = 1 + random() % 200;
        node = ngx_presence_table_get(t, id);

        switch (random() % 10) {
        case 0:
            ngx_presence_hide(t, node, 1764304000000 + ops);
            break;
        case 1:
            ngx_presence_heartbeat(t, node, 1764304000000 + ops, 200, 1);
            break;
        case 2:
        case 3:
            (void) ngx_presence_sweep(t, ngx_pid);
            if (ticker) {
                *clock += 7;
            }
            break;
        default:
            ngx_presence_heartbeat(t, node, 1764304000000 + ops, 200, 0);
        }
    }
}


static void
test_concurrency(void)
{
    ngx_uint_t             p;
    ngx_pid_t              pids[4], victim;
    ngx_presence_table_t   t;
    volatile ngx_msec_t   *clock;

    new_table(&t, 16 * 1024 * 1024);

    /* one clock for all, in the shared arena */
    clock = ngx_slab_calloc(NULL, sizeof(ngx_msec_t));
    *clock = 4000000;

    for (p = 0; p < 4; p++) {
        pids[p] = fork();

        if (pids[p] == 0) {
            ngx_pid = getpid();
            ngx_process_slot = (ngx_int_t) p;
            srandom((unsigned) ngx_pid);
            random_ops(&t, clock, 200000, p == 0);
            _exit(0);
        }
    }

    for (p = 0; p < 4; p++) {
        waitpid(pids[p], NULL, 0);
    }

    ngx_pid = getpid();
    set_clock(*clock);
    sweep_until(&t, *clock + 1000);
    check_table(&t, "4 processes", 1);

    /*
     * A process killed with SIGKILL at a random instant of its work,
     * maybe inside a sweep: the others are not wedged, and no one stays
     * online.  (The online gauge may be one off if the kill fell between
     * a change and its count: it is not checked here.)
     */

    victim = fork();

    if (victim == 0) {
        ngx_pid = getpid();
        ngx_process_slot = 5;
        srandom((unsigned) ngx_pid);
        random_ops(&t, clock, 100000000, 1);
        _exit(0);
    }

    usleep(150000 + random() % 100000);
    kill(victim, SIGKILL);
    waitpid(victim, NULL, 0);

    ngx_pid = getpid();
    random_ops(&t, clock, 100000, 1);
    set_clock(*clock);
    sweep_until(&t, *clock + 1000 + NGX_PRESENCE_TICK
                               * (NGX_PRESENCE_WHEEL + 20 + 2
                                  + t.sh->capacity / 1024));
    check_table(&t, "after a kill -9", 0);
}


/* the write-behind's marks: set by changes, cleared per store by seq */

static void
test_dirty_marks(void)
{
    ngx_presence_node_t    *node;
    ngx_presence_table_t    t;
    ngx_presence_status_t   st;

    new_table(&t, 8 * 1024 * 1024);
    set_clock(2000000);

    node = ngx_presence_table_get(&t, 11);
    ngx_presence_heartbeat(&t, node, 1764302000000, 1000, 0);
    ngx_presence_read(node, &st);
    ok(st.dirty == NGX_PRESENCE_DIRTY, "a change marks the user for both stores");

    ok(ngx_presence_clean(node, 1, NGX_PRESENCE_DIRTY_PG), "cleaned for PG");
    ngx_presence_read(node, &st);
    ok(st.dirty == NGX_PRESENCE_DIRTY_REDIS, "still marked for Redis");

    ngx_presence_heartbeat(&t, node, 1764302000500, 1000, 0);
    ngx_presence_read(node, &st);
    ok(st.dirty == NGX_PRESENCE_DIRTY_REDIS, "a heartbeat of an online user "
       "changes nothing to write");

    ngx_presence_hide(&t, node, 1764302000600);
    ok(!ngx_presence_clean(node, 1, NGX_PRESENCE_DIRTY),
       "a write of an older seq does not clean a newer change");
    ngx_presence_read(node, &st);
    ok(st.dirty == NGX_PRESENCE_DIRTY && st.seq == 2, "both marked again");

    /* warm start: a store's last_seen for a user this table never saw */
    ok(ngx_presence_warm(&t, 12, 1764300000000, 1) == NGX_OK, "warm user 12");
    ok(status_of(&t, 12, &st) && !st.online && st.seq == 0
       && st.last_seen == 1764300000000 && st.dirty == NGX_PRESENCE_DIRTY,
       "offline, last seen from the store, marked (the store said online)");
    ok(ngx_presence_warm(&t, 11, 1764300000000, 0) == NGX_OK
       && status_of(&t, 11, &st) && st.last_seen == 1764302000600,
       "a user seen since keeps its own last_seen");
}


int
main(void)
{
    ngx_cached_time = &test_time;
    ngx_pid = getpid();

    test_expiry();
    test_dead_lock_holder();
    test_orphans();
    test_concurrency();
    test_dirty_marks();

    printf("1..%d\n", tests);

    return failed ? 1 : 0;
}

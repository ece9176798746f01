
/*
 * Unit tests of the subscription cache, without nginx around it (run by
 * t/000-subs.t): src/ngx_http_presence_subs.c is included unchanged, on
 * nginx's own slab allocator, shared mutex and rbtree (t/nginx-core/), in
 * a MAP_SHARED arena laid out as nginx lays out a shared zone, so that
 * forked processes play the workers.
 *
 * The crash test: workers look sets up, store and update them at random;
 * one of them is killed with SIGKILL at a random moment while it holds
 * the cache's mutex (mid-update), and the test then does what the master
 * does (releases the mutex of the dead pid).  After each kill, the cache
 * must be consistent (rbtree, LRU list and counters agree, every set is
 * sorted, no slab memory lost) and keep working: no worker crashes or
 * hangs.  Prints TAP.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>

#include "../src/ngx_http_presence_subs.c"
#include "stubs.h"


#define TEST_ZONE_SIZE   (2 * 1024 * 1024)
#define TEST_USERS       1000
#define TEST_TARGETS     4000       /* the largest set stored */
#define TEST_WORKERS     3
#define TEST_ROUNDS      100
#define TEST_DEPTH_MAX   64


static ngx_cycle_t      test_cycle;
static ngx_log_t        test_log;

typedef struct {
    ngx_atomic_t        warnings;   /* rebuilds logged */
    ngx_atomic_t        stop;       /* the workers of a round end */
    ngx_atomic_t        ops;
} test_shared_t;

static test_shared_t   *shared;
static ngx_slab_pool_t *pool;
static ngx_presence_subs_t  subs;
static ngx_uint_t       pfree_empty;
static uint32_t         tick_seed;


static void
count_warnings(ngx_uint_t level, const char *fmt, va_list args)
{
    if (level == NGX_LOG_WARN && shared) {
        (void) ngx_atomic_fetch_add(&shared->warnings, 1);
    }
}


/* the zone as ngx_init_zone_pool() and init_subs_zone make it */

static int
zone_init(void)
{
    u_char  *addr;

    addr = mmap(NULL, TEST_ZONE_SIZE, PROT_READ|PROT_WRITE,
                MAP_SHARED|MAP_ANON, -1, 0);
    if (addr == MAP_FAILED) {
        return -1;
    }

    pool = (ngx_slab_pool_t *) addr;
    pool->end = addr + TEST_ZONE_SIZE;
    pool->min_shift = 3;
    pool->addr = addr;

    if (ngx_shmtx_create(&pool->mutex, &pool->lock, NULL) != NGX_OK) {
        return -1;
    }

    ngx_slab_init(pool);

    if (ngx_presence_subs_init(&subs, pool) != NGX_OK) {
        return -1;
    }

    pool->data = subs.sh;
    pool->log_nomem = 0;

    return 0;
}


/* one worker's random operations, until told to stop */

static void
worker_op(uint32_t *targets)
{
    u_char              out[16];
    uint32_t            uid, id, ids[16];
    ngx_uint_t          i, k, n;
    ngx_atomic_uint_t   version;

    uid = 1 + random() % TEST_USERS;

    switch (random() % 4) {

    case 0:
    case 1:
        for (i = 0; i < 16; i++) {
            ids[i] = 1 + random() % (4 * TEST_TARGETS);
        }

        if (ngx_presence_subs_lookup(&subs, uid, ids, 16, out, &version)
            == NGX_DECLINED)
        {
            n = random() % 3 ? random() % 64 : random() % TEST_TARGETS;

            /* distinct ids, as the database's primary key makes them */

            for (i = 0; i < n; i++) {
                targets[i] = (i ? targets[i - 1] : 0) + 1 + random() % 4;
            }

            for (i = 0; n > 1 && i < 8; i++) {
                k = random() % n;
                id = targets[0];
                targets[0] = targets[k];
                targets[k] = id;
            }

            ngx_presence_subs_store(&subs, uid, version, targets, n, 0);
        }

        break;

    default:
        ngx_presence_subs_update(&subs, uid,
                                 1 + random() % (4 * TEST_TARGETS),
                                 random() % 3 != 0);
    }

    (void) ngx_atomic_fetch_add(&shared->ops, 1);
}


/* the victim: SIGKILL as soon as a profiling tick finds it in the mutex */

static void
victim_tick(int signo)
{
    struct itimerval  it;

    if (*pool->mutex.lock == (ngx_atomic_uint_t) ngx_pid) {
        kill(ngx_pid, SIGKILL);
    }

    /* random() takes a lock: not in a signal handler */
    tick_seed = tick_seed * 1103515245 + 12345;

    ngx_memzero(&it, sizeof(it));
    it.it_value.tv_usec = 20 + (tick_seed >> 16) % 200;
    setitimer(ITIMER_PROF, &it, NULL);
}


static pid_t
worker_start(int victim, unsigned seed)
{
    pid_t              pid;
    uint32_t          *targets;
    struct itimerval   it;

    pid = fork();

    if (pid != 0) {
        return pid;
    }

    ngx_pid = getpid();
    srandom(seed);
    tick_seed = seed;

    targets = malloc(TEST_TARGETS * sizeof(uint32_t));
    if (targets == NULL) {
        _exit(3);
    }

    if (victim) {
        signal(SIGPROF, victim_tick);
        ngx_memzero(&it, sizeof(it));
        it.it_value.tv_usec = 500 + random() % 5000;
        setitimer(ITIMER_PROF, &it, NULL);
    }

    for ( ;; ) {
        if (!victim && shared->stop) {
            _exit(0);
        }

        worker_op(targets);
    }
}


/* ------------------------------------------------------------------ */
/* consistency, checked in a child process: a corrupt tree may crash   */


static int
in_zone(void *p)
{
    return (u_char *) p >= pool->start && (u_char *) p < pool->end;
}


/* black height, or -1 */

static int
check_tree(ngx_presence_subs_shctx_t *sh, ngx_rbtree_node_t *node,
    ngx_rbtree_node_t *parent, uint64_t lo, uint64_t hi, ngx_uint_t depth,
    ngx_uint_t *count)
{
    int                        l, r;
    ngx_uint_t                 i;
    ngx_presence_subs_node_t  *sn;

    if (node == &sh->sentinel) {
        return 1;
    }

    if (depth > TEST_DEPTH_MAX || !in_zone(node) || node->parent != parent
        || node->key < lo || node->key > hi || ++*count > 100000)
    {
        return -1;
    }

    if (ngx_rbt_is_red(node)
        && (ngx_rbt_is_red(node->left) || ngx_rbt_is_red(node->right)))
    {
        return -1;
    }

    sn = (ngx_presence_subs_node_t *) node;

    if (sn->n > sn->cap || !in_zone(sn->targets)
        || !in_zone(sn->targets + sn->cap - 1))
    {
        return -1;
    }

    for (i = 1; i < sn->n; i++) {
        if (sn->targets[i - 1] >= sn->targets[i]) {
            return -1;
        }
    }

    l = check_tree(sh, node->left, node, lo, node->key, depth + 1, count);
    r = check_tree(sh, node->right, node, node->key, hi, depth + 1, count);

    if (l < 0 || r < 0 || l != r) {
        return -1;
    }

    return l + ngx_rbt_is_black(node);
}


static int
check_consistent(void)
{
    u_char                      out[1];
    uint32_t                    id;
    ngx_uint_t                  count, lru;
    ngx_queue_t                *q;
    ngx_atomic_uint_t           version;
    ngx_presence_subs_node_t   *sn;
    ngx_presence_subs_shctx_t  *sh;

    /* an ordinary lookup first: whatever repair there is happens there */

    id = 1;
    (void) ngx_presence_subs_lookup(&subs, TEST_USERS + 1, &id, 1, out,
                                    &version);

    ngx_shmtx_lock(&pool->mutex);

    sh = pool->data;
    count = 0;

    if (!in_zone(sh) || sh->rbtree.sentinel != &sh->sentinel
        || ngx_rbt_is_red(&sh->sentinel)
        || (sh->rbtree.root != &sh->sentinel
            && ngx_rbt_is_red(sh->rbtree.root))
        || check_tree(sh, sh->rbtree.root, sh->rbtree.root->parent, 0,
                      UINT32_MAX, 0, &count)
           < 0)
    {
        /* (ngx_rbtree_delete() may leave the root's parent stale) */
        return 1;
    }

    lru = 0;

    for (q = sh->lru.next; q != &sh->lru; q = q->next) {
        if (!in_zone(q) || q->next->prev != q || ++lru > count) {
            return 2;
        }

        sn = ngx_queue_data(q, ngx_presence_subs_node_t, queue);

        if (ngx_presence_subs_find(&subs, sn->node.key) != sn) {
            return 2;
        }
    }

    if (lru != count || sh->sets != count) {
        return 3;
    }

    /* every set freed, the slab holds what it held when empty */

    while (!ngx_queue_empty(&sh->lru)) {
        sn = ngx_queue_data(ngx_queue_last(&sh->lru),
                            ngx_presence_subs_node_t, queue);
        ngx_presence_subs_free(&subs, sn);
    }

    if (pool->pfree != pfree_empty || sh->sets != 0) {
        return 4;
    }

    ngx_shmtx_unlock(&pool->mutex);

    return 0;
}


/* the master's part: the dead worker's mutex is released */

static void
reap(pid_t pid)
{
    (void) ngx_shmtx_force_unlock(&pool->mutex, pid);
}


/* 0: consistent; 1-4: which check failed; 10+signal: crashed; 9: hung */

static int
check(void)
{
    int    status, i;
    pid_t  pid;

    pid = fork();

    if (pid == 0) {
        ngx_pid = getpid();
        alarm(5);
        _exit(check_consistent());
    }

    for (i = 0; i < 500; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            reap(pid);

            if (WIFSIGNALED(status)) {
                return 10 + WTERMSIG(status);
            }

            return WEXITSTATUS(status);
        }

        usleep(10000);
    }

    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    reap(pid);

    return 9;
}


static void
test_functional(void)
{
    u_char             out[4];
    uint32_t           targets[3] = { 30, 10, 20 };
    uint32_t           ids[4] = { 10, 15, 20, 30 };
    ngx_atomic_uint_t  version;

    ok(ngx_presence_subs_lookup(&subs, 5000, ids, 4, out, &version)
       == NGX_DECLINED, "an uncached set is a miss");

    ngx_presence_subs_store(&subs, 5000, version, targets, 3, 0);

    ok(ngx_presence_subs_lookup(&subs, 5000, ids, 4, out, &version)
       == NGX_OK && out[0] && !out[1] && out[2] && out[3],
       "a stored set answers");

    ngx_presence_subs_update(&subs, 5000, 15, 1);
    ngx_presence_subs_update(&subs, 5000, 30, 0);

    ok(ngx_presence_subs_lookup(&subs, 5000, ids, 4, out, &version)
       == NGX_OK && out[0] && out[1] && out[2] && !out[3],
       "updates change the cached set");
}


/*
 * A lookup of the set first in the LRU list writes nothing (no writer
 * mark); of another set it moves that set first; and a dead writer's
 * mark is seen to by either.
 */

/* another node's change drops a set, and a load in flight is not kept */

static void
test_drop_ttl(void)
{
    u_char             out[1];
    uint32_t           targets[1] = { 10 };
    uint32_t           ids[1] = { 10 };
    ngx_atomic_uint_t  version, old;

    ngx_presence_subs_drop(&subs, 5001);
    (void) ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version);
    ngx_presence_subs_store(&subs, 5001, version, targets, 1, 0);

    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_OK && out[0], "a stored set answers");

    ngx_presence_subs_drop(&subs, 5001);

    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &old)
       == NGX_DECLINED, "a dropped set is a miss");

    ngx_presence_subs_drop(&subs, 5001);
    ngx_presence_subs_store(&subs, 5001, old, targets, 1, 0);

    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_DECLINED && version != old,
       "a load that began before a drop is not cached");

    subs.ttl = 1000;
    stub_set_clock(50000);
    ngx_presence_subs_store(&subs, 5001, version, targets, 1, 0);

    stub_set_clock(50749);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_OK && out[0], "a set younger than the TTL answers");

    stub_set_clock(50999);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_AGAIN && out[0],
       "in the TTL's last quarter it answers, and is to be loaded ahead");

    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_OK && out[0], "a load ahead is asked for once");

    stub_set_clock(51000);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_DECLINED, "a set as old as the TTL is loaded again");

    ngx_presence_subs_store(&subs, 5001, version, targets, 1, 0);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_OK && out[0], "and the new load answers");

    /* loads ahead: stored over the set, unless it changed meanwhile */

    stub_set_clock(51800);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &old)
       == NGX_AGAIN, "ahead again");

    stub_set_clock(51900);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_OK, "not asked again within an eighth of the TTL");

    stub_set_clock(51925);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_AGAIN && version == old,
       "asked again after it: the first load may be lost");

    stub_set_clock(51930);
    ngx_presence_subs_store(&subs, 5001, old, targets, 1, 1);

    stub_set_clock(52100);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_OK && out[0],
       "a load ahead replaces the set, and its TTL starts again");

    stub_set_clock(52700);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &old)
       == NGX_AGAIN, "ahead again");

    ngx_presence_subs_update(&subs, 5001, 10, 0);
    ngx_presence_subs_store(&subs, 5001, old, targets, 1, 1);

    stub_set_clock(52710);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_OK && !out[0],
       "a load ahead begun before a change is not stored over it");

    stub_set_clock(52930);
    ok(ngx_presence_subs_lookup(&subs, 5001, ids, 1, out, &version)
       == NGX_DECLINED, "nor is the set used past its TTL");

    ngx_presence_subs_drop(&subs, 5001);
    subs.ttl = 0;
}


static void
test_lru(void)
{
    u_char                      out[2];
    uint32_t                    a[2] = { 7, 9 }, b[1] = { 8 };
    uint32_t                    ids[2] = { 8, 9 };
    ngx_uint_t                  rebuilt;
    ngx_atomic_uint_t           version;
    ngx_presence_subs_node_t   *sn;
    ngx_presence_subs_shctx_t  *sh;

    (void) ngx_presence_subs_lookup(&subs, 7001, ids, 2, out, &version);
    ngx_presence_subs_store(&subs, 7001, version, a, 2, 0);
    (void) ngx_presence_subs_lookup(&subs, 7002, ids, 2, out, &version);
    ngx_presence_subs_store(&subs, 7002, version, b, 1, 0);

    sh = pool->data;
    sn = ngx_queue_data(ngx_queue_head(&sh->lru), ngx_presence_subs_node_t,
                        queue);
    ok(sn->node.key == 7002, "the set stored last is first in the LRU list");

    ok(ngx_presence_subs_lookup(&subs, 7001, ids, 2, out, &version) == NGX_OK
       && !out[0] && out[1], "a set not first answers");

    sn = ngx_queue_data(ngx_queue_head(&sh->lru), ngx_presence_subs_node_t,
                        queue);
    ok(sn->node.key == 7001 && sh->writer == 0,
       "and is moved first, the writer's mark cleared");

    ok(ngx_presence_subs_lookup(&subs, 7001, ids, 2, out, &version) == NGX_OK
       && !out[0] && out[1] && ngx_queue_head(&sh->lru) == &sn->queue
       && sh->writer == 0, "the first set is read, the list unchanged");

    ok(ngx_presence_subs_lookup(&subs, 7002, ids, 2, out, &version) == NGX_OK
       && out[0] && !out[1], "a second set answers");

    /* the set first, a dead writer's mark: the lookup repairs the cache */

    sh->writer = 1;     /* init's pid: a writer that died, as it were */
    rebuilt = sh->rebuilt;

    ok(ngx_presence_subs_lookup(&subs, 7002, ids, 2, out, &version)
       == NGX_DECLINED, "a dead writer's mark is seen by a lookup of the "
       "first set");

    sh = pool->data;
    ok(sh->rebuilt == rebuilt + 1 && sh->writer == 0 && sh->sets == 0,
       "which it empties");
}


/* a set larger than the zone may hold is not cached and evicts nothing */

static void
test_oversize(void)
{
    u_char             out[1];
    uint32_t           uid, id, *big;
    ngx_uint_t         i, n, hits;
    ngx_atomic_uint_t  version;

    for (uid = 6001; uid <= 6003; uid++) {
        id = uid + 1000;
        (void) ngx_presence_subs_lookup(&subs, uid, &id, 1, out, &version);
        ngx_presence_subs_store(&subs, uid, version, &id, 1, 0);
    }

    n = TEST_ZONE_SIZE / sizeof(uint32_t);

    big = malloc(n * sizeof(uint32_t));
    if (big == NULL) {
        ok(0, "memory for a large set");
        return;
    }

    for (i = 0; i < n; i++) {
        big[i] = i + 1;
    }

    for (i = 0; i < 2; i++) {
        id = 1;
        ok(ngx_presence_subs_lookup(&subs, 6100, &id, 1, out, &version)
           == NGX_DECLINED, "a set larger than the zone is not cached");
        ngx_presence_subs_store(&subs, 6100, version, big, n, 0);
    }

    free(big);

    hits = 0;

    for (uid = 6001; uid <= 6003; uid++) {
        id = uid + 1000;
        hits += (ngx_presence_subs_lookup(&subs, uid, &id, 1, out, &version)
                 == NGX_OK && out[0]);
    }

    ok(hits == 3, "and the cached sets stay cached");
}


static void
test_crash_loop(void)
{
    int         status, bad, rc, crashed, hung, round, i, firstbad;
    pid_t       victim, others[TEST_WORKERS - 1], pid;
    ngx_uint_t  ops;

    bad = 0;
    crashed = 0;
    hung = 0;
    firstbad = 0;

    for (round = 0; round < TEST_ROUNDS; round++) {

        shared->stop = 0;

        for (i = 0; i < TEST_WORKERS - 1; i++) {
            others[i] = worker_start(0, round * 10 + i + 1);
        }

        victim = worker_start(1, round * 10 + 9);

        /* the victim kills itself in the mutex within a few ms */

        for (i = 0; i < 300; i++) {
            if (waitpid(victim, &status, WNOHANG) == victim) {
                break;
            }

            usleep(10000);
        }

        if (i == 300) {
            /* stuck (a corrupt structure loops): no kill in the mutex */
            printf("# round %d: the victim did not die\n", round);
            kill(victim, SIGKILL);
            waitpid(victim, &status, 0);
            hung++;

        } else if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL) {
            crashed++;
        }

        reap(victim);

        /* the others must still work: a few more operations, then stop */

        ops = shared->ops;

        for (i = 0; i < 100 && shared->ops < ops + 200; i++) {
            usleep(10000);
        }

        shared->stop = 1;

        for (i = 0; i < TEST_WORKERS - 1; i++) {
            int  j;

            for (j = 0; j < 200; j++) {
                pid = waitpid(others[i], &status, WNOHANG);
                if (pid == others[i]) {
                    break;
                }

                usleep(10000);
            }

            if (j == 200) {
                kill(others[i], SIGKILL);
                waitpid(others[i], &status, 0);
                reap(others[i]);
                hung++;
                continue;
            }

            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                crashed++;
                reap(others[i]);
            }
        }

        if (crashed || hung) {
            break;
        }

        rc = check();

        if (rc != 0) {
            bad++;

            if (firstbad == 0) {
                firstbad = rc;
                printf("# round %d: check failed (%d)\n", round, rc);
            }

            if (rc >= 9) {
                break;
            }
        }
    }

    printf("# %d rounds, %lu operations, %lu rebuilds logged\n", round,
           (unsigned long) shared->ops, (unsigned long) shared->warnings);

    ok(crashed == 0, "no worker crashed after another died mid-update");
    ok(hung == 0, "no worker hung after another died mid-update");
    ok(bad == 0, "the cache is consistent after every kill, no memory lost");
    ok(shared->warnings > 0, "the repair is logged as a warning");
}


int
main(void)
{
    ngx_uint_t  n;

    ngx_pid = getpid();
    stub_log = count_warnings;
    ngx_pagesize = getpagesize();

    for (n = ngx_pagesize; n >>= 1; ngx_pagesize_shift++) { /* void */ }

    ngx_slab_sizes_init();

    test_log.log_level = NGX_LOG_NOTICE;
    test_cycle.log = &test_log;
    ngx_cycle = &test_cycle;

    shared = mmap(NULL, sizeof(test_shared_t), PROT_READ|PROT_WRITE,
                  MAP_SHARED|MAP_ANON, -1, 0);

    if (shared == MAP_FAILED || zone_init() != 0) {
        printf("Bail out! no shared memory\n");
        return 1;
    }

    pfree_empty = pool->pfree;

    test_functional();
    test_drop_ttl();
    test_lru();
    test_oversize();
    ok(check() == 0, "consistent before any kill");
    pfree_empty = pool->pfree;

    test_crash_loop();

    if (failed == 0) {
        test_functional();
    }

    return done_testing();
}


/*
 * Unit tests of the write-behind's ring of changes, without nginx (run by
 * t/039-sync-ring.t): src/ngx_http_presence_sync_ring.c compiled with
 * NGX_PRESENCE_RING_TEST, whose hook lets a forked writer stop itself
 * (SIGSTOP) at a chosen point of an append; the ring is a MAP_SHARED
 * mapping.  A reader skips the stopped writer's entry, the ring wraps, the
 * writer goes on (SIGCONT): no change may be lost without being counted
 * in "dropped", and every entry read must be one a writer wrote whole.
 * Prints TAP.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <stdio.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include "../src/ngx_http_presence_sync_ring.h"
#include "stubs.h"


#define RING_SMALL     8
#define RING_STRESS    64
#define WRITERS        4
#define PER_WRITER     20000
#define MAX_ID         ((WRITERS + 1) * 1000000)


typedef struct {
    uint64_t                   attempts[WRITERS + 1];
} ctl_t;


static ngx_presence_ring_t    *ring;
static ctl_t                  *ctl;
static ngx_uint_t              stop_at;        /* this process's stage */
static ngx_uint_t              stop_chance;    /* 1 in n hooks, random */
static u_char                 *seen;
static uint64_t                cursor, nread, torn, twice;
static ngx_presence_ring_wait_t  wait_;


void
ngx_presence_ring_test_hook(ngx_uint_t stage)
{
    if (stop_at == stage) {
        stop_at = 0;
        raise(SIGSTOP);
        return;
    }

    if (stop_chance && random() % stop_chance == 0) {
        raise(SIGSTOP);
    }
}


/* every field of an item is a function of its id: a torn one shows */

static void
make_item(ngx_presence_ring_item_t *it, uint32_t id)
{
    it->id = id;
    it->seq = id * 2654435761u;
    it->last_seen = 1764300000000ULL + id * 7;
    it->flags = id % 16;
}


static int
whole(ngx_presence_ring_item_t *it)
{
    ngx_presence_ring_item_t  want;

    make_item(&want, it->id);

    return it->seq == want.seq && it->last_seen == want.last_seen
           && it->flags == want.flags;
}


static void
reset(ngx_uint_t n)
{
    ngx_memzero(ring, ngx_presence_ring_size(RING_STRESS));
    ngx_presence_ring_init(ring, n);
    ngx_memzero(ctl, sizeof(ctl_t));
    ngx_memzero(seen, MAX_ID);
    cursor = 0;
    nread = 0;
    torn = 0;
    twice = 0;
    wait_.since = 0;
}


static ngx_int_t
append(uint32_t id, ngx_uint_t who)
{
    ngx_presence_ring_item_t  it;

    make_item(&it, id);
    __atomic_fetch_add(&ctl->attempts[who], 1, __ATOMIC_RELAXED);

    return ngx_presence_ring_append(ring, &it);
}


/* reads what is there at "now"; the tail follows */

static void
drain(ngx_msec_t now)
{
    ngx_int_t                 rc;
    ngx_presence_ring_item_t  it;

    for ( ;; ) {
        rc = ngx_presence_ring_read(ring, cursor, &wait_, now, &it);

        if (rc == NGX_AGAIN) {
            break;
        }

        cursor++;

        if (rc == NGX_DECLINED) {
            continue;
        }

        nread++;

        if (!whole(&it) || it.id >= MAX_ID) {
            torn++;
            continue;
        }

        if (seen[it.id]++) {
            twice++;
        }
    }

    ngx_presence_ring_set_tail(ring, cursor);
}


static uint64_t
attempts(void)
{
    uint64_t    n;
    ngx_uint_t  i;

    n = 0;

    for (i = 0; i <= WRITERS; i++) {
        n += ctl->attempts[i];
    }

    return n;
}


static pid_t
stopped_writer(ngx_uint_t stage, uint32_t id)
{
    int    status;
    pid_t  pid;

    pid = fork();

    if (pid == 0) {
        stop_at = stage;
        _exit(append(id, 1) == NGX_OK ? 0 : 1);
    }

    if (waitpid(pid, &status, WUNTRACED) != pid || !WIFSTOPPED(status)) {
        printf("# the writer did not stop at stage %d\n", (int) stage);
    }

    return pid;
}


static int
resume(pid_t pid)
{
    int  status;

    kill(pid, SIGCONT);

    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
        return -1;
    }

    return WEXITSTATUS(status);
}


/*
 * A writer stopped after it read head, before it reserved: the ring is
 * filled, read, filled again and read, so the tail passes its stale head.
 */

static void
test_stale_head(void)
{
    pid_t     pid;
    uint32_t  id;

    reset(RING_SMALL);

    pid = stopped_writer(NGX_PRESENCE_RING_AT_HEAD, 999);

    for (id = 1; id <= 2 * RING_SMALL; id++) {
        (void) append(id, 0);

        if (id % RING_SMALL == 0) {
            drain(1);
        }
    }

    ok(resume(pid) == 0, "stale head: the writer's change was appended");

    drain(2);

    ok(seen[999] == 1, "stale head: and read");
    ok(ring->dropped == 0, "stale head: nothing dropped (the ring had room)");
    ok(nread + ring->dropped == attempts() && torn == 0 && twice == 0,
       "stale head: every change read once, whole");
}


/*
 * A writer stopped at stage, holding position 0: the reader skips it after
 * NGX_PRESENCE_RING_STUCK, the ring wraps (position 8 is in its entry),
 * then the writer goes on.
 */

static void
test_stopped(ngx_uint_t stage, const char *what)
{
    char      name[128];
    pid_t     pid;
    uint32_t  id;
    int       rc;

    reset(RING_SMALL);

    pid = stopped_writer(stage, 999);

    for (id = 1; id < RING_SMALL; id++) {
        (void) append(id, 0);
    }

    drain(1000);
    drain(1000 + NGX_PRESENCE_RING_STUCK / 2);

    snprintf(name, sizeof(name), "%s: not skipped before it is stuck", what);
    ok(cursor == 0, name);

    drain(1000 + NGX_PRESENCE_RING_STUCK + 1);

    snprintf(name, sizeof(name), "%s: skipped after %d ms, counted", what,
             NGX_PRESENCE_RING_STUCK);
    ok(cursor == RING_SMALL && ring->dropped == 1, name);

    /* the ring wraps: position 8 is in the stopped writer's entry */
    for (id = RING_SMALL; id < 2 * RING_SMALL; id++) {
        (void) append(id, 0);
    }

    rc = resume(pid);

    drain(5000);
    drain(5000 + NGX_PRESENCE_RING_STUCK + 1);

    snprintf(name, sizeof(name), "%s: the late writer is told it lost", what);
    ok(rc == 1, name);

    snprintf(name, sizeof(name), "%s: no entry torn (%d)", what, (int) torn);
    ok(torn == 0 && seen[999] == 0, name);

    for (id = 1; id < 2 * RING_SMALL; id++) {
        if (seen[id] != 1) {
            break;
        }
    }

    snprintf(name, sizeof(name), "%s: every other change read once", what);
    ok(id == 2 * RING_SMALL && twice == 0, name);

    snprintf(name, sizeof(name),
             "%s: read + dropped = appended (%d + %d = %d)", what,
             (int) nread, (int) ring->dropped, (int) attempts());
    ok(nread + ring->dropped == attempts(), name);
}


/*
 * Writers stop themselves at random points (1 in 500 hooks) while a reader
 * with a fast clock drains a small ring and skips the stuck; the stopped
 * are woken at random, some before, some after the skip and the wrap.
 */

static void
test_stress(void)
{
    int         status, running;
    pid_t       pids[WRITERS];
    uint32_t    k;
    ngx_msec_t  now, wake[WRITERS];
    ngx_uint_t  i;

    reset(RING_STRESS);

    for (i = 0; i < WRITERS; i++) {
        pids[i] = fork();

        if (pids[i] == 0) {
            srandom(getpid());
            stop_chance = 500;

            for (k = 1; k <= PER_WRITER; k++) {
                if (append((i + 1) * 1000000 + k, i + 1) == NGX_DECLINED) {
                    /* a full ring: a pause, as the reader would have */
                    usleep(50);
                }
            }

            _exit(0);
        }

        wake[i] = 0;
    }

    now = 1;
    running = WRITERS;

    while (running) {
        now += 10;
        drain(now);

        for (i = 0; i < WRITERS; i++) {
            if (pids[i] == 0) {
                continue;
            }

            if (waitpid(pids[i], &status, WNOHANG | WUNTRACED) == pids[i]) {
                if (WIFSTOPPED(status)) {
                    wake[i] = now + random() % (2 * NGX_PRESENCE_RING_STUCK);

                } else {
                    pids[i] = 0;
                    running--;
                    continue;
                }
            }

            if (wake[i] && now >= wake[i]) {
                wake[i] = 0;
                kill(pids[i], SIGCONT);
            }
        }

        usleep(100);
    }

    drain(now + 1);
    drain(now + NGX_PRESENCE_RING_STUCK + 2);

    printf("# stress: %d appended, %d read, %d dropped\n",
           (int) attempts(), (int) nread, (int) ring->dropped);

    ok(torn == 0, "stress: no entry torn");
    ok(twice == 0, "stress: no change read twice");
    ok(nread + ring->dropped == attempts(),
       "stress: read + dropped = appended");
    ok(cursor == ngx_presence_ring_head(ring), "stress: the reader is done");
}


int
main(void)
{
    size_t  size;

    size = ngx_presence_ring_size(RING_STRESS) + sizeof(ctl_t);

    ring = mmap(NULL, size, PROT_READ | PROT_WRITE,
                MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED) {
        printf("Bail out! mmap\n");
        return 1;
    }

    ctl = (ctl_t *) ((u_char *) ring + ngx_presence_ring_size(RING_STRESS));

    seen = calloc(MAX_ID, 1);
    if (seen == NULL) {
        printf("Bail out! calloc\n");
        return 1;
    }

    /* a hung test fails, it does not hang the suite */
    alarm(50);

    test_stale_head();
    test_stopped(NGX_PRESENCE_RING_AT_RESERVED, "stopped after reserving");
    test_stopped(NGX_PRESENCE_RING_AT_WRITING, "stopped mid-write");
    test_stress();

    return done_testing();
}

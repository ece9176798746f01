
/*
 * Unit tests of the presence table, without nginx around it (run by
 * t/000-table.t): the table code is src/ngx_http_presence_table.c
 * compiled unchanged but for its test hooks (NGX_PRESENCE_TABLE_HOOKS);
 * the few nginx symbols it uses are stubbed, and its "shared memory" is a
 * MAP_SHARED mapping, so that forked processes play the workers.  Prints
 * TAP.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <stdio.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include "../src/ngx_http_presence_table.h"
#include "../src/ngx_http_presence_json.h"

/* the slab mutex a spin lock on the pid: the master frees a dead holder's
   (see test_concurrency) */
#define NGX_STUBS_SHM  1
#include "stubs.h"


static ngx_log_t        test_log;
static ngx_slab_pool_t *test_pool;


static void
sweep_until(ngx_presence_table_t *t, ngx_msec_t ms)
{
    while (ngx_current_msec < ms) {
        stub_set_clock(ngx_current_msec + NGX_PRESENCE_TICK);

        /* a sweep stopped at its budget goes on at once, as in nginx */
        do {
            (void) ngx_presence_sweep(t, ngx_pid);
        } while (t->behind);
    }
}


static void
new_table(ngx_presence_table_t *t, size_t size)
{
    ngx_memzero(t, sizeof(ngx_presence_table_t));
    ngx_str_set(&t->name, "test");
    t->log = &test_log;
    t->devices = NGX_PRESENCE_DEVICES;
    t->idle_timeout = NGX_PRESENCE_IDLE_TIMEOUT;
    t->name_age = 3600;

    stub_arena(mmap(NULL, size, PROT_READ|PROT_WRITE,
                    MAP_SHARED|MAP_ANONYMOUS, -1, 0), size);

    test_pool = ngx_slab_calloc(NULL, sizeof(ngx_slab_pool_t));
    test_pool->mutex.lock = &test_pool->lock.lock;

    if (ngx_presence_table_init(t, test_pool, size / 2) != NGX_OK) {
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


/*
 * What a worker started in the process slot of a killed one does first
 * (init_process): the node the dead one had in hand is let go of.
 */

static void
respawned(ngx_presence_table_t *t, ngx_int_t slot)
{
    ngx_int_t  mine;

    mine = ngx_process_slot;
    ngx_process_slot = slot;
    ngx_presence_table_init_process(t);
    ngx_process_slot = mine;
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
    stub_set_clock(1000000);

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


/*
 * A sweep past its budget stops between two buckets and says so
 * (table->behind): 10 users due on 10 ticks, the sweeper 2 s late; with a
 * budget of 1 ns a call takes one bucket, and the calls that follow take
 * the rest in order, every user once; without a budget one call does.
 */

static void
test_sweep_budget(void)
{
    uint32_t               id;
    ngx_msec_t             entry;
    ngx_uint_t             calls, offline, order, budget;
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    entry = ngx_current_msec;

    for (budget = 1; ; budget = 0) {
        /* the clock first: a new table is swept from its creation */
        stub_set_clock(3000000 + (1 - budget) * 100000);
        new_table(&t, 8 * 1024 * 1024);
        t.sweep_budget = budget;

        for (id = 1; id <= 10; id++) {
            ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, id),
                                   1764301000000, 1000 + id * 100, 0);
        }

        stub_set_clock(ngx_current_msec + 4000);

        order = 1;
        offline = 0;

        for (calls = 0; calls < 100; calls++) {
            (void) ngx_presence_sweep(&t, ngx_pid);

            for (id = 1; id <= 10; id++) {
                if (status_of(&t, id, &st) && !st.online
                    && id > offline)
                {
                    /* each goes after those due before it */
                    order &= (id == offline + 1);
                    offline = id;
                }
            }

            if (!t.behind) {
                break;
            }
        }

        for (id = 1; id <= 10; id++) {
            offline -= (status_of(&t, id, &st) && !st.online && st.seq == 2);
        }

        printf("# budget %lu ns: %lu calls after the first\n",
               (unsigned long) budget, (unsigned long) calls);

        if (budget) {
            ok(calls >= 10 && calls < 100 && order && offline == 0
               && t.sh->online == 0,
               "sweep budget: a call a bucket, the next calls take the "
               "rest in order, each user offline once");
            continue;
        }

        ok(calls == 0 && offline == 0 && t.sh->online == 0,
           "no sweep budget: one call takes every bucket due");
        break;
    }

    /* the tests that follow set clocks of their own from here */
    stub_set_clock(entry);
}


/*
 * One bucket of 1,000 users due, a budget of 1 ns: a sweep stops every 64
 * links and the next one goes on from there (sh->rest).  The odd users
 * heartbeat while the bucket is half walked: they stay online, requeued,
 * and expire later; the even ones go offline once each.
 */

static void
test_sweep_budget_bucket(void)
{
    uint32_t               id;
    ngx_msec_t             entry;
    ngx_uint_t             calls, wrong, beat;
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    entry = ngx_current_msec;

    stub_set_clock(3300000);
    new_table(&t, 8 * 1024 * 1024);
    t.sweep_budget = 1;

    for (id = 1; id <= 1000; id++) {
        ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, id),
                               1764301000000, 1000, 0);
    }

    stub_set_clock(ngx_current_msec + 1500);
    beat = 0;

    for (calls = 1; calls < 1000; calls++) {
        (void) ngx_presence_sweep(&t, ngx_pid);

        if (!t.behind) {
            break;
        }

        if (calls == 3) {
            for (id = 1; id <= 1000; id += 2) {
                ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, id),
                                       1764301001500, 1000, 0);
            }

            beat = 1;
        }
    }

    wrong = 0;

    for (id = 1; id <= 1000; id++) {
        if (!status_of(&t, id, &st)) {
            wrong++;
            continue;
        }

        /* the odd ones beat again before the sweep got to them, or after
           it expired them (then online again, seq 3) */
        wrong += (id & 1) ? !st.online : (st.online || st.seq != 2);
    }

    printf("# a bucket of 1000 at 1 ns: %lu sweeps\n", (unsigned long) calls);

    ok(beat && calls > 10 && calls < 1000 && wrong == 0
       && t.sh->rest == 0,
       "sweep budget in a bucket: 64 links a sweep, the next goes on; "
       "the even users offline once, the odd ones that beat meanwhile "
       "online");

    sweep_until(&t, ngx_current_msec + 1500);
    while (t.behind) {
        (void) ngx_presence_sweep(&t, ngx_pid);
    }

    ok(t.sh->online == 0, "sweep budget in a bucket: then the odd ones "
       "expire at their new deadline");

    stub_set_clock(entry);
}


/*
 * A live process that took "lock" with ngx_presence_pid_lock(), as a
 * worker does; it holds it until *release is closed.  0: it could not.
 */

static ngx_pid_t
live_holder(ngx_atomic_t *lock, int *release)
{
    int        took[2], hold[2];
    char       c;
    ngx_str_t  name = ngx_string("test");
    ngx_pid_t  pid;

    if (pipe(took) == -1 || pipe(hold) == -1) {
        printf("Bail out! pipe\n");
        exit(1);
    }

    pid = fork();

    if (pid == 0) {
        ngx_pid = getpid();
        c = (char) ngx_presence_pid_lock(lock, ngx_pid, &test_log, &name,
                                         "test");
        close(hold[1]);
        (void) write(took[1], &c, 1);
        (void) read(hold[0], &c, 1);
        _exit(0);
    }

    close(took[1]);
    close(hold[0]);

    c = 0;
    (void) read(took[0], &c, 1);
    close(took[0]);

    *release = hold[1];

    return c ? pid : 0;
}


/* field 22 of /proc/<pid>/stat: the start time, clock ticks since boot */

static unsigned long
start_of(ngx_pid_t pid)
{
    int    n;
    char   path[64], buf[1024], *p;
    FILE  *f;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);

    f = fopen(path, "r");
    if (f == NULL) {
        return 0;
    }

    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n > 0 ? n : 0] = '\0';

    p = strrchr(buf, ')');

    for (n = 2; p && *p && n < 22; p++) {
        n += (*p == ' ');
    }

    return p ? strtoul(p, NULL, 10) : 0;
}


static void
end_holder(ngx_pid_t pid, int release)
{
    close(release);
    waitpid(pid, NULL, 0);
}


/* a worker killed while it held the sweep lock: the next one takes over */

static void
test_dead_lock_holder(void)
{
    int                    release;
    ngx_pid_t              holder;
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    new_table(&t, 8 * 1024 * 1024);
    stub_set_clock(2000000);

    ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, 9), 1764302000000,
                           500, 0);

    t.sh->sweep_lock = dead_pid();

    stub_set_clock(2000000 + 800);
    ok(ngx_presence_sweep(&t, ngx_pid) == 1,
       "the sweep lock of a dead process is taken over");
    ok(status_of(&t, 9, &st) && !st.online, "and the user expired");
    ok(t.sh->sweep_lock == 0, "and the lock released");

    ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, 9), 1764302001000,
                           500, 0);
    holder = live_holder(&t.sh->sweep_lock, &release);
    stub_set_clock(2000000 + 2000);
    ok(holder && ngx_presence_sweep(&t, ngx_pid) == 0,
       "a lock held by a live process is left alone");
    end_holder(holder, release);
    t.sh->sweep_lock = 0;
    ok(ngx_presence_sweep(&t, ngx_pid) == 1, "then the sweep goes on");
}


/*
 * Issue 10, item 14: a lock whose holder is alive but not one of ours is
 * taken over: pid 1 (EPERM to kill(pid, 0) when not root, alive when
 * root), or a pid reused by another process since its holder died (its
 * word: the pid of a live process, the rest of the word its dead
 * holder's).  A live holder's lock is not; once it exits, it is.
 */

static void
test_pid_lock_owner(void)
{
    int                 release, status;
    ngx_str_t           name = ngx_string("test");
    ngx_pid_t           a;
    ngx_atomic_t       *lockp;
    ngx_atomic_uint_t   word;

    /* in shared memory: the holders are other processes */
    lockp = mmap(NULL, sizeof(ngx_atomic_t), PROT_READ|PROT_WRITE,
                 MAP_SHARED|MAP_ANONYMOUS, -1, 0);

    *lockp = 1;
    ok(ngx_presence_pid_lock(lockp, ngx_pid, &test_log, &name, "test")
       && *lockp != 1,
       "a lock held by pid 1 (alive, not ours) is taken over");

    *lockp = 0;
    a = live_holder(lockp, &release);
    ok(a && ngx_presence_pid_lock(lockp, ngx_pid, &test_log, &name, "test")
            == 0,
       "a lock held by a live worker is left alone");

    /* a reused pid: another, older, process has the holder's pid now */
    word = *lockp;
    *lockp = (word & ~(ngx_atomic_uint_t) 0xffffffff) | (uint32_t) getppid();
    ok(ngx_presence_pid_lock(lockp, ngx_pid, &test_log, &name, "test")
       && *lockp != ((word & ~(ngx_atomic_uint_t) 0xffffffff)
                     | (uint32_t) getppid()),
       "a lock whose pid was reused by another process is taken over");

    *lockp = word;
    ok(ngx_presence_pid_lock(lockp, ngx_pid, &test_log, &name, "test") == 0,
       "the live worker's lock again: left alone");

    end_holder(a, release);
    ok(ngx_presence_pid_lock(lockp, ngx_pid, &test_log, &name, "test")
       && *lockp != word,
       "once it exited, its lock is taken over");

    ok(ngx_presence_pid_lock(lockp, ngx_pid, &test_log, &name, "test")
       && ngx_presence_pid_lock(lockp, ngx_pid, &test_log, &name, "test"),
       "the holder takes its own lock again");

    /*
     * A live process of another user, its start time right beside its
     * pid: kill() says EPERM (a worker runs unprivileged: so does the
     * child, when this runs as root).
     */

    word = ((ngx_atomic_uint_t) (start_of(1) & 0xffffffff) << 32) | 1;
    a = fork();

    if (a == 0) {
        if (getuid() == 0 && setuid(65534) == -1) {
            _exit(2);
        }

        ngx_pid = getpid();
        *lockp = word;

        _exit(ngx_presence_pid_lock(lockp, ngx_pid, &test_log, &name, "test")
              && *lockp != word ? 0 : 1);
    }

    waitpid(a, &status, 0);

    if (getuid() != 0 && kill(1, 0) == 0) {
        /* pid 1 is this user's (a container): no EPERM to be had */
        ok(1, "a lock of another user's live process (EPERM) is taken over "
              "# SKIP pid 1 is ours");

    } else {
        ok(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "a lock of another user's live process (EPERM) is taken over");
    }

    munmap((void *) lockp, sizeof(ngx_atomic_t));
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
    stub_set_clock(3000000);

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
 * Every change the table reports, counted per user id in shared memory:
 * each moves the user's seq by one, so seq equals the count (a process
 * killed between a change's CAS and its report leaves one short).
 */

#define COUNT_IDS  256

static uint32_t  *change_count;


static void
count_change(ngx_presence_table_t *table, ngx_presence_change_t *ch)
{
    if (ch->id < COUNT_IDS) {
        (void) __atomic_fetch_add(&change_count[ch->id], 1, __ATOMIC_SEQ_CST);
    }
}


static void
count_changes(ngx_presence_table_t *t)
{
    change_count = ngx_slab_calloc(NULL, COUNT_IDS * sizeof(uint32_t));
    t->changed = count_change;
}


/*
 * seq against the count of reports: none above it, and at most "kills"
 * short in all (0: seq equals it for every user)
 */

static ngx_uint_t
seq_counted(ngx_presence_table_t *t, ngx_uint_t kills)
{
    uint32_t    seq, id;
    ngx_uint_t  i, bad, short_by;

    bad = 0;
    short_by = 0;

    for (i = 0; i < t->sh->capacity; i++) {
        id = t->sh->nodes[i].id;

        if (id == 0 || id >= COUNT_IDS) {
            continue;
        }

        seq = (uint32_t) (t->sh->nodes[i].state >> 32);

        if (seq < change_count[id]) {
            printf("# user %u: seq %u, %u changes reported\n", id, seq,
                   change_count[id]);
            bad++;

        } else {
            short_by += seq - change_count[id];
        }
    }

    if (short_by > kills) {
        printf("# seq above the changes reported by %u in all\n",
               (unsigned) short_by);
        bad++;
    }

    return bad;
}


/*
 * Four processes heartbeat, hide and show the same 200 users at random
 * while the clock runs and every one of them sweeps.  Afterwards: seq
 * equals the changes reported (one short at most after a kill), the
 * online counter equals the visibly online, each id is in the table once.
 */

static void
check_table(ngx_presence_table_t *t, const char *when, ngx_uint_t gauge)
{
    char                   name[128];
    uint32_t               n, online;
    ngx_uint_t             i;
    ngx_presence_status_t  st;

    n = 0;
    online = 0;

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
    }

    snprintf(name, sizeof(name), "%s: 200 users, each in the table once",
             when);
    ok(n == 200 && t->sh->tracked == 200, name);
    snprintf(name, sizeof(name),
             "%s: seq moved by one for every change reported", when);
    ok(seq_counted(t, gauge ? 0 : 1) == 0, name);
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
        stub_set_clock(*clock);

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
    count_changes(&t);

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
    stub_set_clock(*clock);
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
    (void) ngx_atomic_cmp_set(test_pool->mutex.lock, victim, 0);
    respawned(&t, 5);

    ngx_pid = getpid();
    random_ops(&t, clock, 100000, 1);
    stub_set_clock(*clock);
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
    stub_set_clock(2000000);

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
    ok(ngx_presence_warm(&t, 12, 1764300000000, 1, 0) == NGX_OK, "warm user 12");
    ok(status_of(&t, 12, &st) && !st.online && st.seq == 0
       && st.last_seen == 1764300000000 && st.dirty == NGX_PRESENCE_DIRTY,
       "offline, last seen from the store, marked (the store said online)");
    ok(ngx_presence_warm(&t, 11, 1764300000000, 0, 0) == NGX_OK
       && status_of(&t, 11, &st) && st.last_seen == 1764302000600,
       "a user seen since keeps its own last_seen");
}

/*
 * The wheel's invariants, for a table no process works on: no node twice
 * in the wheel (in two buckets or twice in one, so no cycle either), no
 * link out of the table, every active node queued, every node of a bucket
 * queued; a queued node in no bucket is one a killed process lost, left to
 * the audit ("lost" counts them).  With "now", every user in the wheel
 * whose deadline passed by then must be offline (the caller swept two
 * ticks past it), but for those marked in "spared": a node a process was
 * killed with in hand may wait in a bucket for a turn of the wheel.
 * Returns the number of violations, each printed.
 */

#define WHEEL_SHOWN  8

static ngx_uint_t
wheel_check(ngx_presence_table_t *t, const char *when, ngx_msec_t now,
    uint8_t *spared, ngx_uint_t *lost)
{
    uint8_t              *seen;
    uint32_t              slot, steps, cap, fl, dl, tick;
    uint64_t              s;
    ngx_uint_t            b, i, bad;
    ngx_presence_node_t  *nodes;

    cap = t->sh->capacity;
    nodes = t->sh->nodes;
    seen = calloc(cap, 1);
    bad = 0;
    *lost = 0;

#define wheel_bad(...)                                                        \
    do {                                                                      \
        if (bad++ < WHEEL_SHOWN) {                                            \
            printf("# %s: ", when);                                           \
            printf(__VA_ARGS__);                                              \
            printf("\n");                                                     \
        }                                                                     \
    } while (0)

    for (b = 0; b < NGX_PRESENCE_WHEEL; b++) {
        slot = t->sh->wheel[b];

        for (steps = 0; slot; steps++) {
            if (slot > cap) {
                wheel_bad("bucket %u: link %u out of the table",
                          (unsigned) b, slot);
                break;
            }

            if (seen[slot - 1]++) {
                wheel_bad("bucket %u: user %u met again after %u links "
                          "(next %u, queued %u)%s", (unsigned) b,
                          nodes[slot - 1].id, steps, nodes[slot - 1].next,
                          nodes[slot - 1].queued,
                          nodes[slot - 1].next == slot ? ": points to itself"
                                                       : "");
                break;
            }

            slot = nodes[slot - 1].next;
        }
    }

    tick = (uint32_t) (now / NGX_PRESENCE_TICK) & NGX_PRESENCE_DEADLINE_MASK;

    for (i = 0; i < cap; i++) {
        if (nodes[i].id == 0) {
            continue;
        }

        s = nodes[i].state;
        fl = (uint32_t) s & 0xff;
        dl = (uint32_t) (s >> 8) & NGX_PRESENCE_DEADLINE_MASK;

        if ((fl & NGX_PRESENCE_ACTIVE) && !(fl & NGX_PRESENCE_QUEUED)) {
            wheel_bad("user %u active but not queued", nodes[i].id);
        }

        if (seen[i] && !(fl & NGX_PRESENCE_QUEUED)) {
            wheel_bad("user %u in the wheel but not queued", nodes[i].id);
        }

        if (!seen[i] && (fl & NGX_PRESENCE_QUEUED)) {
            (*lost)++;
        }

        if (spared && !(fl & NGX_PRESENCE_QUEUED)) {
            spared[i] = 0;
        }

        if (now && seen[i] && (fl & NGX_PRESENCE_ACTIVE)
            && !(spared && spared[i])
            && ((int32_t) ((tick - dl) << 8)) >= 0)
        {
            wheel_bad("user %u: deadline %u passed by tick %u, still active "
                      "two ticks after (queued %u, swept to %lu)",
                      nodes[i].id, dl, tick, nodes[i].queued,
                      (unsigned long) t->sh->swept);
        }
    }

#undef wheel_bad

    free(seen);

    return bad;
}


/* sweeps up to "ms" in a child, given "limit" ms to return; 0: it hung */

static ngx_uint_t
sweep_bounded(ngx_presence_table_t *t, ngx_msec_t ms, ngx_msec_t limit)
{
    ngx_pid_t   pid;
    ngx_msec_t  waited;

    pid = fork();

    if (pid == 0) {
        ngx_pid = getpid();
        sweep_until(t, ms);
        _exit(0);
    }

    for (waited = 0; waited < limit; waited += 5) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            stub_set_clock(ms);
            return 1;
        }

        usleep(5000);
    }

    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    stub_set_clock(ms);

    return 0;
}


/*
 * Issue 10, item 1: the audit visits a user between the CAS of its
 * heartbeat that set QUEUED and the push.  A user never seen (queued 0)
 * and one offline for longer than a turn of the wheel (queued old) look
 * lost then; the node must still be pushed exactly once, and the sweep
 * after its deadline must return.
 */

static ngx_presence_table_t  *race_table;
static ngx_uint_t             race_armed;


static void
race_audit(ngx_uint_t point, uint32_t slot)
{
    if (point != NGX_PRESENCE_HOOK_QUEUED || !race_armed) {
        return;
    }

    race_armed = 0;

    /* a sweep whose audit slice starts at this very slot */
    race_table->sh->audit = slot;
    (void) ngx_presence_sweep(race_table, ngx_pid);
}


static void
test_audit_race(void)
{
    char                    name[160];
    uint32_t                slot;
    ngx_msec_t              now;
    ngx_uint_t              lost, pass;
    ngx_presence_node_t    *node;
    ngx_presence_table_t    t;
    ngx_presence_status_t   st;
    static const char      *cases[] = { "first heartbeat",
                                        "back after 8 minutes offline" };

    stub_set_clock(1000000);
    new_table(&t, 8 * 1024 * 1024);

    node = ngx_presence_table_get(&t, 21);
    slot = node - t.sh->nodes;

    for (pass = 0; pass < 2; pass++) {

        if (pass == 1) {
            /* offline for longer than a turn of the wheel and its grace */
            stub_set_clock(ngx_current_msec + NGX_PRESENCE_TICK
                                         * (NGX_PRESENCE_WHEEL + 100));
        }

        now = ngx_current_msec;

        race_table = &t;
        race_armed = 1;
        ngx_presence_table_hook = race_audit;

        ngx_presence_heartbeat(&t, node, 1764301000000 + now, 1000, 0);

        ngx_presence_table_hook = NULL;

        snprintf(name, sizeof(name), "%s: the audit ran between the "
                 "heartbeat's CAS and its push", cases[pass]);
        ok(!race_armed, name);

        snprintf(name, sizeof(name), "%s: the user is in the wheel once, "
                 "no cycle", cases[pass]);
        ok(wheel_check(&t, cases[pass], 0, NULL, &lost) == 0 && lost == 0,
           name);

        snprintf(name, sizeof(name), "%s: its wheel link does not point to "
                 "itself", cases[pass]);
        ok(t.sh->nodes[slot].next != slot + 1, name);

        snprintf(name, sizeof(name), "%s: the sweep after its deadline "
                 "returns", cases[pass]);
        ok(sweep_bounded(&t, now + 1500, 3000), name);

        snprintf(name, sizeof(name), "%s: and the user went offline",
                 cases[pass]);
        ok(status_of(&t, 21, &st) && !st.online && st.seq == 2 * pass + 2,
           name);

        /* a hung sweeper was killed: its lock is a dead process's */
    }
}


/*
 * The audit of a process whose clock is a turn of the wheel (and its
 * grace) ahead of a heartbeat's: the heartbeat read its clock before a
 * stall (or the clock jumped, as the stress test's ticker makes it), so
 * the "queued" it wrote looks old to the audit.  Found by the stress test
 * (a user linked twice, "points to itself"): the audit took the node
 * between the heartbeat's CAS and its push, expired it, and the heartbeat
 * pushed it all the same.  Two interleavings, each driven here with a
 * forked auditor in another process slot:
 *
 *   1. the audit between the heartbeat's CAS and its push (the node is
 *      in the heartbeat's process's hand);
 *   2. a push whose "swept" was read before the auditor's sweep jumped:
 *      it lands in a bucket taken already (and hints "late"), and the
 *      audit of that same sweep meets it after the heartbeat let go of
 *      it and moved on to another user.
 */

static int                    skew_pipe[2][2];
static ngx_uint_t             skew_point;
static uint32_t               skew_slot;
static ngx_msec_t             skew_clock;
static ngx_pid_t              skew_child;


static void
skew_child_hook(ngx_uint_t point, uint32_t slot)
{
    char  c;

    if (point == NGX_PRESENCE_HOOK_AUDIT && slot == skew_slot) {
        /* the node seen lost: the heartbeat finishes meanwhile */
        c = 'a';
        (void) !write(skew_pipe[0][1], &c, 1);
        (void) !read(skew_pipe[1][0], &c, 1);
    }
}


static void
skew_hook(ngx_uint_t point, uint32_t slot)
{
    char  c;

    if (point != skew_point || slot != skew_slot || skew_child) {
        return;
    }

    skew_child = fork();

    if (skew_child == 0) {
        /* another worker, its clock a turn of the wheel ahead */
        ngx_pid = getpid();
        ngx_process_slot = 1;
        stub_set_clock(skew_clock);
        ngx_presence_table_hook = (skew_point == NGX_PRESENCE_HOOK_PUSH)
                                  ? skew_child_hook : NULL;
        race_table->sh->audit = skew_slot;
        (void) ngx_presence_sweep(race_table, ngx_pid);
        _exit(0);
    }

    if (skew_point == NGX_PRESENCE_HOOK_QUEUED) {
        /* the whole sweep, audit included, between the CAS and the push */
        waitpid(skew_child, NULL, 0);

    } else {
        /* its buckets taken, at the audit of this node */
        (void) !read(skew_pipe[0][0], &c, 1);
    }
}


static void
test_audit_skew(void)
{
    char                    c, name[200];
    ngx_uint_t              pass, lost;
    ngx_msec_t              now;
    ngx_presence_node_t    *node;
    ngx_presence_table_t    t;
    ngx_presence_status_t   st;
    static const char      *cases[] = {
        "a heartbeat between its CAS and its push",
        "a push into a bucket the sweep had taken, the pusher gone on" };

    for (pass = 0; pass < 2; pass++) {
        stub_set_clock(3000000);
        new_table(&t, 8 * 1024 * 1024);

        if (pipe(skew_pipe[0]) != 0 || pipe(skew_pipe[1]) != 0) {
            printf("Bail out! pipe\n");
            exit(1);
        }

        now = ngx_current_msec;
        node = ngx_presence_table_get(&t, 51);
        skew_slot = node - t.sh->nodes;
        skew_point = pass ? NGX_PRESENCE_HOOK_PUSH : NGX_PRESENCE_HOOK_QUEUED;
        skew_clock = now + NGX_PRESENCE_TICK * (NGX_PRESENCE_WHEEL + 40);
        skew_child = 0;
        race_table = &t;
        ngx_presence_table_hook = skew_hook;

        ngx_presence_heartbeat(&t, node, 1764303000000, 1000, 0);

        ngx_presence_table_hook = NULL;

        if (pass == 1) {
            /* the heartbeat's process goes on to another user */
            (void) ngx_presence_table_get(&t, 52);
            c = 'h';
            (void) !write(skew_pipe[1][1], &c, 1);
            waitpid(skew_child, NULL, 0);
        }

        snprintf(name, sizeof(name), "skewed audit, %s: it ran", cases[pass]);
        ok(skew_child > 0, name);

        snprintf(name, sizeof(name), "skewed audit, %s: the user is in the "
                 "wheel once and queued", cases[pass]);
        ok(wheel_check(&t, cases[pass], 0, NULL, &lost) == 0 && lost == 0,
           name);

        /* a heartbeat more: a node taken by the audit would be pushed */
        node = ngx_presence_table_get(&t, 51);
        ngx_presence_heartbeat(&t, node, 1764303000500, 1000, 0);

        snprintf(name, sizeof(name), "skewed audit, %s: still once after "
                 "the next heartbeat", cases[pass]);
        ok(wheel_check(&t, cases[pass], 0, NULL, &lost) == 0 && lost == 0,
           name);

        snprintf(name, sizeof(name), "skewed audit, %s: the sweeps past "
                 "its deadline return, the user offline", cases[pass]);
        ok(sweep_bounded(&t, skew_clock + 1500, 5000)
           && status_of(&t, 51, &st) && !st.online && st.seq == 2, name);

        close(skew_pipe[0][0]);
        close(skew_pipe[0][1]);
        close(skew_pipe[1][0]);
        close(skew_pipe[1][1]);
    }
}


/*
 * The sweep's safety net: a node linked to itself in its bucket (what a
 * double push left) does not make the sweep loop for ever.
 */

static void
test_broken_bucket(void)
{
    uint32_t                slot;
    ngx_presence_node_t    *node;
    ngx_presence_table_t    t;
    ngx_presence_status_t   st;

    stub_set_clock(6000000);
    new_table(&t, 8 * 1024 * 1024);

    node = ngx_presence_table_get(&t, 31);
    ngx_presence_heartbeat(&t, node, 1764306000000, 1000, 0);

    slot = node - t.sh->nodes;
    node->next = slot + 1;

    ok(sweep_bounded(&t, 6000000 + 1500, 3000),
       "a node linked to itself in its bucket: the sweep returns");
    ok(status_of(&t, 31, &st) && !st.online && st.seq == 2,
       "and the user went offline");
}


/*
 * Issue 10, item 1: a randomized stress of the wheel.  Rounds of a few
 * hundred ms: four processes heartbeat (short and long timeouts), hide,
 * show and sweep (so audit) random users of a table small enough for
 * every sweep to audit all of it, with random preemption at the table's
 * hooks and clock jumps over a turn of the wheel (so that offline users'
 * "queued" is old, as the audit reads it); one of them is killed with
 * SIGKILL at a random instant.  After each round, the invariants of
 * wheel_check(), then a sweep two ticks on and the deadlines.  At the end,
 * past every timeout and the audit's grace: no one online, no one lost.
 * PRESENCE_STRESS_SECONDS (default 12) and PRESENCE_STRESS_SEED.
 */

#define STRESS_PROCS    4
#define STRESS_USERS    200
#define STRESS_LONG     500000          /* ms, more than a turn of wheel */

typedef struct {
    volatile ngx_msec_t     clock;
    volatile ngx_uint_t     stop;
    volatile uint32_t       hand[STRESS_PROCS];   /* slot + 1 at a hook */
} stress_shared_t;


static stress_shared_t  *stress;


static void
stress_hook(ngx_uint_t point, uint32_t slot)
{
    if (point != NGX_PRESENCE_HOOK_TAKEN) {
        stress->hand[ngx_process_slot] = slot + 1;
    }

    /* most often where a heartbeat holds a node it has yet to push */
    switch (random() % (point == NGX_PRESENCE_HOOK_QUEUED ? 3 : 8)) {
    case 0:
        sched_yield();
        break;
    case 1:
        usleep(1 + random() % 300);
        break;
    default:
        break;
    }
}


static void
stress_ops(ngx_presence_table_t *t, stress_shared_t *ss, ngx_uint_t ticker)
{
    uint32_t              id;
    ngx_uint_t            r;
    ngx_msec_t            timeout;
    ngx_presence_node_t  *node;

    while (!ss->stop) {
        stub_set_clock(ss->clock);

        id = 1 + random() % STRESS_USERS;
        node = ngx_presence_table_get(t, id);
        r = random() % 100;
        timeout = (random() % 10) ? 200 + random() % 300 : STRESS_LONG;

        if (r < 8) {
            ngx_presence_hide(t, node, 1764305000000 + ss->clock);

        } else if (r < 16) {
            ngx_presence_heartbeat(t, node, 1764305000000 + ss->clock,
                                   timeout, NGX_PRESENCE_SHOW);

        } else if (r < 36) {
            (void) ngx_presence_sweep(t, ngx_pid);

            if (ticker) {
                ss->clock += 7;

                if (random() % 100 == 0) {
                    ss->clock += NGX_PRESENCE_TICK
                                 * (NGX_PRESENCE_WHEEL + 40);
                }
            }

        } else {
            ngx_presence_heartbeat(t, node, 1764305000000 + ss->clock,
                                   timeout, 0);
        }
    }
}


static void
test_stress(void)
{
    char                   name[256];
    char                  *e;
    time_t                 start;
    uint8_t               *spared;
    ngx_pid_t              pids[STRESS_PROCS];
    ngx_uint_t             p, victim, round, bad, hung, lost, left, seconds;
    ngx_uint_t             waited;
    unsigned long          seed;
    stress_shared_t       *ss;
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    e = getenv("PRESENCE_STRESS_SECONDS");
    seconds = e ? (ngx_uint_t) atoi(e) : 12;
    e = getenv("PRESENCE_STRESS_SEED");
    seed = e ? strtoul(e, NULL, 10) : (unsigned long) time(NULL) ^ getpid();

    printf("# wheel stress: %u s, seed %lu (PRESENCE_STRESS_SEED=%lu "
           "replays it), sweep budget %s\n", (unsigned) seconds, seed, seed,
           (seed & 1) ? "1 ns" : "none");

    /*
     * Every sweep audits the whole table (NGX_PRESENCE_AUDIT_MIN slots),
     * and the users fit without pressure (no eviction, no slot reused:
     * the wheel is what is stressed, and seq is counted per user id).
     */
    new_table(&t, 272 * 1024);
    count_changes(&t);

    /* odd seeds: sweeps stop at a budget of 1 ns (64 links, a bucket) */
    t.sweep_budget = seed & 1;

    if (t.sh->max_users < STRESS_USERS * 10 / 8 || t.sh->capacity > 1024) {
        printf("Bail out! stress table of %u slots\n", t.sh->capacity);
        exit(1);
    }

    ss = ngx_slab_calloc(NULL, sizeof(stress_shared_t));
    ss->clock = 5000000;
    stress = ss;
    spared = calloc(t.sh->capacity, 1);

    srandom((unsigned) seed);
    start = time(NULL);
    bad = 0;
    hung = 0;

    for (round = 0;
         !bad && !hung && (round < 3 || time(NULL) - start < (time_t) seconds);
         round++)
    {
        ss->stop = 0;
        victim = random() % STRESS_PROCS;

        for (p = 0; p < STRESS_PROCS; p++) {
            long  child_seed = random();

            pids[p] = fork();

            if (pids[p] == 0) {
                ngx_pid = getpid();
                ngx_process_slot = (ngx_int_t) p;
                srandom((unsigned) child_seed);
                ngx_presence_table_hook = stress_hook;
                stress_ops(&t, ss, p == 0);
                _exit(0);
            }
        }

        usleep(random() % 300000);
        kill(pids[victim], SIGKILL);
        waitpid(pids[victim], NULL, 0);

        /* the slab mutex of a dead holder, as nginx's master frees it */
        (void) ngx_atomic_cmp_set(test_pool->mutex.lock, pids[victim], 0);
        pids[victim] = 0;

        /* its slot's next process lets go of what it had in hand */
        respawned(&t, victim);

        if (ss->hand[victim]) {
            spared[ss->hand[victim] - 1] = 1;
        }

        usleep(random() % 100000);
        ss->stop = 1;

        for (waited = 0, left = STRESS_PROCS - 1; left && waited < 3000;
             waited += 5)
        {
            usleep(5000);

            for (p = 0; p < STRESS_PROCS; p++) {
                if (pids[p] && waitpid(pids[p], NULL, WNOHANG) == pids[p]) {
                    pids[p] = 0;
                    left--;
                }
            }
        }

        for (p = 0; p < STRESS_PROCS; p++) {
            if (pids[p]) {
                printf("# round %u: a process still busy 3 s after the stop "
                       "(a sweep that never returns?)\n", (unsigned) round);
                hung++;
                kill(pids[p], SIGKILL);
                waitpid(pids[p], NULL, 0);
                (void) ngx_atomic_cmp_set(test_pool->mutex.lock, pids[p], 0);
            }
        }

        ngx_pid = getpid();

        /*
         * The check's clock: never behind a sweep of the round (a process
         * preempted for long under load may have swept with a clock that
         * the ticker has since moved past and back from: the sweep never
         * goes backwards, and "two ticks after" counts from it).
         */
        if ((t.sh->swept + 1) * NGX_PRESENCE_TICK > ss->clock) {
            ss->clock = (t.sh->swept + 1) * NGX_PRESENCE_TICK;
        }

        stub_set_clock(ss->clock);

        snprintf(name, sizeof(name), "round %u, seed %lu", (unsigned) round,
                 seed);
        bad += wheel_check(&t, name, 0, NULL, &lost);

        if (!sweep_bounded(&t, ss->clock + 2 * NGX_PRESENCE_TICK, 3000)) {
            printf("# round %u: the check's sweep did not return\n",
                   (unsigned) round);
            hung++;
        }

        bad += wheel_check(&t, name, ss->clock, spared, &lost);
        /* a victim each round, and those hung */
        bad += seq_counted(&t, round + 1 + hung);
        ss->clock = ngx_current_msec;
    }

    snprintf(name, sizeof(name), "wheel stress, %u rounds: no process hung "
             "(seed %lu)", (unsigned) round, seed);
    ok(!hung, name);
    snprintf(name, sizeof(name), "wheel stress: after every round no node "
             "twice in the wheel, no cycle, active nodes queued once or lost "
             "to the audit, passed deadlines offline within two ticks, seq "
             "moved once a change reported (seed %lu)", seed);
    ok(!bad, name);

    /* past every timeout, a turn of the wheel and the audit's grace */
    ok(sweep_bounded(&t, ss->clock + STRESS_LONG + 1000 + NGX_PRESENCE_TICK
                         * (NGX_PRESENCE_WHEEL + 20 + 4), 10000),
       "wheel stress: the final sweeps return");

    lost = 0;
    bad = wheel_check(&t, "after the stress", ngx_current_msec, NULL, &lost);
    bad += seq_counted(&t, round + hung);
    free(spared);

    for (p = 1, left = 0; p <= STRESS_USERS; p++) {
        left += (status_of(&t, p, &st) && st.online);
    }

    snprintf(name, sizeof(name), "wheel stress: in the end no one online, "
             "no one lost off the wheel (%u online, %u lost, seed %lu)",
             (unsigned) left, (unsigned) lost, seed);
    ok(!bad && !left && !lost, name);
}


/*
 * Item 2 of issue 10: the zone must not stay full of users long gone.
 * Uses nothing the table did not have before, so it runs on the old code
 * too (and fails there: every new user is refused).
 */

static void
test_full_of_gone_users(void)
{
    uint32_t               id, in, refused, old, online;
    ngx_presence_node_t   *node;
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    /* the clock first: a new table's wheel starts at the current tick */
    stub_set_clock(5000000);
    new_table(&t, 2 * 1024 * 1024);
    t.max_users = 1000;
    ngx_presence_table_limit(&t);

    in = 0;
    for (id = 1; id <= 1000; id++) {
        node = ngx_presence_table_get(&t, id);
        if (node) {
            ngx_presence_heartbeat(&t, node, ngx_presence_now_ms(), 300, 0);
            in++;
        }
    }

    ok(in == 1000, "gone: max_users=1000, 1000 users come in");
    ok(ngx_presence_table_get(&t, 5000) == NULL,
       "gone: while they are all online, the 1001st is refused");

    sweep_until(&t, ngx_current_msec + 1000);
    ok(t.sh->online == 0, "gone: then they all go offline");

    refused = 0;
    for (id = 1001; id <= 2000; id++) {
        node = ngx_presence_table_get(&t, id);
        if (node == NULL) {
            refused++;
            continue;
        }

        ngx_presence_heartbeat(&t, node, ngx_presence_now_ms(), 300, 0);
    }

    ok(refused == 0, "gone: 1000 new users all come in, none refused");

    old = 0;
    online = 0;
    for (id = 1; id <= 2000; id++) {
        if (status_of(&t, id, &st)) {
            old += (id <= 1000);
            online += (id > 1000 && st.online);
        }
    }

    ok(old == 0 && online == 1000 && t.sh->tracked == 1000,
       "gone: the old ones made room, the new ones are online");
}


/* a full zone makes room with the users offline longest */

static void
test_oldest_first(void)
{
    uint32_t               id, refused, old, recent;
    ngx_presence_node_t   *node;
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    new_table(&t, 2 * 1024 * 1024);
    t.max_users = 1000;
    ngx_presence_table_limit(&t);
    stub_set_clock(5500000);

    /* 500 last seen an hour before the other 500 */
    for (id = 1; id <= 1000; id++) {
        ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, id),
                               1764305000000 + (id > 500) * 3600000, 300, 0);
    }

    sweep_until(&t, ngx_current_msec + 1000);

    refused = 0;
    for (id = 2001; id <= 2300; id++) {
        node = ngx_presence_table_get(&t, id);
        if (node == NULL) {
            refused++;
            continue;
        }

        ngx_presence_heartbeat(&t, node, 1764309000000, 60000, 0);
    }

    old = 0;
    recent = 0;
    for (id = 1; id <= 1000; id++) {
        if (status_of(&t, id, &st)) {
            old += (id <= 500);
            recent += (id > 500);
        }
    }

    ok(refused == 0 && old == 200 && recent == 500,
       "oldest first: 300 new users took the places of 300 of the 500 "
       "offline longest");
}


/* every live node once, found by a lookup at its own slot; tracked agrees */

static ngx_uint_t
chains_intact(ngx_presence_table_t *t, uint32_t max_id, uint32_t slack)
{
    uint32_t              i, live, id;
    u_char               *seen;
    ngx_presence_node_t  *node;

    seen = calloc(max_id + 1, 1);
    live = 0;

    for (i = 0; i < t->sh->capacity; i++) {
        node = &t->sh->nodes[i];
        id = node->id;

        if (id == 0 || (node->state & NGX_PRESENCE_RECLAIM)) {
            continue;
        }

        live++;

        if (id > max_id || seen[id]++
            || ngx_presence_table_lookup(t, id) != node)
        {
            printf("# user %u: twice, or not found at slot %u\n", id, i);
            free(seen);
            return 0;
        }
    }

    free(seen);

    if (live > t->sh->tracked + slack || live + slack < t->sh->tracked) {
        printf("# %u live nodes, tracked %lu\n", live,
               (unsigned long) t->sh->tracked);
        return 0;
    }

    return 1;
}


/* a table of about 2500 slots, 2000 users: long probe chains */

static void
small_table(ngx_presence_table_t *t)
{
    new_table(t, 2 * (sizeof(ngx_presence_shctx_t) + 8 * 4096
                      + 2560 * sizeof(ngx_presence_node_t)
                        * NGX_PRESENCE_EXTRA_SHARE
                        / (NGX_PRESENCE_EXTRA_SHARE - 1)
                      + 2560 / 32 * 3 / 2 * sizeof(ngx_presence_name_t)));
}


/*
 * A pressed table of a million slots owes 1/50 of them to the reclaim
 * scan each tick, more than one chunk: the tick does a chunk, and
 * ngx_presence_sweep_more() the rest, a chunk a call, until the share is
 * done; each call is timed for the metrics, the tick counted once.
 */

static void
test_scan_chunks(void)
{
    uint32_t               id, share, from, calls;
    ngx_presence_table_t   t;

    new_table(&t, 2 * (sizeof(ngx_presence_shctx_t) + 8 * 4096
                       + 1000000 * sizeof(ngx_presence_node_t)
                         * NGX_PRESENCE_EXTRA_SHARE
                         / (NGX_PRESENCE_EXTRA_SHARE - 1)
                       + 1000000 / 32 * 3 / 2 * sizeof(ngx_presence_name_t)));
    stub_set_clock(7000000);

    /* held, never online: the pressed pace is the whole 1/50 a tick */
    for (id = 1; id <= t.sh->max_users * 19 / 20; id++) {
        (void) ngx_presence_table_get(&t, id);
    }

    share = t.sh->capacity / 50;
    from = t.sh->scan;

    stub_set_clock(ngx_current_msec + NGX_PRESENCE_TICK);
    (void) ngx_presence_sweep(&t, ngx_pid);

    ok(t.sh->evict_age != (uint64_t) -1 && share > 8192
       && t.sh->scan == from + 8192 && t.sh->scan_debt == share - 8192
       && t.sh->sweep_ticks == 1 && t.sh->sweep_max_ns > 0,
       "scan chunks: a pressed tick scans one chunk, the rest is owed");

    for (calls = 0; ngx_presence_sweep_more(&t, ngx_pid); calls++) {
        /* void */
    }

    ok(t.sh->scan == from + share && t.sh->scan_debt == 0
       && calls == (share - 8192 + 8191) / 8192 - 1
       && t.sh->sweep_ticks == 1
       && ngx_presence_sweep_more(&t, ngx_pid) == 0,
       "scan chunks: the rest goes a chunk a call, the tick's share in all");

    printf("# %u slots, a share of %u, %u more calls\n", t.sh->capacity,
           share, calls + 1);

    /* all online: pressed still, but at the usual pace, 1/600 a tick */
    for (id = 1; id <= t.sh->max_users * 19 / 20; id++) {
        ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, id),
                               ngx_presence_now_ms(), 600000, 0);
    }

    from = t.sh->scan;
    stub_set_clock(ngx_current_msec + NGX_PRESENCE_TICK);
    (void) ngx_presence_sweep(&t, ngx_pid);

    ok(t.sh->evict_age != (uint64_t) -1 && t.sh->scan_debt == 0
       && (t.sh->scan - from + t.sh->capacity) % t.sh->capacity
          == t.sh->capacity / 600,
       "scan chunks: a pressed zone of online users, the usual pace");
}


static void
test_retain(void)
{
    uint32_t               id, n;
    ngx_presence_node_t   *node;
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    small_table(&t);
    t.retain = 1000;
    t.stores = NGX_PRESENCE_DIRTY;
    stub_set_clock(6000000);

    for (id = 1; id <= 50; id++) {
        ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, id),
                               ngx_presence_now_ms(), 300, 0);
    }

    sweep_until(&t, ngx_current_msec + 3000);
    ok(t.sh->online == 0 && t.sh->tracked == 50,
       "retain: offline past presence_retain, but dirty: all kept");

    for (id = 1; id <= 25; id++) {
        node = ngx_presence_table_lookup(&t, id);
        ngx_presence_read(node, &st);
        (void) ngx_presence_clean(node, st.seq, NGX_PRESENCE_DIRTY);
    }

    sweep_until(&t, ngx_current_msec + 1000);

    n = 0;
    for (id = 1; id <= 50; id++) {
        n += ((status_of(&t, id, &st) != 0) == (id > 25));
    }

    ok(n == 50 && t.sh->tracked == 25 && t.sh->reclaimed == 25,
       "retain: the 25 clean ones are reclaimed, tracked counts down");

    node = ngx_presence_table_get(&t, 3);
    ngx_presence_heartbeat(&t, node, ngx_presence_now_ms(), 300, 0);
    ok(status_of(&t, 3, &st) && st.online && st.seq > 2
       && t.sh->tracked == 26,
       "retain: a reclaimed user comes back online, seq above the 2 it "
       "left with");

    /* reclaimed, no one inserts: the tombstones go, the slots are empty */
    sweep_until(&t, ngx_current_msec + 2000);

    for (id = 1; id <= 50; id++) {
        node = ngx_presence_table_lookup(&t, id);
        if (node) {
            ngx_presence_read(node, &st);
            (void) ngx_presence_clean(node, st.seq, NGX_PRESENCE_DIRTY);
        }
    }

    (void) ngx_presence_table_lookup(&t, 999999);      /* unpins */
    sweep_until(&t, ngx_current_msec + 3000);

    n = 0;
    for (id = 0; id < t.sh->capacity; id++) {
        n += (t.sh->nodes[id].id != 0);
    }

    ok(n == 0 && t.sh->tracked == 0 && chains_intact(&t, 1000, 0),
       "retain: every tombstone emptied once all are gone");

    /* the warm start: a user offline for longer stays in the stores */
    ok(ngx_presence_warm(&t, 60, ngx_presence_now_ms() - 1500, 0, 0)
       == NGX_OK && ngx_presence_table_lookup(&t, 60) == NULL,
       "retain: the warm start leaves out a user seen before the window");
    ok(ngx_presence_warm(&t, 61, ngx_presence_now_ms() - 1500, 1, 0)
       == NGX_OK && status_of(&t, 61, &st) && st.dirty == NGX_PRESENCE_DIRTY,
       "retain: but not one a store thinks online (it is told offline)");
    ok(ngx_presence_warm(&t, 62, ngx_presence_now_ms() - 500, 0, 0)
       == NGX_OK && status_of(&t, 62, &st) && !st.online,
       "retain: and loads one seen within the window");
}


/* random heartbeats, hides and sweeps of 20000 ids in 2000 places */

static void
test_tombstones(void)
{
    uint32_t              id, round, ops, bad, refused, found;
    ngx_presence_node_t  *node;
    ngx_presence_table_t  t;

    small_table(&t);
    t.retain = 700;
    stub_set_clock(7000000);
    srandom(7);

    bad = 0;
    refused = 0;
    found = 0;

    for (round = 0; round < 200; round++) {
        for (ops = 0; ops < 200; ops++) {
            id = 1 + random() % 20000;

            node = ngx_presence_table_get(&t, id);
            if (node == NULL) {
                refused++;
                continue;
            }

            if (random() % 10 == 0) {
                ngx_presence_hide(&t, node, ngx_presence_now_ms());

            } else {
                ngx_presence_heartbeat(&t, node, ngx_presence_now_ms(), 200,
                                       random() % 5 == 0);
            }

            found += (ngx_presence_table_lookup(&t, id) == node);
        }

        sweep_until(&t, ngx_current_msec + 100);

        if (!chains_intact(&t, 20000, 0)) {
            bad++;
        }
    }

    ok(bad == 0, "tombstones: after every round each user once, found");
    ok(refused == 0 && found == 200 * 200,
       "tombstones: no user refused, each found right after");
    ok(t.sh->reclaimed > 4 * t.sh->capacity,
       "tombstones: slots were reclaimed and reused many times over");
    printf("# %lu reclaimed in %u slots\n", (unsigned long) t.sh->reclaimed,
           t.sh->capacity);
}


/*
 * A worker found a node and was preempted; meanwhile the user was
 * reclaimed and many others came in.  Its heartbeat reaches its own user,
 * and no one else's node.
 */

static void
test_stale_node(void)
{
    uint32_t               id, wrong;
    ngx_presence_node_t   *node, *stale;
    ngx_presence_table_t   t;
    ngx_presence_status_t  st;

    small_table(&t);
    t.retain = 1000;
    stub_set_clock(8000000);

    ngx_presence_heartbeat(&t, ngx_presence_table_get(&t, 1), 1764308000000,
                           300, 0);
    sweep_until(&t, ngx_current_msec + 500);

    /* worker 0 looks user 1 up, and stops there */
    ngx_process_slot = 0;
    stale = ngx_presence_table_lookup(&t, 1);

    /* worker 1 sweeps: user 1 goes; 2000 others come (some on its chain) */
    ngx_process_slot = 1;
    sweep_until(&t, ngx_current_msec + 3000);
    ok(ngx_presence_table_lookup(&t, 1) == NULL && t.sh->tracked == 0,
       "stale: user 1 was reclaimed");

    for (id = 2; id <= 2001; id++) {
        node = ngx_presence_table_get(&t, id);
        ngx_presence_heartbeat(&t, node, 1764308005000, 60000, 0);
    }

    ok(stale->id == 1 && (stale->state & NGX_PRESENCE_RECLAIM),
       "stale: its pinned tombstone was not given to another user");

    /* worker 0 goes on */
    ngx_process_slot = 0;
    ngx_presence_heartbeat(&t, stale, 1764308006000, 60000, 0);
    ngx_process_slot = 1;

    ok(status_of(&t, 1, &st) && st.online && st.last_seen == 1764308006000,
       "stale: the heartbeat made user 1 online");

    wrong = 0;
    for (id = 2; id <= 2001; id++) {
        wrong += !(status_of(&t, id, &st) && st.online && st.seq == 1
                   && st.last_seen == 1764308005000);
    }

    ok(wrong == 0 && chains_intact(&t, 3000, 0),
       "stale: no other user's node was touched");

    ngx_process_slot = 0;
}


/*
 * Four processes on 6000 ids in 2000 places, with a short retain, and one
 * more killed with SIGKILL at a random instant: the chains hold.  Each of
 * them moves the clock on, so that users time out, go idle, and are
 * reclaimed or evicted, while others come.
 */

static ngx_uint_t
room_for_all(ngx_presence_table_t *t, uint32_t from, uint32_t slack)
{
    uint32_t              id, refused;
    ngx_presence_node_t  *node;

    refused = 0;

    for (id = from; id < from + t->sh->max_users; id++) {
        node = ngx_presence_table_get(t, id);
        if (node == NULL) {
            refused++;
            continue;
        }

        ngx_presence_heartbeat(t, node, ngx_presence_now_ms(), 100, 0);
    }

    sweep_until(t, ngx_current_msec + 500);

    if (refused > slack) {
        printf("# %u of %u refused\n", refused, t->sh->max_users);
        return 0;
    }

    return 1;
}


static void
reclaim_ops(ngx_presence_table_t *t, volatile ngx_msec_t *clock,
    ngx_uint_t count, ngx_uint_t ticker, uint32_t *refused)
{
    uint32_t              id;
    ngx_uint_t            ops;
    ngx_presence_node_t  *node;

    for (ops = 0; ops < count; ops++) {
        stub_set_clock(*clock);

        id = 1 + random() % 6000;

        switch (random() % 10) {
        case 0:
            node = ngx_presence_table_get(t, id);
            if (node) {
                ngx_presence_hide(t, node, ngx_presence_now_ms());
            }
            break;
        case 1:
            (void) ngx_presence_sweep(t, ngx_pid);

            /* not ahead of the sweeps: users whose deadline passed long
               ago but are not swept yet still hold their places */
            if (ticker && t->sh->swept + 5 >= *clock / NGX_PRESENCE_TICK) {
                *clock += 37;
            }
            break;
        default:
            node = ngx_presence_table_get(t, id);
            if (node == NULL) {
                (*refused)++;
                break;
            }
            ngx_presence_heartbeat(t, node, ngx_presence_now_ms(), 100,
                                   random() % 3 == 0);
        }
    }
}


static void
test_concurrent_reclaim(void)
{
    uint32_t              *refused;
    ngx_uint_t             p, online;
    ngx_pid_t              pids[4], victim;
    ngx_presence_table_t   t;
    volatile ngx_msec_t   *clock;

    /*
     * An early clock: on a355534's wheel a sweep whose audit meets a new
     * node between the heartbeat's CAS and its push (its "queued" is 0,
     * "old") links it twice and the next sweep spins (issue 10, item 1);
     * this test is about the reclaim, so the audit must not find new
     * nodes old.
     */
    stub_set_clock(100000);
    small_table(&t);
    t.retain = 300;

    clock = ngx_slab_calloc(NULL, sizeof(ngx_msec_t));
    refused = ngx_slab_calloc(NULL, sizeof(uint32_t));
    *clock = 100000;

    for (p = 0; p < 4; p++) {
        pids[p] = fork();

        if (pids[p] == 0) {
            ngx_pid = getpid();
            ngx_process_slot = (ngx_int_t) p;
            srandom((unsigned) ngx_pid);
            reclaim_ops(&t, clock, 60000, 1, refused);
            _exit(0);
        }
    }

    for (p = 0; p < 4; p++) {
        waitpid(pids[p], NULL, 0);
    }

    ngx_pid = getpid();
    ok(chains_intact(&t, 6000, 0), "4 reclaiming processes: each user once, "
       "found where it is, tracked agrees");

    /* (refusals are right when more users were active than max_users:
       while a sweeper is preempted, the others go on) */
    printf("# %lu reclaimed in %u slots, %u refused\n",
           (unsigned long) t.sh->reclaimed, t.sh->capacity, *refused);

    stub_set_clock(*clock);
    sweep_until(&t, *clock + 1000);
    ok(room_for_all(&t, 100001, 0), "4 reclaiming processes: then all are "
       "gone, and max_users new users all come in");

    victim = fork();

    if (victim == 0) {
        ngx_pid = getpid();
        ngx_process_slot = 5;
        srandom((unsigned) ngx_pid);
        reclaim_ops(&t, clock, 100000000, 1, refused);
        _exit(0);
    }

    usleep(100000 + random() % 100000);
    kill(victim, SIGKILL);
    waitpid(victim, NULL, 0);
    (void) ngx_atomic_cmp_set(test_pool->mutex.lock, victim, 0);

    /*
     * nginx respawns a killed worker in its slot, and the new one lets go
     * of the node the dead one had in hand; without it the audit keeps
     * off that node, and a kill between a heartbeat's CAS and its push
     * (1 run in about 130) left its user active here
     */
    ngx_pid = getpid();
    respawned(&t, 5);
    ngx_process_slot = 0;
    reclaim_ops(&t, clock, 20000, 1, refused);
    stub_set_clock(*clock);
    sweep_until(&t, *clock + 1000 + NGX_PRESENCE_TICK
                               * (NGX_PRESENCE_WHEEL + 20 + 2
                                  + t.sh->capacity / 1024));

    online = 0;
    for (p = 0; p < t.sh->capacity; p++) {
        online += ((t.sh->nodes[p].state & NGX_PRESENCE_ACTIVE) != 0);
    }

    /* a kill between a change and its count may leave tracked one off */
    ok(chains_intact(&t, 200000, 1),
       "after a kill -9: each user once and found where it is");
    ok(online == 0, "after a kill -9: no one active after the timeout");

    /* and one node made but not used yet may stay */
    ok(room_for_all(&t, 110001, 1), "after a kill -9: max_users new users "
       "come in");
}


/* item 5: the table's side of a durable "appear offline" */

static ngx_presence_change_t  changes[16];
static ngx_uint_t             nchanges;
static uint32_t               pendings[16];
static ngx_uint_t             npendings;


static void
record_change(ngx_presence_table_t *table, ngx_presence_change_t *ch)
{
    if (nchanges < 16) {
        changes[nchanges] = *ch;
    }

    nchanges++;
}


static void
record_pending(ngx_presence_table_t *table, uint32_t id)
{
    if (npendings < 16) {
        pendings[npendings] = id;
    }

    npendings++;
}


static void
test_pending(void)
{
    ngx_presence_node_t    *node;
    ngx_presence_table_t    t;
    ngx_presence_status_t   st;
    ngx_presence_change_t  *ch;

    new_table(&t, 8 * 1024 * 1024);
    t.changed = record_change;
    t.pending = record_pending;
    stub_set_clock(10000000);
    nchanges = 0;
    npendings = 0;

    node = ngx_presence_table_get(&t, 21);
    ok(npendings == 1 && pendings[0] == 21, "pending: a new node asks once");
    ok(ngx_presence_table_get(&t, 21) == node && npendings == 1,
       "pending: and not again");

    ngx_presence_heartbeat(&t, node, 1764310000000, 1000, 0);
    ngx_presence_read(node, &st);
    ok(!st.online && st.pending && st.seq == 0 && nchanges == 0
       && t.sh->online == 0,
       "pending: a heartbeat shows nothing, no event, no seq");

    ok(ngx_presence_resolve(&t, 21, 0, 0) == NGX_OK, "pending: resolved");
    ch = &changes[0];
    ngx_presence_read(node, &st);
    ok(nchanges == 1 && ch->id == 21 && ch->online && ch->publish
       && !ch->invisible && ch->seq == 1 && ch->last_seen == 1764310000000,
       "pending: resolved visible, one online event");
    ok(st.online && !st.pending && st.seq == 1 && t.sh->online == 1,
       "pending: and online");
    ok(ngx_presence_resolve(&t, 21, 1, 0) == NGX_DECLINED && nchanges == 1,
       "pending: a second answer is declined");
    ok(ngx_presence_resolve(&t, 4242, 0, 0) == NGX_DECLINED,
       "pending: an answer for no node is declined");

    /* invisible in the stores: heartbeats keep it offline, no event */
    node = ngx_presence_table_get(&t, 22);
    ngx_presence_heartbeat(&t, node, 1764310000100, 1000, 0);
    ok(ngx_presence_resolve(&t, 22, 1, 1764300000000) == NGX_OK
       && nchanges == 1, "pending: resolved invisible, no event");
    ngx_presence_heartbeat(&t, node, 1764310000200, 1000, 0);
    ngx_presence_read(node, &st);
    ok(!st.online && st.invisible && !st.pending && st.seq == 0
       && nchanges == 1, "pending: invisible, heartbeats change nothing");
    ok(st.last_seen == 1764300000000,
       "pending: invisible, the stores' last_seen, not its heartbeats'");

    /* offline and going invisible: the stores are told, no event */
    node = ngx_presence_table_get(&t, 23);
    ok(ngx_presence_resolve(&t, 23, 0, 1764300000000) == NGX_OK
       && nchanges == 1, "pending: an offline user resolved, no event");
    ngx_presence_hide(&t, node, 1764310000300);
    ch = &changes[1];
    ngx_presence_read(node, &st);
    ok(nchanges == 2 && ch->id == 23 && !ch->online && !ch->publish
       && ch->invisible && ch->seq == 1 && ch->last_seen == 1764300000000,
       "hide of an offline user: publish 0, invisible, seq moved");
    ok(st.dirty == NGX_PRESENCE_DIRTY && st.invisible && !st.online
       && st.last_seen == 1764300000000 && t.sh->online == 1,
       "hide of an offline user: dirty, last_seen kept, online gauge kept");

    /* online and going invisible: an event */
    ngx_presence_hide(&t, ngx_presence_table_lookup(&t, 21), 1764310000400);
    ch = &changes[2];
    ok(nchanges == 3 && ch->id == 21 && !ch->online && ch->publish
       && ch->invisible && ch->seq == 2 && t.sh->online == 0,
       "hide of an online user: publish 1, invisible");

    /* visible again */
    ngx_presence_heartbeat(&t, ngx_presence_table_lookup(&t, 23),
                           1764310000500, 1000, NGX_PRESENCE_SHOW);
    ch = &changes[3];
    ok(nchanges == 4 && ch->id == 23 && ch->online && ch->publish
       && !ch->invisible && ch->seq == 2,
       "show: visible again, publish 1, not invisible");

    /* SHOW of a PENDING user: its own choice, newer than the stores' */
    node = ngx_presence_table_get(&t, 26);
    ngx_presence_heartbeat(&t, node, 1764310000600, 1000, NGX_PRESENCE_SHOW);
    ch = &changes[4];
    ok(nchanges == 5 && ch->id == 26 && ch->online && ch->publish,
       "pending: SHOW makes it online at once");
    ok(ngx_presence_resolve(&t, 26, 1, 0) == NGX_DECLINED
       && status_of(&t, 26, &st) && st.online,
       "pending: the stores' late answer is declined");

    /* warm start: not PENDING, invisible as the store says */
    ok(ngx_presence_warm(&t, 24, 1764300000000, 0, 1) == NGX_OK
       && status_of(&t, 24, &st) && !st.pending && st.invisible
       && st.last_seen == 1764300000000 && npendings == 4,
       "warm: invisible, not pending, no question asked");
    ngx_presence_heartbeat(&t, ngx_presence_table_lookup(&t, 24),
                           1764310000700, 1000, 0);
    ok(status_of(&t, 24, &st) && !st.online && nchanges == 5,
       "warm: an invisible user's heartbeat publishes nothing");

    /* warm start meets a PENDING node: resolves it */
    node = ngx_presence_table_get(&t, 25);
    ngx_presence_heartbeat(&t, node, 1764310000800, 1000, 0);
    ok(ngx_presence_warm(&t, 25, 1764300000000, 0, 0) == NGX_OK
       && nchanges == 6 && changes[5].id == 25 && changes[5].online
       && changes[5].publish, "warm: a PENDING node is resolved");

    /* a PENDING node that times out: no event either */
    node = ngx_presence_table_get(&t, 27);
    ngx_presence_heartbeat(&t, node, 1764310000900, 300, 0);
    sweep_until(&t, ngx_current_msec + 600);
    ngx_presence_read(node, &st);
    ok(!st.online && st.pending && st.seq == 0 && nchanges == 6,
       "pending: its timeout is silent too");
}


/*
 * A device gone (POST /v1/presence "gone"): offline now, last seen now,
 * one event; the node stays queued on the wheel where it was, so that a
 * heartbeat that follows is swept at its own deadline, never linked twice.
 */

static void
test_leave(void)
{
    ngx_presence_node_t    *node;
    ngx_presence_table_t    t;
    ngx_presence_status_t   st;
    ngx_presence_change_t  *ch;

    new_table(&t, 8 * 1024 * 1024);
    t.changed = record_change;
    stub_set_clock(20000000);
    nchanges = 0;

    node = ngx_presence_table_get(&t, 31);
    ngx_presence_heartbeat(&t, node, 1764320000000, 1000, 0);
    ok(nchanges == 1 && t.sh->online == 1, "leave: online first");

    stub_set_clock(20000000 + 300);
    (void) ngx_presence_leave(&t, node, 1764320000300,
                             NGX_PRESENCE_DEVICE_DEFAULT, 0);
    ch = &changes[1];
    ngx_presence_read(node, &st);
    ok(nchanges == 2 && ch->id == 31 && !ch->online && ch->publish
       && ch->seq == 2 && ch->last_seen == 1764320000300,
       "leave: one offline event, last seen now");
    ok(!st.online && st.seq == 2 && st.last_seen == 1764320000300
       && st.dirty == NGX_PRESENCE_DIRTY && t.sh->online == 0,
       "leave: offline, dirty, online gauge back to 0");

    (void) ngx_presence_leave(&t, node, 1764320000400,
                             NGX_PRESENCE_DEVICE_DEFAULT, 0);
    ngx_presence_read(node, &st);
    ok(nchanges == 2 && st.seq == 2 && st.last_seen == 1764320000300,
       "leave: of an offline user changes nothing");

    sweep_until(&t, 20000000 + 1500);
    ngx_presence_read(node, &st);
    ok(nchanges == 2 && !st.online && st.seq == 2,
       "leave: its old deadline passes silently");

    /* back, gone, back again before the sweeper met the node */
    ngx_presence_heartbeat(&t, node, 1764320001500, 1000, 0);
    (void) ngx_presence_leave(&t, node, 1764320001600,
                             NGX_PRESENCE_DEVICE_DEFAULT, 0);
    ngx_presence_heartbeat(&t, node, 1764320001700, 1000, 0);
    ngx_presence_read(node, &st);
    ok(nchanges == 5 && st.online && st.seq == 5,
       "leave: back, gone and back: three events");

    sweep_until(&t, 20000000 + 2300);
    ngx_presence_read(node, &st);
    ok(st.online && nchanges == 5, "leave: online until its new deadline");

    sweep_until(&t, 20000000 + 3000);
    ngx_presence_read(node, &st);
    ok(!st.online && st.seq == 6 && nchanges == 6
       && st.last_seen == 1764320001700 && t.sh->online == 0,
       "leave: then its timeout, as any heartbeat's");

    /* invisible: already shown offline, no event, last_seen kept */
    node = ngx_presence_table_get(&t, 32);
    ngx_presence_heartbeat(&t, node, 1764320003000, 1000, 0);
    ngx_presence_hide(&t, node, 1764320003100);
    (void) ngx_presence_leave(&t, node, 1764320003200,
                             NGX_PRESENCE_DEVICE_DEFAULT, 0);
    ngx_presence_read(node, &st);
    ok(nchanges == 8 && !st.online && st.invisible
       && st.last_seen == 1764320003100,
       "leave: of an invisible user publishes nothing");

    /* a user the table does not hold is left alone by the caller */
    ok(ngx_presence_table_lookup(&t, 33) == NULL,
       "leave: an unknown user is not created");
}


/*
 * Devices (issue 14): a change of the devices shown, and of active/idle,
 * is one change with seq + 1; plain heartbeats none; the last device's
 * leave is a grace: nothing if a device comes back, else offline at its
 * end with last_seen the moment it left; past presence_devices the one
 * seen longest ago goes; a device's own deadline takes it out alone;
 * names are interned once and bounded.
 */

/*
 * Each worker caches its clock for a turn of its loop: a device's activity
 * written by a worker whose clock is a tick ahead of the sweeper's is
 * "now" to it, never 109 minutes old (the 16-bit age wrapped: the user
 * was shown idle until its next heartbeat, seen at 5 M users)
 */

static void
test_devices_skew(void)
{
    uint32_t                web;
    ngx_presence_node_t    *node;
    ngx_presence_table_t    t;
    ngx_presence_status_t   st;

    new_table(&t, 8 * 1024 * 1024);
    t.changed = record_change;
    t.idle_timeout = 1000;
    stub_set_clock(50000000);
    nchanges = 0;

    web = ngx_presence_device_id(&t, (u_char *) "web", 3);
    node = ngx_presence_table_get(&t, 61);
    stub_set_clock(50000100);
    (void) ngx_presence_device_beat(&t, node, 1764350000100, 3000, 0, web);
    stub_set_clock(50000000);
    ngx_presence_idle_check(&t, 61);
    (void) ngx_presence_table_peek(&t, 61, &st);
    ok(nchanges == 1 && st.online && !st.devices.idle,
       "devices: an activity of a clock a tick ahead is not idle");

    stub_set_clock(50000000 + 1100 + 100);
    ngx_presence_idle_check(&t, 61);
    (void) ngx_presence_table_peek(&t, 61, &st);
    ok(nchanges == 2 && st.online && st.devices.idle,
       "devices: idle once its idle timeout passed");
}


static void
test_devices(void)
{
    u_char                   buf[NGX_PRESENCE_DEVICE_LEN];
    uint32_t                 web, phone, tab, id;
    ngx_uint_t               i, n;
    ngx_presence_node_t     *node;
    ngx_presence_table_t     t;
    ngx_presence_status_t    st;
    ngx_presence_change_t   *ch;

    new_table(&t, 8 * 1024 * 1024);
    t.changed = record_change;
    t.grace = 1000;
    t.idle_timeout = 1000;
    t.devices = 3;
    stub_set_clock(40000000);
    nchanges = 0;

    web = ngx_presence_device_id(&t, (u_char *) "web", 3);
    phone = ngx_presence_device_id(&t, (u_char *) "phone", 5);
    tab = ngx_presence_device_id(&t, (u_char *) "tab", 3);
    ok(web > 1 && phone > 1 && web != phone
       && ngx_presence_device_id(&t, (u_char *) "web", 3) == web
       && ngx_presence_device_name(&t, phone, buf) == 5
       && ngx_memcmp(buf, "phone", 5) == 0
       && ngx_presence_device_id(&t, (u_char *) "default", 7)
          == NGX_PRESENCE_DEVICE_DEFAULT,
       "devices: names interned once, read back");

    node = ngx_presence_table_get(&t, 51);
    (void) ngx_presence_device_beat(&t, node, 1764340000000, 3000, 0, web);
    ch = &changes[0];
    ok(nchanges == 1 && ch->online && ch->seq == 1 && ch->devices.n == 1
       && ch->devices.names[0] == web && !ch->devices.idle,
       "devices: online with web, active");

    (void) ngx_presence_device_beat(&t, node, 1764340000100, 3000, 0, web);
    (void) ngx_presence_device_beat(&t, node, 1764340000100, 3000, 0, phone);
    ch = &changes[1];
    ok(nchanges == 2 && ch->online && ch->seq == 2 && ch->devices.n == 2
       && ch->devices.names[0] == phone && ch->devices.names[1] == web
       && t.sh->online == 1,
       "devices: web again nothing; phone one change, sorted, no transition");

    (void) ngx_presence_device_beat(&t, node, 1764340000200, 3000,
                                    NGX_PRESENCE_BEAT_IDLE, phone);
    ok(nchanges == 2, "devices: one idle device of two: still active");
    (void) ngx_presence_device_beat(&t, node, 1764340000200, 3000,
                                    NGX_PRESENCE_BEAT_IDLE, web);
    ch = &changes[2];
    ok(nchanges == 3 && ch->seq == 3 && ch->devices.idle && ch->devices.n == 2,
       "devices: both idle: idle, one change");
    (void) ngx_presence_device_beat(&t, node, 1764340000300, 3000, 0, web);
    ch = &changes[3];
    ok(nchanges == 4 && ch->seq == 4 && !ch->devices.idle,
       "devices: an active heartbeat: active at once");

    /* web active, phone idle; the idle timeout (1 s) passes */
    sweep_until(&t, ngx_current_msec + 1300);
    ch = &changes[4];
    ok(nchanges == 5 && ch->seq == 5 && ch->devices.idle && ch->online,
       "devices: idle after the idle timeout, by the sweeper");

    ok(ngx_presence_leave(&t, node, 1764340001500, phone, 0) == NGX_OK,
       "devices: phone leaves");
    ch = &changes[5];
    ok(nchanges == 6 && ch->seq == 6 && ch->devices.n == 1
       && ch->devices.names[0] == web && ch->online,
       "devices: one change, web left");

    ok(ngx_presence_leave(&t, node, 1764340001600, web, 0) == NGX_AGAIN,
       "devices: the last one leaves: a grace");
    (void) ngx_presence_table_peek(&t, 51, &st);
    ok(nchanges == 6 && st.online && st.devices.n == 1,
       "devices: in the grace still online with it, nothing published");
    (void) ngx_presence_device_beat(&t, node, 1764340001700, 3000,
                                    NGX_PRESENCE_BEAT_IDLE, web);
    ngx_presence_grace_end(&t, 51);
    stub_set_clock(ngx_current_msec + 1200);
    ngx_presence_grace_end(&t, 51);
    (void) ngx_presence_table_peek(&t, 51, &st);
    ok(nchanges == 6 && st.online && st.seq == 6,
       "devices: back within the grace: no change at all");

    stub_set_clock(ngx_current_msec + 100);
    ok(ngx_presence_leave(&t, node, 1764340003000, web, 0) == NGX_AGAIN,
       "devices: it leaves again");
    stub_set_clock(ngx_current_msec + 500);
    ngx_presence_grace_end(&t, 51);
    ok(nchanges == 6, "devices: not before the grace's end");
    stub_set_clock(ngx_current_msec + 600);
    ngx_presence_grace_end(&t, 51);
    ch = &changes[6];
    (void) ngx_presence_table_peek(&t, 51, &st);
    ok(nchanges == 7 && !ch->online && ch->seq == 7
       && ch->last_seen == 1764340003000 && !st.online && t.sh->online == 0,
       "devices: offline at the grace's end, last seen when it left");
    sweep_until(&t, ngx_current_msec + 3500);
    ok(nchanges == 7, "devices: its wheel deadline passes silently");

    /* presence_devices 3: the fourth replaces the one seen longest ago */
    node = ngx_presence_table_get(&t, 52);
    (void) ngx_presence_device_beat(&t, node, 1764340010000, 3000, 0, web);
    stub_set_clock(ngx_current_msec + 200);
    (void) ngx_presence_device_beat(&t, node, 1764340010200, 3000, 0, phone);
    (void) ngx_presence_device_beat(&t, node, 1764340010200, 3000, 0, tab);
    n = nchanges;
    (void) ngx_presence_device_beat(&t, node, 1764340010200, 3000, 0,
                                    NGX_PRESENCE_DEVICE_DEFAULT);
    (void) ngx_presence_table_peek(&t, 52, &st);
    ok(nchanges == n + 1 && st.devices.n == 3 && st.seq == 4
       && st.devices.names[0] == NGX_PRESENCE_DEVICE_DEFAULT
       && st.devices.names[1] == phone && st.devices.names[2] == tab
       && t.sh->extras == 2,
       "devices: past presence_devices web (the oldest) was replaced");

    /* a device's own deadline: it goes alone, the user stays */
    stub_set_clock(ngx_current_msec + 1000);
    (void) ngx_presence_device_beat(&t, node, 1764340011200, 3000, 0, tab);
    sweep_until(&t, ngx_current_msec + 2500);
    (void) ngx_presence_table_peek(&t, 52, &st);
    ok(st.online && st.devices.n == 1 && st.devices.names[0] == tab
       && t.sh->extras == 0,
       "devices: the others timed out alone, their records freed");
    sweep_until(&t, ngx_current_msec + 1000);
    (void) ngx_presence_table_peek(&t, 52, &st);
    ok(!st.online, "devices: then the user, at its own deadline");

    /* invented names: bounded, and given again once unused for long */
    t.name_age = 10;

    for (i = 0, n = 0; i < 2 * t.sh->nnames; i++) {
        u_char  nm[16];

        id = ngx_presence_device_id(&t, nm,
                                    snprintf((char *) nm, sizeof(nm), "x%u",
                                             (unsigned) i));
        n += (id == NGX_PRESENCE_DEVICE_DEFAULT);
    }

    ok(n > 0, "devices: the names full, new ones count as default");
    stub_set_clock(ngx_current_msec + 11000);
    id = ngx_presence_device_id(&t, (u_char *) "late", 4);
    ok(id != NGX_PRESENCE_DEVICE_DEFAULT
       && ngx_presence_device_name(&t, id, buf) == 4,
       "devices: names unused for name_age are given again");
}


/*
 * ngx_presence_json() writes its numbers itself: byte for byte what
 * "%uD"/"%uL" wrote (here: what snprintf writes), at every length.
 */

static void
test_json(void)
{
    char        want[256];
    u_char      buf[NGX_PRESENCE_JSON_LEN + 1], *p;
    uint32_t    id, seq;
    uint64_t    seen, v[80];
    ngx_uint_t  i, j, k, n, bad, over;

    n = 0;
    v[n++] = 0;

    /* 1, 10, ... 10^19 and their neighbours */
    for (k = 0, seen = 1; k < 20; k++, seen *= 10) {
        v[n++] = seen - 1;
        v[n++] = seen;
        v[n++] = seen + 7;
    }

    v[n++] = 1764300000123ULL;
    v[n++] = 0xffffffffULL;
    v[n++] = 0x100000000ULL;
    v[n++] = 0xffffffffULL * 100000000 + 99999999;   /* pieces of 8 */
    v[n++] = 0x100000000ULL * 100000000;
    v[n++] = 0xffffffffffffffffULL;

    bad = 0;
    over = 0;

    for (i = 0; i < n; i++) {
        for (j = 0; j < n; j++) {
            id = (uint32_t) v[i];
            seq = (uint32_t) v[j];
            seen = v[(i + j) % n];

            ngx_memset(buf, 'x', sizeof(buf));
            p = ngx_presence_json(buf, id, (i + j) & 1, seen, seq);

            if (seen) {
                snprintf(want, sizeof(want), "{\"id\":%u,\"status\":\"%s\","
                         "\"last_seen\":%llu,\"seq\":%u}", id,
                         ((i + j) & 1) ? "online" : "offline",
                         (unsigned long long) seen, seq);
            } else {
                snprintf(want, sizeof(want), "{\"id\":%u,\"status\":\"%s\","
                         "\"last_seen\":null,\"seq\":%u}", id,
                         ((i + j) & 1) ? "online" : "offline", seq);
            }

            if ((size_t) (p - buf) != strlen(want)
                || ngx_memcmp(buf, want, p - buf) != 0)
            {
                if (bad++ == 0) {
                    printf("# got %.*s\n# want %s\n",
                           (int) (p - buf), buf, want);
                }
            }

            if ((size_t) (p - buf) > NGX_PRESENCE_JSON_LEN) {
                over++;
            }
        }
    }

    ok(bad == 0, "json: the numbers as %uD/%uL, every length");
    ok(over == 0, "json: within NGX_PRESENCE_JSON_LEN");

    p = ngx_presence_uint(buf, 0xffffffffffffffffULL);
    ok(p - buf == 20 && ngx_memcmp(buf, "18446744073709551615", 20) == 0,
       "json: a 20-digit number");
}


/*
 * The cluster's replica (doc/cluster.md): another node's versions applied
 * by ngx_presence_apply(), a takeover by a local change, the expiry of a
 * user that moved dropped, a stale foreign change written over, a dead
 * node's users written offline.
 */

static void
test_replica(void)
{
    uint32_t                epoch, a, b, c, next, dead[1];
    ngx_int_t               rc;
    ngx_uint_t              n, written;
    ngx_presence_node_t    *node;
    ngx_presence_table_t    t;
    ngx_presence_status_t   st;
    ngx_presence_replica_t  rp;

    new_table(&t, 8 * 1024 * 1024);
    t.changed = record_change;
    stub_set_clock(30000000);
    nchanges = 0;

    a = ngx_presence_node_hash((u_char *) "a", 1);
    b = ngx_presence_node_hash((u_char *) "b", 1);
    t.node = a;

    ngx_memzero(&rp, sizeof(ngx_presence_replica_t));
    rp.id = 41;
    rp.seq = 1;
    rp.epoch = 0;
    rp.owner = b;
    rp.online = 1;
    rp.invisible = 0;
    rp.last_seen = 1764330000000;

    rc = ngx_presence_apply(&t, &rp);
    ok(rc == NGX_OK && status_of(&t, 41, &st) && st.online && st.seq == 1
       && st.last_seen == 1764330000000 && !st.dirty && nchanges == 0
       && t.sh->online == 1,
       "replica: b's online applied, no change of ours, online gauge 1");
    ok(ngx_presence_owned(&t, 41, &epoch) == NGX_DECLINED,
       "replica: not ours to log");

    rc = ngx_presence_apply(&t, &rp);
    rp.online = 0;
    n = (ngx_presence_apply(&t, &rp) == NGX_DECLINED);
    rp.seq = 0;
    n += (ngx_presence_apply(&t, &rp) == NGX_DECLINED);
    ok(rc == NGX_DECLINED && n == 2 && status_of(&t, 41, &st) && st.online
       && st.seq == 1,
       "replica: the same version again, or an older one, is ignored");

    sweep_until(&t, 30000000 + 5000);
    ok(status_of(&t, 41, &st) && st.online && nchanges == 0,
       "replica: never timed out here");

    /* a heartbeat here: a takeover, same seq (online already), epoch 1 */
    node = ngx_presence_table_lookup(&t, 41);
    ngx_presence_heartbeat(&t, node, 1764330005000, 1000, 0);
    ok(nchanges == 1 && changes[0].seq == 1 && changes[0].online
       && changes[0].publish && changes[0].claim
       && status_of(&t, 41, &st) && st.seq == 1 && t.sh->online == 1,
       "takeover: logged with the replica's seq, a claim (no event), "
       "no transition counted");
    ok(ngx_presence_owned(&t, 41, &epoch) == NGX_OK && epoch == 1,
       "takeover: ours, epoch 1");

    rp.seq = 1;
    rp.epoch = 0;
    rp.online = 1;
    ok(ngx_presence_apply(&t, &rp) == NGX_DECLINED,
       "takeover: b's version before it loses");

    sweep_until(&t, 30000000 + 6500);
    ok(nchanges == 2 && !changes[1].online && changes[1].seq == 2,
       "takeover: timed out by its new owner, seq 2");

    /* the user moved to b, which went on from seq 2 */
    rp.seq = 3;
    rp.epoch = 2;
    rp.last_seen = 1764330007000;
    stub_set_clock(30000000 + 7000);
    ngx_presence_heartbeat(&t, node, 1764330006900, 1000, 0);
    n = nchanges;
    rc = ngx_presence_apply(&t, &rp);
    ok(rc == NGX_OK && status_of(&t, 41, &st) && st.online && st.seq == 3
       && ngx_presence_owned(&t, 41, &epoch) == NGX_DECLINED,
       "moved: b's newer state applied over ours, a replica again");

    sweep_until(&t, 30000000 + 9000);
    ok(nchanges == n && status_of(&t, 41, &st) && st.online && st.seq == 3,
       "moved: our expiry is dropped, no event");

    /* back here; then a stale change of b that its log held back */
    ngx_presence_heartbeat(&t, node, 1764330009000, 1000, 0);
    ok(ngx_presence_owned(&t, 41, &epoch) == NGX_OK && epoch == 3,
       "back: ours again, epoch 3");

    rp.seq = 5;
    rp.last_seen = 1764330008000;
    n = nchanges;
    rc = ngx_presence_apply(&t, &rp);
    ok(rc == NGX_AGAIN && nchanges == n + 1 && changes[n].seq == 6
       && changes[n].online && !changes[n].claim
       && changes[n].devices.n == 1
       && status_of(&t, 41, &st) && st.seq == 6
       && ngx_presence_owned(&t, 41, &epoch) == NGX_OK && epoch == 4,
       "stale: written over by ours at seq 6 (the stale one's + 1), with "
       "its devices, epoch 4");

    /* a user never seen: made as a replica, invisible shown offline */
    rp.id = 42;
    rp.seq = 4;
    rp.online = 0;
    rp.invisible = 1;
    ok(ngx_presence_apply(&t, &rp) == NGX_OK && status_of(&t, 42, &st)
       && !st.online && st.invisible && st.seq == 4,
       "replica: a new user, invisible");

    /* node c dies: its online user goes offline here, b's stays online */
    c = ngx_presence_node_hash((u_char *) "c", 1);
    rp.id = 43;
    rp.seq = 3;
    rp.epoch = 2;
    rp.owner = c;
    rp.online = 1;
    rp.invisible = 0;
    rp.last_seen = 1764330009000;
    rc = ngx_presence_apply(&t, &rp);
    rp.id = 44;
    rp.owner = b;
    rc |= ngx_presence_apply(&t, &rp);

    n = nchanges;
    next = 0;
    dead[0] = c;
    written = ngx_presence_orphans(&t, dead, 1, &next, t.sh->capacity);
    ok(rc == NGX_OK && written == 1 && next == 0 && nchanges == n + 1
       && changes[n].id == 43 && !changes[n].online && changes[n].seq == 4
       && changes[n].last_seen == 1764330009000 && changes[n].publish
       && !changes[n].claim
       && ngx_presence_owned(&t, 43, &epoch) == NGX_OK && epoch == 3
       && status_of(&t, 43, &st) && !st.online && st.dirty
       && status_of(&t, 44, &st) && st.online,
       "dead node: its online user offline here (seq 4, last seen kept, "
       "epoch 3, ours, dirty), another node's untouched");
    ok(ngx_presence_orphans(&t, dead, 1, &next, t.sh->capacity) == 0
       && nchanges == n + 1, "dead node: its users written once");
}


/*
 * The cluster's refreshes of an online user's last_seen
 * (ngx_presence_refreshed(), ngx_presence_own_online()), and the race of
 * a late message of the old owner with a takeover here: in either order
 * the takeover's epoch wins and nothing is published.
 */

static uint32_t  own_seen[4];
static uint32_t  own_epoch[4];
static ngx_uint_t  nown;

static void
record_own(void *data, ngx_presence_status_t *st, uint32_t epoch)
{
    if (nown < 4) {
        own_seen[nown] = st->id;
        own_epoch[nown] = epoch;
    }

    nown++;
}


static void
test_refresh_race(void)
{
    uint32_t                epoch, a, b, next;
    ngx_uint_t              n;
    ngx_presence_node_t    *node;
    ngx_presence_table_t    t;
    ngx_presence_status_t   st;
    ngx_presence_replica_t  rp;

    new_table(&t, 8 * 1024 * 1024);
    t.changed = record_change;
    stub_set_clock(40000000);
    nchanges = 0;

    a = ngx_presence_node_hash((u_char *) "a", 1);
    b = ngx_presence_node_hash((u_char *) "b", 1);
    t.node = a;

    rp.id = 51;
    rp.seq = 3;
    rp.epoch = 2;
    rp.owner = b;
    rp.online = 1;
    rp.invisible = 0;
    rp.last_seen = 1764340000000;
    (void) ngx_presence_apply(&t, &rp);

    rp.last_seen = 1764340001000;
    ok(ngx_presence_apply(&t, &rp) == NGX_DECLINED
       && ngx_presence_refreshed(&t, &rp) == NGX_OK
       && status_of(&t, 51, &st) && st.online && st.seq == 3
       && st.last_seen == 1764340001000 && nchanges == 0
       && ngx_presence_owned(&t, 51, &epoch) == NGX_DECLINED,
       "refresh: b's user's last_seen moves, nothing else, no change");

    rp.last_seen = 1764340000500;
    n = (ngx_presence_refreshed(&t, &rp) == NGX_DECLINED);
    rp.last_seen = 1764340002000;
    rp.epoch = 1;
    n += (ngx_presence_refreshed(&t, &rp) == NGX_DECLINED);
    rp.epoch = 2;
    rp.seq = 1;
    n += (ngx_presence_refreshed(&t, &rp) == NGX_DECLINED);
    rp.id = 59;
    n += (ngx_presence_refreshed(&t, &rp) == NGX_DECLINED);
    ok(n == 4 && status_of(&t, 51, &st) && st.last_seen == 1764340001000,
       "refresh: an earlier one, another version, an unknown user: ignored");

    /* this node's online users: 52 (ours), not 51 (b's) */
    node = ngx_presence_table_get(&t, 52);
    ngx_presence_heartbeat(&t, node, 1764340003000, 30000, 0);
    nown = 0;
    next = 0;
    n = ngx_presence_own_online(&t, &next, t.sh->capacity, record_own, NULL);
    ok(n == 1 && nown == 1 && own_seen[0] == 52 && own_epoch[0] == 0
       && next == 0, "refresh: this node's online users only, epoch 0");

    /* b's late refresh after our takeover of 53: it loses */
    rp.id = 53;
    rp.seq = 1;
    rp.epoch = 0;
    rp.last_seen = 1764340004000;
    (void) ngx_presence_apply(&t, &rp);
    node = ngx_presence_table_lookup(&t, 53);
    nchanges = 0;
    ngx_presence_heartbeat(&t, node, 1764340005000, 30000, 0);
    rp.last_seen = 1764340004900;
    ok(ngx_presence_apply(&t, &rp) == NGX_DECLINED
       && ngx_presence_refreshed(&t, &rp) == NGX_DECLINED
       && nchanges == 1 && changes[0].claim
       && ngx_presence_owned(&t, 53, &epoch) == NGX_OK && epoch == 1
       && status_of(&t, 53, &st) && st.online && st.seq == 1
       && st.last_seen == 1764340005000,
       "race: b's late message after our takeover loses (epoch 1 > 0)");

    /* the other order, 54: b's message first, then the takeover */
    rp.id = 54;
    rp.last_seen = 1764340004000;
    (void) ngx_presence_apply(&t, &rp);
    rp.last_seen = 1764340004900;
    (void) ngx_presence_refreshed(&t, &rp);
    node = ngx_presence_table_lookup(&t, 54);
    nchanges = 0;
    ngx_presence_heartbeat(&t, node, 1764340005000, 30000, 0);
    ok(nchanges == 1 && changes[0].claim && changes[0].seq == 1
       && ngx_presence_owned(&t, 54, &epoch) == NGX_OK && epoch == 1
       && status_of(&t, 54, &st) && st.online && st.seq == 1,
       "race: b's message first, then our takeover from it: epoch 1, "
       "the same state as the other order");
}


int
main(void)
{
    ngx_pid = getpid();

    test_expiry();
    test_sweep_budget();
    test_sweep_budget_bucket();
    test_dead_lock_holder();
    test_pid_lock_owner();
    test_orphans();
    test_concurrency();
    test_dirty_marks();
    test_audit_race();
    test_audit_skew();
    test_broken_bucket();
    test_stress();
    test_full_of_gone_users();
    test_oldest_first();
    test_retain();
    test_scan_chunks();
    test_tombstones();
    test_stale_node();
    test_concurrent_reclaim();
    test_pending();
    test_leave();
    test_replica();
    test_refresh_race();
    test_devices();
    test_devices_skew();
    test_json();

    return done_testing();
}

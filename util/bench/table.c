
/*
 * Measures the presence table without nginx around it: the zone bytes per
 * user and the cost of one expiry sweep, at millions of users.  The few
 * nginx symbols the table uses are stubbed here; the table code is the
 * module's own src/ngx_http_presence_table.c, compiled unchanged.
 *
 *     util/bench/table [users] [expiring-percent] [two-devices-percent]
 *
 * The devices past the first are 16-byte records of the slab (here a
 * calloc each): their zone bytes are counted as nginx's slab holds them,
 * 254 to a 4 KB page.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <stdio.h>
#include <time.h>
#include <sys/mman.h>
#include "../../src/ngx_http_presence_table.h"

/* the slab calloc from an arena (the devices' records are found by their
   offset from the pool, as in a zone); the slab mutex a spin lock, never
   contended in one process */
#define NGX_STUBS_SHM  1
#include "../../t/stubs.h"


static double
now_s(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static uint32_t
user(uint32_t i)
{
    /* ids spread over the whole range, as a real user base is */
    return (uint32_t) (((uint64_t) i * 2654435761u) % 2147483647u) + 1;
}


int
main(int argc, char **argv)
{
    size_t                 size;
    double                 t, sweep_max, sweep_sum, hb_t;
    uint32_t               n, i, pct, two, expired, ticks, phone;
    double                 extra, reserve;
    ngx_msec_t             timeout, hb, start;
    size_t                 arena;
    ngx_slab_pool_t       *pool;
    ngx_presence_node_t   *node;
    ngx_log_t              log;
    ngx_presence_table_t   table;

    n = argc > 1 ? (uint32_t) atoi(argv[1]) : 5000000;
    pct = argc > 2 ? (uint32_t) atoi(argv[2]) : 1;
    two = argc > 3 ? (uint32_t) atoi(argv[3]) : 50;

    ngx_pid = getpid();
    timeout = 30000;
    start = 1000000;
    stub_set_clock(start);

    ngx_memzero(&table, sizeof(ngx_presence_table_t));
    ngx_str_set(&table.name, "bench");
    table.devices = NGX_PRESENCE_DEVICES;
    table.idle_timeout = NGX_PRESENCE_IDLE_TIMEOUT;
    table.grace = NGX_PRESENCE_GRACE;
    table.name_age = 3600;

    /* the table's debug logs (nginx-dev is --with-debug) read the level */
    ngx_memzero(&log, sizeof(ngx_log_t));
    table.log = &log;

    /* what an operator would configure: the computed size plus slack */
    size = ngx_presence_table_size(n) + ngx_presence_table_size(n) / 64
           + 1024 * 1024;

    /* the zone, and 64 bytes a user for the stub's records past it */
    arena = 2 * size + (size_t) n * 64;
    stub_arena(mmap(NULL, arena, PROT_READ|PROT_WRITE,
                    MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0), arena);

    pool = ngx_slab_calloc(NULL, sizeof(ngx_slab_pool_t));
    pool->mutex.lock = &pool->lock.lock;

    if (ngx_presence_table_init(&table, pool, size) != NGX_OK) {
        fprintf(stderr, "table init failed\n");
        return 1;
    }

    printf("users %u, zone %zu bytes, %.1f bytes per user, capacity %u\n",
           n, size, (double) size / n, table.sh->max_users);

    /* every user heartbeats once, spread evenly over a third of a timeout */

    t = now_s();

    for (i = 0; i < n; i++) {
        ngx_msec_t  at = start + (ngx_msec_t) ((uint64_t) i * timeout / 3 / n);

        while (ngx_current_msec + NGX_PRESENCE_TICK <= at) {
            stub_set_clock(ngx_current_msec + NGX_PRESENCE_TICK);
            (void) ngx_presence_sweep(&table, ngx_pid);
        }

        node = ngx_presence_table_get(&table, user(i));
        if (node == NULL) {
            fprintf(stderr, "table full at %u\n", i);
            return 1;
        }

        ngx_presence_heartbeat(&table, node, ngx_presence_now_ms(), timeout,
                               0);
    }

    t = now_s() - t;
    printf("first heartbeats (insert): %.0f ns each, %.2f M/s\n",
           t * 1e9 / n, n / t / 1e6);

    /* two% of the users heartbeat a second device */

    phone = ngx_presence_device_id(&table, (u_char *) "phone", 5);
    t = now_s();

    for (i = 0; i < n; i++) {
        if (i % 100 >= two) {
            continue;
        }

        node = ngx_presence_table_lookup(&table, user(i));
        (void) ngx_presence_device_beat(&table, node, ngx_presence_now_ms(),
                                        timeout, 0, phone);
    }

    t = now_s() - t;
    extra = (double) table.sh->extras * sizeof(ngx_presence_extra_t)
            * 4096 / 254 / 16;

    /* what the zone leaves the slab for them: its reserve */
    reserve = (double) table.sh->capacity * sizeof(ngx_presence_node_t)
              / (NGX_PRESENCE_EXTRA_SHARE - 1);
    printf("second devices: %lu of %u users (%u%%), %.0f ns each; "
           "%.1f MB of slab, %.1f bytes per extra device, the zone "
           "%.1f bytes per user with them (%.1f with one device)\n",
           (unsigned long) table.sh->extras, n, two,
           t * 1e9 / ngx_max(table.sh->extras, 1), extra / 1e6,
           extra / ngx_max(table.sh->extras, 1),
           (size + ngx_max(0, extra - reserve)) / n, (double) size / n);

    /*
     * Each user heartbeats again 2/3 of a timeout after its first, except
     * pct% of them, who fall silent; the sweep runs every tick meanwhile.
     */

    sweep_max = 0;
    sweep_sum = 0;
    expired = 0;
    ticks = 0;
    hb = 0;
    hb_t = 0;

    for (i = 0; i < n; i++) {
        ngx_msec_t  at = start + (ngx_msec_t) ((uint64_t) i * timeout / 3 / n)
                         + timeout * 2 / 3;

        while (ngx_current_msec + NGX_PRESENCE_TICK <= at) {
            stub_set_clock(ngx_current_msec + NGX_PRESENCE_TICK);
            t = now_s();
            expired += ngx_presence_sweep(&table, ngx_pid);
            t = now_s() - t;
            sweep_sum += t;
            sweep_max = ngx_max(sweep_max, t);
            ticks++;
        }

        if (i % 100 < pct) {
            continue;
        }

        t = now_s();
        node = ngx_presence_table_lookup(&table, user(i));
        ngx_presence_heartbeat(&table, node, ngx_presence_now_ms(), timeout,
                               0);

        if (i % 100 < two) {
            /* its second device too: both stay */
            (void) ngx_presence_device_beat(&table, node,
                                            ngx_presence_now_ms(), timeout,
                                            0, phone);
            hb++;
        }

        hb_t += now_s() - t;
        hb++;
    }

    printf("heartbeats of online users: %.0f ns each\n", hb_t * 1e9 / hb);

    /*
     * The silent users' deadlines fall in the next third of a timeout; the
     * others were queued for the same ticks and are requeued there.
     */

    sweep_max = 0;
    sweep_sum = 0;
    ticks = 0;

    while (ngx_current_msec < start + timeout * 3 / 2) {
        stub_set_clock(ngx_current_msec + NGX_PRESENCE_TICK);
        t = now_s();
        expired += ngx_presence_sweep(&table, ngx_pid);
        t = now_s() - t;
        sweep_sum += t;
        sweep_max = ngx_max(sweep_max, t);
        ticks++;
    }

    printf("expiry of the silent users, one sweep per %d ms tick:\n",
           NGX_PRESENCE_TICK);
    printf("  %u sweeps, mean %.3f ms, max %.3f ms, %.0f users offline per "
           "sweep\n", ticks, sweep_sum * 1e3 / ticks, sweep_max * 1e3,
           (double) expired / ticks);
    printf("  sweep cost while they expire: %.2f%% of one core\n",
           sweep_sum / (ticks * NGX_PRESENCE_TICK / 1000.0) * 100);

    printf("silent users expired: %u of %u (%u%%), online now %lu\n",
           expired, n, pct, (unsigned long) table.sh->online);
    if (expired != n / 100 * pct + (n % 100 > 0 ? 0 : 0)
        && expired != (n + 99) / 100 * pct)
    {
        /* exact count: pct% of each hundred users */
        uint32_t  want = 0;

        for (i = 0; i < n; i++) {
            want += (i % 100 < pct);
        }

        if (expired != want) {
            fprintf(stderr, "FAIL: %u expired, %u expected\n", expired, want);
            return 1;
        }
    }

    return 0;
}

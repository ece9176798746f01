
/*
 * Unit tests of the resume ring (src/ngx_http_presence_resume.c, run by
 * t/029-resume-ring.t), without nginx: the zone is an arena of memory,
 * nchan's answers are ngx_presence_resume_add() with the ids nchan would
 * give, a resuming stream is an id parsed and collected from.  The cases
 * are those a live test meets only when seconds fall one way: a change
 * given to a resuming stream on its own channel in the second of a later
 * id must not be given again (t/028 TEST 8 once saw it under ASan), and
 * what a stream may not have had is given again, never taken as seen.
 * Prints TAP.
 */


#include "../src/ngx_http_presence_resume.c"

#define NGX_STUBS_SHM   1
#define NGX_STUBS_CONF  1
#include "stubs.h"


#define ARENA  (4 * 1024 * 1024)
#define IDS    0x2801cafe


/* what the file links that no case calls */

ngx_shm_zone_t *
ngx_shared_memory_add(ngx_conf_t *cf, ngx_str_t *name, size_t size,
    void *tag)
{
    abort();
}


void *
ngx_slab_alloc(ngx_slab_pool_t *pool, size_t size)
{
    return ngx_slab_calloc(pool, size);
}


static ngx_presence_resume_t  *rs;
static ngx_atomic_t            lock;
static uint32_t                users[2] = { 2801, 2802 };
static ngx_msec_t              clock_ms;


static void
resume_setup(void)
{
    u_char          *arena;
    ngx_shm_zone_t   zone;

    arena = calloc(1, ARENA);
    stub_arena(arena + sizeof(ngx_slab_pool_t), ARENA - sizeof(ngx_slab_pool_t));

    rs = calloc(1, sizeof(ngx_presence_resume_t));
    rs->retain = 10000;

    ngx_memzero(&zone, sizeof(ngx_shm_zone_t));
    zone.shm.addr = arena;
    zone.shm.size = ARENA;
    zone.data = rs;

    ((ngx_slab_pool_t *) arena)->mutex.lock = &lock;

    if (ngx_presence_resume_init_zone(&zone, NULL) != NGX_OK) {
        printf("Bail out! the zone\n");
        exit(1);
    }
}


/* nchan answered a change of user id with "<time>:<tag>" */

static void
took(uint32_t id, uint32_t seq, uint32_t time, uint16_t tag)
{
    ngx_presence_event_t  ev;

    ngx_memzero(&ev, sizeof(ngx_presence_event_t));
    ev.id = id;
    ev.seq = seq;

    ngx_presence_resume_add(rs, &ev, time, tag);
}


/* the seqs a stream of users 2801, 2802 resuming from "id" is given */

static const char *
resume(const char *id, ngx_int_t *rc, uint64_t *cut)
{
    uint64_t                    after;
    ngx_uint_t                  i, m;
    ngx_str_t                   s;
    ngx_presence_resume_pos_t   pos;

    static char                       out[256];
    static ngx_presence_resume_msg_t  msgs[NGX_PRESENCE_RESUME_MAX];

    s.data = (u_char *) id;
    s.len = strlen(id);

    if (ngx_presence_resume_parse(&s, 2, &pos) != NGX_OK) {
        return "unparsed";
    }

    after = ngx_presence_resume_seen(rs, IDS, 2, &pos);

    *rc = ngx_presence_resume_collect(rs, users, 2, &pos, after, msgs, &m,
                                      cut);
    if (*rc != NGX_OK) {
        return "resync";
    }

    out[0] = '\0';

    for (i = 0; i < m; i++) {
        sprintf(out + strlen(out), "%s%u:%u", i ? " " : "",
                msgs[i].ev.id, msgs[i].ev.seq);
    }

    return out;
}


static void
is(const char *got, const char *expected, const char *name)
{
    ok(strcmp(got, expected) == 0, name);

    if (strcmp(got, expected) != 0) {
        printf("#      got: '%s'\n# expected: '%s'\n", got, expected);
    }
}


/* the serial of the newest change kept */

static uint64_t
newest(void)
{
    return rs->sh->next - 1;
}


/* the clock at ms of second "sec" of the stub's epoch */

static uint32_t
at(uint32_t sec, ngx_msec_t ms)
{
    clock_ms = sec * 1000 + ms;
    stub_set_clock(clock_ms);

    return (uint32_t) ngx_time();
}


int
main(void)
{
    char        id[64];
    uint32_t    t;
    uint64_t    cut, cut2;
    ngx_int_t   rc;

    resume_setup();

    t = at(10, 100);

    /* a stream saw nothing yet of T's second: its users' changes then */

    took(2802, 1, t, 0);
    took(2801, 1, t, 0);
    took(2801, 2, t, 1);

    sprintf(id, "%u:-,-", t - 1);
    is(resume(id, &rc, &cut), "2802:1 2801:1 2801:2",
       "an id of the second before: every change of that second");
    ok(cut == 3, "the cut: the newest serial");

    sprintf(id, "%u:[0],-", t);
    is(resume(id, &rc, &cut), "2802:1 2801:2",
       "an id of that second: the changes after its tags");

    /*
     * The stream was given the three on its own channel (tags 0, 1, 2 of
     * second t), then a live change of 2802 in the same second: its id is
     * "t:-,[0],2", where 2801's tag says nothing of the two it was given
     */

    at(10, 300);
    sprintf(id, "%u:-,-", t - 1);
    (void) resume(id, &rc, &cut);
    ngx_presence_resume_given(rs, IDS, 3, cut);

    took(2802, 2, t, 1);

    sprintf(id, "%u:-,[1],2", t);
    is(resume(id, &rc, &cut2), "",
       "what a stream was given on its own channel is not given again");

    took(2801, 3, t, 2);

    is(resume(id, &rc, &cut2), "2801:3", "only the change since");

    sprintf(id, "%u:-,[1]", t);
    is(resume(id, &rc, &cut2), "2801:1 2801:2 2801:3",
       "an id without its own channel: as its tags say");

    sprintf(id, "%u:-,[1],1", t);
    is(resume(id, &rc, &cut2), "2801:1 2801:2 2801:3",
       "two of the three it was given: given again, none taken as seen");

    sprintf(id, "%u:-,[1],-", t);
    is(resume(id, &rc, &cut2), "2801:1 2801:2 2801:3",
       "nothing of its own channel in that second: as its tags say");

    /*
     * nchan's second one after the batch's: the hook's worker had not yet
     * seen the second change when it was given changes of that second
     */

    t = at(11, 50);
    took(2801, 10, t, 0);
    took(2802, 10, t, 0);

    at(10, 999);
    ngx_presence_resume_given(rs, IDS, 2, newest());

    sprintf(id, "%u:-,-,1", t);
    is(resume(id, &rc, &cut2), "",
       "a batch given in the second before the id's");

    /* another stream of the same users, given less, in that second */

    at(11, 60);
    ngx_presence_resume_given(rs, IDS, 2, newest() - 1);

    is(resume(id, &rc, &cut2), "2802:10",
       "two streams of the same users: the smaller cut");

    /* one of them got part of its batch: nothing is taken as seen */

    at(11, 70);
    ngx_presence_resume_given(rs, IDS, 3, newest());

    is(resume(id, &rc, &cut2), "2801:10 2802:10",
       "a batch that does not match the tag: nothing taken as seen");

    /* other users' batches, batches of seconds before: not ours */

    t = at(13, 10);
    took(2801, 4, t, 0);

    sprintf(id, "%u:-,-,2", t);
    is(resume(id, &rc, &cut2), "2801:4",
       "a batch two seconds before the id is not that of its own channel");

    at(13, 20);
    ngx_presence_resume_given(rs, IDS + 1, 3, 1000);

    is(resume(id, &rc, &cut2), "2801:4", "nor one of other users");

    at(13, 30);
    sprintf(id, "%u:-,-", t - 1);
    is(resume(id, &rc, &cut2), "2801:4", "an id of the second before");
    ngx_presence_resume_given(rs, IDS, 1, cut2);

    is(resume(id, &rc, &cut2), "2801:4",
       "an id without its own channel after the batch: as its tags say");

    sprintf(id, "%u:-,-,0", t);
    is(resume(id, &rc, &cut2), "", "an id of the batch's second: seen");

    /* given early in the second before the id's: not its own channel's */

    t = at(15, 10);
    took(2801, 6, t, 0);

    at(14, 500);
    ngx_presence_resume_given(rs, IDS, 1, newest());

    sprintf(id, "%u:-,-,0", t);
    is(resume(id, &rc, &cut2), "2801:6",
       "a batch given early in the second before the id's: as its tags");

    /* an id older than kept: a resync, the batches do not change that */

    at(30, 0);
    sprintf(id, "%u:-,-,2", t);
    is(resume(id, &rc, &cut2), "resync", "an id older than kept: resync");

    /* many batches later, the stream's own one is forgotten: as its tags */

    t = at(31, 0);
    took(2801, 5, t, 0);
    ngx_presence_resume_given(rs, IDS, 1, newest());

    sprintf(id, "%u:-,-,0", t);
    is(resume(id, &rc, &cut2), "", "the batch of that second: seen");

    for (cut = 0; cut < NGX_PRESENCE_RESUME_GIVEN; cut++) {
        ngx_presence_resume_given(rs, IDS + 2, 1, 6);
    }

    sprintf(id, "%u:-,-,0", t);
    is(resume(id, &rc, &cut2), "2801:5",
       "a batch overwritten by newer ones: given again");

    return done_testing();
}

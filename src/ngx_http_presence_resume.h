
/*
 * Copyright (C) The presence module authors
 *
 * Resuming event streams: the changes nchan took, with the message ids it
 * gave them, kept for presence_events_retain in a shared ring, so that a
 * stream that comes back with the id of the last message it saw is given
 * exactly the changes of its users it missed.
 */


#ifndef _NGX_HTTP_PRESENCE_RESUME_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_RESUME_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_events.h"


/* a resuming stream's own channel: "presence.resume.<8 hex digits>" */
#define NGX_PRESENCE_RESUME_CHANNEL_LEN                                       \
    (sizeof(NGX_PRESENCE_EVENTS_RESUME_PREFIX) - 1 + 8)

/* changes replayed to one stream at most; more: {"resync": true} */
#define NGX_PRESENCE_RESUME_MAX       512

/* the longest id taken from a client */
#define NGX_PRESENCE_RESUME_ID_LEN    2048

#define NGX_PRESENCE_RESUME_SIZE      (64 * 1024 * 1024)

/* presence_events_retain: ms */
#define NGX_PRESENCE_EVENTS_RETAIN    120000
#define NGX_PRESENCE_EVENTS_RETAIN_MAX  3600000

/* a stream's users (presence's 255 at most) and its own channel */
#define NGX_PRESENCE_RESUME_TAGS      257


typedef struct ngx_presence_resume_s  ngx_presence_resume_t;


/*
 * A stream's position, nchan's message id of several channels
 * "<second>:<tag>,<tag>,[<tag>],-": every message of its channels before
 * that second seen, and of that second those up to the channel's tag
 * (-1: none).
 */
typedef struct {
    uint32_t                    time;
    ngx_uint_t                  n;
    int16_t                     tags[NGX_PRESENCE_RESUME_TAGS];
} ngx_presence_resume_pos_t;


/* a change to give again */
typedef struct {
    uint64_t                    serial;
    uint32_t                    time;
    uint16_t                    tag;
    ngx_presence_event_t        ev;
} ngx_presence_resume_msg_t;


ngx_presence_resume_t *ngx_presence_resume_create(ngx_conf_t *cf,
    size_t size, ngx_msec_t retain);
ngx_msec_t ngx_presence_resume_retain(ngx_presence_resume_t *rs);

/* the events client: nchan took this change with this id */
void ngx_presence_resume_add(ngx_presence_resume_t *rs,
    ngx_presence_event_t *ev, uint32_t time, uint16_t tag);

void ngx_presence_resume_lost(ngx_presence_resume_t *rs);

/* NGX_DECLINED: not an id of a stream of n channels (or n + 1) */
ngx_int_t ngx_presence_resume_parse(ngx_str_t *id, ngx_uint_t n,
    ngx_presence_resume_pos_t *pos);

/*
 * The changes of these users after the position and after the serial
 * "after" (0: all), oldest first, into out[NGX_PRESENCE_RESUME_MAX];
 * *cut: the serial of the newest change then.  NGX_DECLINED: some of them
 * are not kept (too old, the ring overwrote them, before this start):
 * the stream resyncs.
 */
ngx_int_t ngx_presence_resume_collect(ngx_presence_resume_t *rs,
    uint32_t *ids, ngx_uint_t n, ngx_presence_resume_pos_t *pos,
    uint64_t after, ngx_presence_resume_msg_t *out, ngx_uint_t *nout,
    uint64_t *cut);

/* a resuming stream of users "ids" (a CRC32 of their list) was given these */
void ngx_presence_resume_given(ngx_presence_resume_t *rs, uint32_t ids,
    ngx_uint_t count, uint64_t cut);

/*
 * The serial up to which a stream at pos saw every change of its users,
 * though its id does not say so (what it was given on its own channel),
 * 0: none known; the "after" of ngx_presence_resume_collect()
 */
uint64_t ngx_presence_resume_seen(ngx_presence_resume_t *rs, uint32_t ids,
    ngx_uint_t n, ngx_presence_resume_pos_t *pos);

void ngx_presence_resume_stats(ngx_presence_resume_t *rs, uint64_t *kept,
    uint64_t *size);


#endif /* _NGX_HTTP_PRESENCE_RESUME_H_INCLUDED_ */

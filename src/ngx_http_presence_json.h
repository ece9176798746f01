
/*
 * Copyright (C) The presence module authors
 *
 * The wire format of a status: the JSON the API answers, the events carry
 * and Kafka's messages hold, byte for byte the same everywhere (API.md).
 */


#ifndef _NGX_HTTP_PRESENCE_JSON_H_INCLUDED_
#define _NGX_HTTP_PRESENCE_JSON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include "ngx_http_presence_table.h"


/* ,"activity":"active","devices":["...",...] */
#define NGX_PRESENCE_DEVICES_JSON_LEN                                         \
    (sizeof(",\"activity\":\"active\",\"devices\":[]") - 1                 \
     + NGX_PRESENCE_DEVICES_MAX * (NGX_PRESENCE_DEVICE_LEN + 3))

/* {"id":4294967295,"status":"offline","last_seen":...,"seq":4294967295} */
#define NGX_PRESENCE_JSON_LEN                                                 \
    (sizeof("{\"id\":,\"status\":\"offline\",\"last_seen\":,\"seq\":}") - 1   \
     + NGX_INT32_LEN + NGX_INT64_LEN + NGX_INT32_LEN                         \
     + NGX_PRESENCE_DEVICES_JSON_LEN)


/*
 * The decimal digits of n, as ngx_sprintf("%uD"/"%uL") writes them.  The
 * status answers write hundreds of numbers a request, and ngx_sprintf's
 * format parsing was the largest share of their time: here two digits a
 * step from a table, in 32-bit arithmetic, a 64-bit number cut in pieces
 * of 8 digits, written backwards from the end its length tells.
 */

#define ngx_presence_digits2(p, v)                                            \
    ngx_memcpy(p, &ngx_presence_digits[(v) * 2], 2)

static const u_char  ngx_presence_digits[] =
    "0001020304050607080910111213141516171819"
    "2021222324252627282930313233343536373839"
    "4041424344454647484950515253545556575859"
    "6061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";


static ngx_inline u_char *
ngx_presence_uint32(u_char *p, uint32_t n)
{
    u_char    *last;
    uint32_t   len;

    len = (n < 10) ? 1 : (n < 100) ? 2 : (n < 1000) ? 3 : (n < 10000) ? 4
          : (n < 100000) ? 5 : (n < 1000000) ? 6 : (n < 10000000) ? 7
          : (n < 100000000) ? 8 : (n < 1000000000) ? 9 : 10;

    last = p + len;
    p = last;

    while (n >= 100) {
        p -= 2;
        ngx_presence_digits2(p, n % 100);
        n /= 100;
    }

    if (n >= 10) {
        ngx_presence_digits2(p - 2, n);

    } else {
        p[-1] = (u_char) ('0' + n);
    }

    return last;
}


/* exactly 8 digits, leading zeros included */

static ngx_inline u_char *
ngx_presence_digits8(u_char *p, uint32_t n)
{
    uint32_t  hi, lo;

    hi = n / 10000;
    lo = n % 10000;

    ngx_presence_digits2(p, hi / 100);
    ngx_presence_digits2(p + 2, hi % 100);
    ngx_presence_digits2(p + 4, lo / 100);
    ngx_presence_digits2(p + 6, lo % 100);

    return p + 8;
}


/*
 * 13 digits, the ms of a time from 2001 to 2286: no length to find.  The
 * times of one answer are close (the last_seen of online users are within
 * a heartbeat of each other): the first 8 digits (a span of 100 s) of the
 * last time written are kept, in this process, and only the last 5 are
 * formatted while they stay the same.
 */

static ngx_inline u_char *
ngx_presence_ms(u_char *p, uint64_t n)
{
    uint32_t         hi, lo;
    static uint32_t  last_hi;           /* 0: none yet, hi >= 10^7 */
    static uint64_t  last_digits;

    hi = (uint32_t) (n / 100000);
    lo = (uint32_t) (n - (uint64_t) hi * 100000);

    if (hi != last_hi) {
        (void) ngx_presence_digits8((u_char *) &last_digits, hi);
        last_hi = hi;
    }

    ngx_memcpy(p, &last_digits, 8);

    p[8] = (u_char) ('0' + lo / 10000);
    lo %= 10000;
    ngx_presence_digits2(p + 9, lo / 100);
    ngx_presence_digits2(p + 11, lo % 100);

    return p + 13;
}


static ngx_inline u_char *
ngx_presence_uint(u_char *p, uint64_t n)
{
    uint64_t  hi;

    if (n <= 0xffffffff) {
        return ngx_presence_uint32(p, (uint32_t) n);
    }

    if (n >= 1000000000000ULL && n < 10000000000000ULL) {
        return ngx_presence_ms(p, n);
    }

    hi = n / 100000000;

    if (hi <= 0xffffffff) {
        p = ngx_presence_uint32(p, (uint32_t) hi);

    } else {
        /* 18 digits or more */
        p = ngx_presence_uint32(p, (uint32_t) (hi / 100000000));
        p = ngx_presence_digits8(p, (uint32_t) (hi % 100000000));
    }

    return ngx_presence_digits8(p, (uint32_t) (n % 100000000));
}


/* the JSON of a status, as the API, the events and Kafka have it */
static ngx_inline u_char *
ngx_presence_json(u_char *p, uint32_t id, ngx_uint_t online,
    uint64_t last_seen, uint32_t seq)
{
    p = ngx_cpymem(p, "{\"id\":", sizeof("{\"id\":") - 1);
    p = ngx_presence_uint(p, id);

    if (online) {
        p = ngx_cpymem(p, ",\"status\":\"online\",\"last_seen\":",
                       sizeof(",\"status\":\"online\",\"last_seen\":") - 1);

    } else {
        p = ngx_cpymem(p, ",\"status\":\"offline\",\"last_seen\":",
                       sizeof(",\"status\":\"offline\",\"last_seen\":") - 1);
    }

    if (last_seen) {
        p = ngx_presence_uint(p, last_seen);

    } else {
        p = ngx_cpymem(p, "null", sizeof("null") - 1);
    }

    p = ngx_cpymem(p, ",\"seq\":", sizeof(",\"seq\":") - 1);
    p = ngx_presence_uint(p, seq);
    *p++ = '}';

    return p;
}


#endif /* _NGX_HTTP_PRESENCE_JSON_H_INCLUDED_ */

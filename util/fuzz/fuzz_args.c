
/*
 * Copyright (C) The presence module authors
 *
 * Query strings: the search's q and limit, ngx_http_presence_search_args(),
 * and the channels of "?ids=" ($presence_channels),
 * ngx_http_presence_parse_channels(), both on every input as r->args.
 */


#include "ngx_fuzz.h"


#define NGX_FUZZ_PREFIX  NGX_PRESENCE_CHANNEL_PREFIX


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char              *p, *last, *comma;
    size_t               n;
    char                *reason;
    uint32_t             id;
    ngx_int_t            rc, limit;
    ngx_str_t            q, v;
    ngx_fuzz_request_t   fr;
    ngx_http_request_t  *r;

    r = ngx_fuzz_request(&fr);

    r->args.data = ngx_fuzz_copy(&fr, data, size);
    r->args.len = size;

    /* the channels first: the search writes into the arguments */

    rc = ngx_http_presence_parse_channels(r, &v);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);

    if (rc == NGX_OK) {
        ngx_fuzz_assert(v.len <= NGX_HTTP_PRESENCE_CHANNELS_MAX);

        /* "presence.1,presence.2" */

        p = v.data;
        last = v.data + v.len;

        while (p < last) {
            n = sizeof(NGX_FUZZ_PREFIX) - 1;
            ngx_fuzz_assert((size_t) (last - p) > n
                            && ngx_strncmp(p, NGX_FUZZ_PREFIX, n) == 0);
            p += n;

            comma = ngx_strlchr(p, last, ',');
            if (comma == NULL) {
                comma = last;
            }

            ngx_fuzz_assert(ngx_http_presence_parse_id(p, comma - p, &id)
                            == NGX_OK);

            p = comma + 1;
        }
    }

    reason = NULL;
    limit = 0;

    rc = ngx_http_presence_search_args(r, &q, &limit, &reason);

    ngx_fuzz_assert(rc == NGX_OK || (rc == NGX_DECLINED && reason));

    if (rc == NGX_OK) {
        ngx_fuzz_assert(limit >= 1 && limit <= 100);

        n = ngx_utf8_length(q.data, q.len);
        ngx_fuzz_assert(q.len >= 1 && n >= 1 && n <= 255);
        ngx_fuzz_assert(memchr(q.data, '\0', q.len) == NULL);
    }

    ngx_fuzz_request_free(&fr);

    return 0;
}

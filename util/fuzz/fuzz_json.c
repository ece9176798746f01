
/*
 * Copyright (C) The presence module authors
 *
 * JSON request bodies as the handlers get them: the body's buffers joined
 * by ngx_http_presence_read_body(), then PUT /v1/status,
 * ngx_http_presence_parse_status(), and POST /v1/users,
 * ngx_http_presence_parse_user(), both on every input.
 *
 * The first byte says how the body arrives: bits 0-6, the size of its
 * buffers (1..128, as a chunked body comes); bit 7, the rest twice, to
 * reach the limit of 4096 bytes.  A body is accepted whole or not at all;
 * a name accepted is 1..255 characters of UTF-8 without control
 * characters.
 */


#include "ngx_fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char               *p, *last, *copy;
    size_t                n, len, chunk;
    ngx_int_t             rc;
    ngx_str_t             body, name;
    ngx_uint_t            online, times, i;
    ngx_buf_t            *b;
    ngx_chain_t          *cl, **ll;
    ngx_fuzz_request_t    fr;
    ngx_http_request_t   *r;

    if (size == 0) {
        return 0;
    }

    chunk = (data[0] & 0x7f) + 1;
    times = (data[0] & 0x80) ? 2 : 1;
    data++;
    size--;

    r = ngx_fuzz_request(&fr);

    copy = ngx_fuzz_copy(&fr, data, size);

    /* no body at all: no request_body->bufs */

    r->request_body = ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t));
    ngx_fuzz_assert(r->request_body != NULL);

    ll = &r->request_body->bufs;

    for (i = 0; i < times; i++) {
        for (p = copy; p < copy + size; p += len) {
            len = ngx_min(chunk, (size_t) (copy + size - p));

            b = ngx_calloc_buf(r->pool);
            cl = ngx_alloc_chain_link(r->pool);
            ngx_fuzz_assert(b != NULL && cl != NULL);

            b->pos = p;
            b->last = p + len;
            b->temporary = 1;

            cl->buf = b;
            cl->next = NULL;
            *ll = cl;
            ll = &cl->next;
        }
    }

    rc = ngx_http_presence_read_body(r, NGX_HTTP_PRESENCE_BODY_MAX, &body);

    if (times * size > NGX_HTTP_PRESENCE_BODY_MAX) {
        ngx_fuzz_assert(rc == NGX_DECLINED);
        goto done;
    }

    ngx_fuzz_assert(rc == NGX_OK && body.len == times * size);

    for (i = 0; size && i < times; i++) {
        ngx_fuzz_assert(ngx_memcmp(body.data + i * size, copy, size) == 0);
    }

    online = 2;
    rc = ngx_http_presence_parse_status(&body, &online);

    ngx_fuzz_assert(rc == NGX_DECLINED || (rc == NGX_OK && online < 2));

    rc = ngx_http_presence_parse_user(r->pool, &body, &name);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);

    if (rc == NGX_OK) {
        n = ngx_utf8_length(name.data, name.len);
        ngx_fuzz_assert(n >= 1 && n <= 255);

        last = name.data + name.len;

        for (p = name.data; p < last; p++) {
            ngx_fuzz_assert(*p >= 0x20 && *p != 0x7f);
        }
    }

done:

    ngx_fuzz_request_free(&fr);

    return 0;
}

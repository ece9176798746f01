
/*
 * Copyright (C) The presence module authors
 *
 * JSON request bodies: PUT /v1/status, ngx_http_presence_parse_status(),
 * and POST /v1/users, ngx_http_presence_parse_user(), both on every input.
 * A name accepted is 1..255 characters of UTF-8 without control characters.
 */


#include "ngx_fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char              *p, *last;
    size_t               n;
    ngx_int_t            rc;
    ngx_str_t            body, name;
    ngx_uint_t           online;
    ngx_fuzz_request_t   fr;

    (void) ngx_fuzz_request(&fr);

    /* no body at all is what ngx_http_presence_read_body() gives as "" */
    body.data = size ? ngx_fuzz_copy(&fr, data, size) : NULL;
    body.len = size;

    online = 2;
    rc = ngx_http_presence_parse_status(&body, &online);

    ngx_fuzz_assert(rc == NGX_DECLINED || (rc == NGX_OK && online < 2));

    rc = ngx_http_presence_parse_user(fr.r.pool, &body, &name);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);

    if (rc == NGX_OK) {
        n = ngx_utf8_length(name.data, name.len);
        ngx_fuzz_assert(n >= 1 && n <= 255);

        last = name.data + name.len;

        for (p = name.data; p < last; p++) {
            ngx_fuzz_assert(*p >= 0x20 && *p != 0x7f);
        }
    }

    ngx_fuzz_request_free(&fr);

    return 0;
}


/*
 * Copyright (C) The presence module authors
 *
 * User ids of paths (/v1/status/{id}, /v1/users/{id},
 * /v1/subscriptions/{id}), of the identity variable and of token
 * subjects: ngx_http_presence_parse_id() and ngx_http_presence_path_id().
 * An id is accepted exactly when it is the canonical decimal of 1..2^31-1.
 */


#include "ngx_fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char              *p, buf[NGX_INT32_LEN];
    uint32_t             id;
    ngx_int_t            rc;
    ngx_str_t            rest;
    ngx_fuzz_request_t   fr;
    ngx_http_request_t  *r;

    r = ngx_fuzz_request(&fr);
    p = ngx_fuzz_copy(&fr, data, size);

    id = 0;
    rc = ngx_http_presence_parse_id(p, size, &id);

    ngx_fuzz_assert((rc == NGX_OK) == ngx_fuzz_canonical_id(p, size));

    if (rc == NGX_OK) {
        ngx_fuzz_assert((size_t) (ngx_sprintf(buf, "%uD", id) - buf) == size
                        && ngx_memcmp(buf, p, size) == 0);
    }

    /* the part of the URI after the location's name, "/{id}" */

    rest.data = p;
    rest.len = size;

    rc = ngx_http_presence_path_id(r, &rest, &id);

    if (size == 0) {
        ngx_fuzz_assert(rc == NGX_DECLINED);

    } else {
        ngx_fuzz_assert((rc == NGX_OK) == ngx_fuzz_canonical_id(p + 1,
                                                                size - 1));
        ngx_fuzz_assert(rc == NGX_OK || rc == NGX_ERROR);
    }

    ngx_fuzz_request_free(&fr);

    return 0;
}

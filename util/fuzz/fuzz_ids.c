
/*
 * Copyright (C) The presence module authors
 *
 * Id lists of "?ids=" (GET /v1/status, /v1/events and its nchan
 * authorization): ngx_http_presence_parse_ids().  The first byte picks the
 * limit: 1000, 255, or 1 to 8 to reach the "too many" answer often.  A
 * list accepted is written back and parsed again to the same ids.
 */


#include "ngx_fuzz.h"


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char              *p;
    uint32_t            *ids, *again;
    ngx_int_t            rc;
    ngx_str_t            arg, list;
    ngx_uint_t           i, n, m, max;
    ngx_fuzz_request_t   fr;
    ngx_http_request_t  *r;

    if (size == 0) {
        return 0;
    }

    switch (data[0] % 3) {
    case 0:
        max = NGX_HTTP_PRESENCE_IDS_MAX;
        break;
    case 1:
        max = NGX_HTTP_PRESENCE_EVENTS_IDS_MAX;
        break;
    default:
        max = 1 + data[0] / 3 % 8;
    }

    r = ngx_fuzz_request(&fr);

    arg.data = ngx_fuzz_copy(&fr, data + 1, size - 1);
    arg.len = size - 1;

    rc = ngx_http_presence_parse_ids(r, &arg, max, &ids, &n);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED || rc == NGX_BUSY);

    if (rc == NGX_OK) {
        ngx_fuzz_assert(n >= 1 && n <= max);

        list.data = ngx_pnalloc(r->pool, n * (NGX_INT32_LEN + 1));
        ngx_fuzz_assert(list.data != NULL);

        p = list.data;

        for (i = 0; i < n; i++) {
            ngx_fuzz_assert(ids[i] >= 1
                            && ids[i] <= NGX_HTTP_PRESENCE_MAX_ID);
            p = ngx_sprintf(p, "%s%uD", i ? "," : "", ids[i]);
        }

        list.len = p - list.data;

        ngx_fuzz_assert(ngx_http_presence_parse_ids(r, &list, max, &again,
                                                    &m)
                        == NGX_OK);
        ngx_fuzz_assert(m == n
                        && ngx_memcmp(again, ids, n * sizeof(uint32_t)) == 0);
    }

    ngx_fuzz_request_free(&fr);

    return 0;
}


/*
 * Gateway bodies (POST /v1/presence): ngx_http_presence_gateway_parse(),
 * JSON or the text form.  The first byte: bit 0, the text form; the rest,
 * presence_gateway_max (1..128, to reach "too many" often).  A body
 * accepted has at most "max" ids, each a user id, none in two lists, and
 * a valid device; a 400's message is JSON-safe.  A JSON body is also
 * parsed by jansson alone (a tree of every id, the reference): both must
 * accept or refuse it alike, with the same ids, whatever the fast path
 * made of its arrays.
 */


#include "ngx_fuzz.h"
#include <jansson.h>


/* NGX_OK with the lists in ids/n (malloc), or NGX_DECLINED */

static ngx_int_t
reference(u_char *body, size_t len, ngx_uint_t max, uint32_t *ids[3],
    ngx_uint_t n[3])
{
    json_t      *json, *v, *e;
    json_int_t   id;
    ngx_int_t    rc;
    ngx_uint_t   list, i, j, l2, total;
    const char  *k, *names[] = { "online", "idle", "gone" };

    json = json_loadb((char *) body, len, JSON_REJECT_DUPLICATES, NULL);
    rc = NGX_DECLINED;
    total = 0;

    if (!json_is_object(json)) {
        goto done;
    }

    json_object_foreach(json, k, v) {
        if (ngx_strcmp(k, "device") == 0) {
            if (!json_is_string(v) || json_string_length(v) == 0
                || json_string_length(v) > NGX_HTTP_PRESENCE_DEVICE_LEN
                || strspn(json_string_value(v),
                          "abcdefghijklmnopqrstuvwxyz0123456789_-")
                   != json_string_length(v))
            {
                goto done;
            }

            continue;
        }

        for (list = 0; list < 3; list++) {
            if (ngx_strcmp(k, names[list]) == 0) {
                break;
            }
        }

        if (list == 3 || !json_is_array(v)) {
            goto done;
        }

        total += json_array_size(v);
    }

    if (total > max) {
        goto done;
    }

    for (list = 0; list < 3; list++) {
        v = json_object_get(json, names[list]);
        n[list] = json_array_size(v);
        ids[list] = malloc(n[list] * sizeof(uint32_t) + 1);
        ngx_fuzz_assert(ids[list] != NULL);

        for (i = 0; i < n[list]; i++) {
            e = json_array_get(v, i);
            id = json_integer_value(e);

            if (!json_is_integer(e) || id < 1
                || id > NGX_HTTP_PRESENCE_MAX_ID)
            {
                goto done;
            }

            ids[list][i] = (uint32_t) id;
        }
    }

    for (list = 0; list < 3; list++) {
        for (l2 = list + 1; l2 < 3; l2++) {
            for (i = 0; i < n[list]; i++) {
                for (j = 0; j < n[l2]; j++) {
                    if (ids[list][i] == ids[l2][j]) {
                        goto done;
                    }
                }
            }
        }
    }

    rc = NGX_OK;

done:

    if (json) {
        json_decref(json);
    }

    return rc;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    u_char                      *p, *body;
    uint32_t                    *ids[3];
    ngx_int_t                    rc, ref;
    ngx_str_t                    b;
    ngx_uint_t                   text, max, list, l2, i, j, total, n[3];
    ngx_fuzz_request_t           fr;
    ngx_http_request_t          *r;
    ngx_http_presence_report_t   rep;

    if (size == 0) {
        return 0;
    }

    text = data[0] & 1;
    max = 1 + (data[0] >> 1);
    data++;
    size--;

    r = ngx_fuzz_request(&fr);

    /* the handler's body is NUL-terminated, not counted */
    body = ngx_pnalloc(r->pool, size + 1);
    ngx_fuzz_assert(body != NULL);
    ngx_memcpy(body, data, size);
    body[size] = '\0';

    b.data = body;
    b.len = size;

    rc = ngx_http_presence_gateway_parse(r->pool, &b, text, max, &rep);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);

    if (rc == NGX_DECLINED) {
        ngx_fuzz_assert(rep.error[0] != '\0');

        for (p = rep.error; *p; p++) {
            ngx_fuzz_assert(*p >= 0x20 && *p < 0x7f);
            ngx_fuzz_assert(*p != '"' || (p > rep.error && p[-1] == '\\'));
        }

        ngx_fuzz_assert(p < rep.error + NGX_HTTP_PRESENCE_GATEWAY_ERR_LEN);

    } else {
        total = 0;

        for (list = 0; list < 3; list++) {
            total += rep.n[list];

            for (i = 0; i < rep.n[list]; i++) {
                ngx_fuzz_assert(rep.ids[list][i] >= 1
                                && rep.ids[list][i]
                                   <= NGX_HTTP_PRESENCE_MAX_ID);

                for (l2 = list + 1; l2 < 3; l2++) {
                    for (j = 0; j < rep.n[l2]; j++) {
                        ngx_fuzz_assert(rep.ids[list][i]
                                        != rep.ids[l2][j]);
                    }
                }
            }
        }

        ngx_fuzz_assert(total <= max);
        ngx_fuzz_assert(rep.device.len >= 1
                        && rep.device.len <= NGX_HTTP_PRESENCE_DEVICE_LEN);

        for (i = 0; i < rep.device.len; i++) {
            ngx_fuzz_assert(ngx_strchr("abcdefghijklmnopqrstuvwxyz"
                                       "0123456789_-", rep.device.data[i])
                            != NULL);
        }
    }

    if (!text) {
        ngx_memzero(ids, sizeof(ids));
        ngx_memzero(n, sizeof(n));

        ref = reference((u_char *) data, size, max, ids, n);

        ngx_fuzz_assert(ref == rc);

        if (rc == NGX_OK) {
            for (list = 0; list < 3; list++) {
                ngx_fuzz_assert(rep.n[list] == n[list]);
                ngx_fuzz_assert(n[list] == 0
                                || ngx_memcmp(rep.ids[list], ids[list],
                                              n[list] * sizeof(uint32_t))
                                   == 0);
            }
        }

        for (list = 0; list < 3; list++) {
            free(ids[list]);
        }
    }

    ngx_fuzz_request_free(&fr);

    return 0;
}

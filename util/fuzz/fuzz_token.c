
/*
 * Copyright (C) The presence module authors
 *
 * Bearer tokens: ngx_http_presence_jwt_verify() alone, and through
 * ngx_http_presence_identify() with an Authorization header (the 401 of
 * a refused one is sent to the stubs of ngx_fuzz_module.c, which check it
 * is JSON).
 *
 * The first byte says what the rest is:
 *   bits 0-1: 0 the token as it is; 1 the signed part "header.claims",
 *             signed here; 2 the header's JSON, a NUL, the claims' JSON,
 *             encoded and signed here (random bytes are rarely signed, so
 *             1 and 2 are what reach the claims);
 *   bit 2:    through ngx_http_presence_identify(), with "Bearer " before
 *             a token made here (a raw one is the header as it is);
 *   bits 3-4: spaces after "Bearer ";
 *   bits 5-7: 7: also a token of ngx_http_presence_jwt_sign() verified,
 *             and a stream ticket of ngx_http_presence_ticket_sign(),
 *             which is no token.
 *
 * Every token is verified twice, the second time from the cache of
 * verified tokens: the answer must be the same.  No input is a stream
 * ticket (it would need the tickets' key).
 */


#include <openssl/evp.h>
#include "ngx_fuzz.h"


#define NGX_FUZZ_NOW  1800000000


static ngx_str_t  ngx_fuzz_secret = ngx_string("fuzz secret");
static ngx_str_t  ngx_fuzz_route = ngx_string("eyJzdWIiOiI3In0");


static u_char *
ngx_fuzz_sign(u_char *p, u_char *start)
{
    u_char     md[EVP_MAX_MD_SIZE];
    size_t     n;
    ngx_str_t  raw, sig;

    if (EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, ngx_fuzz_secret.data,
                  ngx_fuzz_secret.len, start, p - start, md, sizeof(md), &n)
        == NULL)
    {
        abort();
    }

    raw.data = md;
    raw.len = n;

    *p++ = '.';
    sig.data = p;
    ngx_encode_base64url(&sig, &raw);

    return p + sig.len;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                          *reason, *reason2;
    u_char                        *p, *nul, *start;
    uint8_t                        mode;
    uint32_t                       uid, uid2;
    ngx_int_t                      rc, rc2;
    ngx_str_t                      token, src, dst;
    ngx_uint_t                     i;
    ngx_table_elt_t                h;
    ngx_fuzz_request_t             fr;
    ngx_http_request_t            *r;
    ngx_http_presence_loc_conf_t   plcf;

    if (size == 0) {
        return 0;
    }

    mode = data[0];
    data++;
    size--;

    r = ngx_fuzz_request(&fr);

    /* room for "Bearer ", spaces, the encoded parts and a signature */
    start = ngx_pnalloc(r->pool, sizeof("Bearer    ") + 2 * size + 64);
    ngx_fuzz_assert(start != NULL);

    p = start;

    if (mode & 4 && mode & 3) {
        p = ngx_cpymem(p, "Bearer ", 7);

        for (i = 0; i < (ngx_uint_t) (mode >> 3 & 3); i++) {
            *p++ = ' ';
        }
    }

    token.data = p;

    switch (mode & 3) {

    case 0:
        p = ngx_cpymem(p, data, size);
        break;

    case 1:
        p = ngx_fuzz_sign(ngx_cpymem(p, data, size), token.data);
        break;

    default:
        nul = memchr(data, '\0', size);

        src.data = (u_char *) data;
        src.len = nul ? (size_t) (nul - data) : size;
        dst.data = p;
        ngx_encode_base64url(&dst, &src);
        p += dst.len;

        *p++ = '.';

        src.data = nul ? nul + 1 : (u_char *) "";
        src.len = nul ? size - src.len - 1 : 0;
        dst.data = p;
        ngx_encode_base64url(&dst, &src);
        p += dst.len;

        p = ngx_fuzz_sign(p, token.data);
    }

    token.len = p - token.data;

    /* a buffer of its own: an overrun of the token is caught */
    token.data = ngx_fuzz_copy(&fr, token.data, token.len);

    if (mode & 4) {
        ngx_memzero(&plcf, sizeof(ngx_http_presence_loc_conf_t));
        plcf.secret = ngx_fuzz_secret;
        plcf.identity = NGX_ERROR;

        ngx_memzero(&h, sizeof(ngx_table_elt_t));
        ngx_str_set(&h.key, "Authorization");
        h.value = token;

        if (mode & 3) {
            h.value.data = ngx_fuzz_copy(&fr, start, p - start);
            h.value.len = p - start;
        }

        r->headers_in.authorization = &h;

        reason = NULL;
        rc = ngx_http_presence_identify(r, &plcf, &uid, &reason);

        ngx_fuzz_assert(rc == NGX_OK || (rc == NGX_DECLINED && reason));

        if (rc == NGX_DECLINED) {
            /* the 401 of ngx_http_presence_open() */
            (void) ngx_http_presence_unauthorized(r, reason);
            ngx_fuzz_assert(r->headers_out.status == 401);
        }

        if (rc == NGX_OK) {
            ngx_fuzz_assert(uid >= 1 && uid <= NGX_HTTP_PRESENCE_MAX_ID);
        }

        goto done;
    }

    uid = 0;
    reason = NULL;
    rc = ngx_http_presence_jwt_verify(&ngx_fuzz_secret, &token,
                                      NGX_FUZZ_NOW, &uid, &reason);

    uid2 = 0;
    reason2 = NULL;
    rc2 = ngx_http_presence_jwt_verify(&ngx_fuzz_secret, &token,
                                       NGX_FUZZ_NOW, &uid2, &reason2);

    ngx_fuzz_assert(rc == NGX_OK || rc == NGX_DECLINED);
    ngx_fuzz_assert(rc == rc2);

    if (rc == NGX_OK) {
        ngx_fuzz_assert(uid == uid2);
        ngx_fuzz_assert(uid >= 1 && uid <= NGX_HTTP_PRESENCE_MAX_ID);

    } else {
        ngx_fuzz_assert(reason && reason2 && ngx_strcmp(reason, reason2) == 0);
    }

    ngx_fuzz_assert(ngx_http_presence_ticket_verify(&ngx_fuzz_secret, &token,
                                                    0, &uid2, &reason2)
                    == NGX_DECLINED);

    if (mode >> 5 == 7) {
        uid2 = (uint32_t) ngx_hash_key((u_char *) data, size)
               % NGX_HTTP_PRESENCE_MAX_ID + 1;

        ngx_fuzz_assert(ngx_http_presence_jwt_sign(r->pool, &ngx_fuzz_secret,
                                                   uid2, NGX_FUZZ_NOW,
                                                   size % 2 ? 60 : 0, &token)
                        == NGX_OK);

        ngx_fuzz_assert(ngx_http_presence_jwt_verify(&ngx_fuzz_secret, &token,
                                                     NGX_FUZZ_NOW, &uid,
                                                     &reason)
                        == NGX_OK);
        ngx_fuzz_assert(uid == uid2);

        ngx_fuzz_assert(ngx_http_presence_ticket_sign(r->pool,
                            &ngx_fuzz_secret, uid2,
                            (uint64_t) NGX_FUZZ_NOW * 1000 + 60000,
                            size % 2 ? &ngx_fuzz_route : NULL, &token)
                        == NGX_OK);

        ngx_fuzz_assert(ngx_http_presence_ticket_verify(&ngx_fuzz_secret,
                            &token, (uint64_t) NGX_FUZZ_NOW * 1000, &uid,
                            &reason)
                        == NGX_OK);
        ngx_fuzz_assert(uid == uid2);

        ngx_fuzz_assert(ngx_http_presence_jwt_verify(&ngx_fuzz_secret, &token,
                                                     NGX_FUZZ_NOW, &uid,
                                                     &reason)
                        == NGX_DECLINED);
    }

done:

    ngx_fuzz_request_free(&fr);

    return 0;
}

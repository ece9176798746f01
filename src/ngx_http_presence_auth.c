
/*
 * Copyright (C) The presence module authors
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "ngx_http_presence_auth.h"


#define NGX_HTTP_PRESENCE_SIG_LEN     43      /* base64url of 32 bytes */
#define NGX_HTTP_PRESENCE_CACHE_SETS  8192    /* power of 2, of 2 ways */
#define NGX_HTTP_PRESENCE_CACHED_MAX  280     /* longer tokens: no cache */

/*
 * A stream ticket: its route and a dot, if it has a route, then,
 * base64url-encoded, a version byte, the owner's id (4 bytes) and its
 * expiry (ms since the epoch, 8 bytes), both big-endian, then the
 * HMAC-SHA256 of these and the route with a key that is the HMAC-SHA256 of
 * the label with the secret.
 */
#define NGX_HTTP_PRESENCE_TICKET_V       1
#define NGX_HTTP_PRESENCE_TICKET_DATA    13
#define NGX_HTTP_PRESENCE_TICKET_MAC     32
#define NGX_HTTP_PRESENCE_TICKET_RAW     (NGX_HTTP_PRESENCE_TICKET_DATA      \
                                          + NGX_HTTP_PRESENCE_TICKET_MAC)
#define NGX_HTTP_PRESENCE_TICKET_BUF     (NGX_HTTP_PRESENCE_TICKET_DATA      \
                                          + EVP_MAX_MD_SIZE)
#define NGX_HTTP_PRESENCE_TICKET_LABEL   "presence stream ticket v1"


/*
 * A token verified with this secret, byte for byte: the next time it only
 * costs a hash and a compare.  Its time claims are checked on every use.
 */

typedef struct {
    u_char                      token[NGX_HTTP_PRESENCE_CACHED_MAX];
    uint16_t                    len;
    uint32_t                    uid;
    const u_char               *secret;
    time_t                      exp;          /* 0: none */
    time_t                      nbf;          /* 0: none */
} ngx_http_presence_token_cache_t;


/*
 * A keyed HMAC context per secret, reused for every token: OpenSSL's
 * one-shot HMAC() looks the algorithm up and derives the key each time,
 * which costs more than the hash; one keyed with the tickets' key derived
 * from it.  And the last header verified with the secret: tokens of one
 * issuer share it, so it is decoded once (header_len 0: none yet).
 */

#define NGX_HTTP_PRESENCE_SECRETS     8
#define NGX_HTTP_PRESENCE_HEADER_MAX  128

typedef struct {
    const u_char               *secret;
    EVP_MAC_CTX                *mac;
    EVP_MAC_CTX                *ticket;
    u_char                      header[NGX_HTTP_PRESENCE_HEADER_MAX];
    size_t                      header_len;
} ngx_http_presence_key_t;


static ngx_int_t ngx_http_presence_jwt_check(ngx_str_t *secret,
    ngx_str_t *token, u_char *dot1, u_char *dot2, uint32_t *uid, time_t *exp,
    time_t *nbf, char **reason);
static ngx_inline ngx_int_t ngx_http_presence_token_cached(
    ngx_http_presence_token_cache_t *c, ngx_str_t *secret, ngx_str_t *token);
static ngx_int_t ngx_http_presence_jwt_times(time_t exp, time_t nbf,
    time_t now, char **reason);
static json_t *ngx_http_presence_jwt_part(u_char *p, size_t len);
static ngx_int_t ngx_http_presence_jwt_time(json_t *claims, const char *name,
    time_t *t);
static void ngx_http_presence_hmac(ngx_str_t *secret, u_char *data,
    size_t len, ngx_str_t *sig);
static size_t ngx_http_presence_mac(EVP_MAC_CTX *mac, u_char *data,
    size_t len, u_char *md);
static size_t ngx_http_presence_ticket_mac(ngx_http_presence_key_t *k,
    u_char *data, ngx_str_t *route, u_char *md);
static ngx_int_t ngx_http_presence_route_valid(ngx_str_t *route);
static ngx_http_presence_key_t *ngx_http_presence_key(ngx_str_t *secret);
static void ngx_http_presence_key_free(ngx_http_presence_key_t *k);


/* 2-way: ways [0] and [1] of a set, [0] the most recently filled */
static ngx_http_presence_token_cache_t
    ngx_http_presence_token_cache[NGX_HTTP_PRESENCE_CACHE_SETS][2];

static ngx_http_presence_key_t
    ngx_http_presence_keys[NGX_HTTP_PRESENCE_SECRETS];


ngx_int_t
ngx_http_presence_jwt_verify(ngx_str_t *secret, ngx_str_t *token, time_t now,
    uint32_t *uid, char **reason)
{
    u_char                           *p, *last, *dot1, *dot2;
    time_t                            exp, nbf;
    ngx_uint_t                        key;
    ngx_http_presence_token_cache_t  *c, *set;

    if (token->len == 0 || token->len > NGX_HTTP_PRESENCE_TOKEN_MAX) {
        *reason = "malformed token";
        return NGX_DECLINED;
    }

    p = token->data;
    last = p + token->len;

    dot1 = ngx_strlchr(p, last, '.');
    if (dot1 == NULL) {
        *reason = "malformed token";
        return NGX_DECLINED;
    }

    dot2 = ngx_strlchr(dot1 + 1, last, '.');
    if (dot2 == NULL || ngx_strlchr(dot2 + 1, last, '.') != NULL
        || last - (dot2 + 1) != NGX_HTTP_PRESENCE_SIG_LEN)
    {
        *reason = "malformed token";
        return NGX_DECLINED;
    }

    key = ngx_hash_key(dot2 + 1, NGX_HTTP_PRESENCE_SIG_LEN)
          & (NGX_HTTP_PRESENCE_CACHE_SETS - 1);
    set = ngx_http_presence_token_cache[key];

    c = ngx_http_presence_token_cached(&set[0], secret, token)
        ? &set[0]
        : ngx_http_presence_token_cached(&set[1], secret, token)
          ? &set[1] : NULL;

    if (c == NULL) {
        if (ngx_http_presence_jwt_check(secret, token, dot1, dot2, uid, &exp,
                                        &nbf, reason)
            != NGX_OK)
        {
            return NGX_DECLINED;
        }

        if (token->len > NGX_HTTP_PRESENCE_CACHED_MAX) {
            return ngx_http_presence_jwt_times(exp, nbf, now, reason);
        }

        /* the older way goes */
        set[1] = set[0];
        c = &set[0];

        ngx_memcpy(c->token, token->data, token->len);
        c->len = (uint16_t) token->len;
        c->secret = secret->data;
        c->uid = *uid;
        c->exp = exp;
        c->nbf = nbf;
    }

    *uid = c->uid;

    return ngx_http_presence_jwt_times(c->exp, c->nbf, now, reason);
}


static ngx_inline ngx_int_t
ngx_http_presence_token_cached(ngx_http_presence_token_cache_t *c,
    ngx_str_t *secret, ngx_str_t *token)
{
    /* no early exit: the time taken tells nothing of a cached token */
    return c->len == token->len
           && c->secret == secret->data
           && CRYPTO_memcmp(c->token, token->data, token->len) == 0;
}


static ngx_int_t
ngx_http_presence_jwt_times(time_t exp, time_t nbf, time_t now, char **reason)
{
    if (exp && now >= exp) {
        *reason = "token expired";
        return NGX_DECLINED;
    }

    if (nbf && now < nbf) {
        *reason = "token not yet valid";
        return NGX_DECLINED;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_presence_jwt_check(ngx_str_t *secret, ngx_str_t *token, u_char *dot1,
    u_char *dot2, uint32_t *uid, time_t *exp, time_t *nbf, char **reason)
{
    u_char                   buf[EVP_MAX_MD_SIZE * 2];
    size_t                   len;
    json_t                  *header, *claims, *v;
    ngx_int_t                rc;
    ngx_str_t                sig;
    const char              *alg, *sub;
    ngx_http_presence_key_t *k;

    sig.data = buf;
    ngx_http_presence_hmac(secret, token->data, dot2 - token->data, &sig);

    if (sig.len != NGX_HTTP_PRESENCE_SIG_LEN
        || CRYPTO_memcmp(sig.data, dot2 + 1, NGX_HTTP_PRESENCE_SIG_LEN) != 0)
    {
        *reason = "bad token signature";
        return NGX_DECLINED;
    }

    /* the signature is ours: now the claims */

    k = ngx_http_presence_key(secret);
    len = dot1 - token->data;

    /* an empty header is no header: it has no "alg" */
    if (len && k && k->header_len == len
        && ngx_memcmp(k->header, token->data, len) == 0)
    {
        /* the header already seen with this secret */
        header = NULL;

    } else {
        header = ngx_http_presence_jwt_part(token->data, len);

        v = json_object_get(header, "alg");
        alg = json_is_string(v) ? json_string_value(v) : NULL;

        if (alg == NULL || ngx_strcmp(alg, "HS256") != 0) {
            *reason = header ? "token algorithm is not HS256"
                             : "malformed token";
            rc = NGX_DECLINED;
            claims = NULL;
            goto done;
        }

        if (k && len <= NGX_HTTP_PRESENCE_HEADER_MAX) {
            ngx_memcpy(k->header, token->data, len);
            k->header_len = len;
        }
    }

    claims = ngx_http_presence_jwt_part(dot1 + 1, dot2 - dot1 - 1);

    rc = NGX_DECLINED;
    *reason = "malformed token";

    if (claims == NULL) {
        goto done;
    }

    v = json_object_get(claims, "sub");
    sub = json_is_string(v) ? json_string_value(v) : NULL;

    if (sub == NULL
        || ngx_http_presence_parse_id((u_char *) sub, json_string_length(v),
                                      uid)
           != NGX_OK)
    {
        *reason = "token subject is not a user id";
        goto done;
    }

    if (ngx_http_presence_jwt_time(claims, "exp", exp) != NGX_OK
        || ngx_http_presence_jwt_time(claims, "nbf", nbf) != NGX_OK)
    {
        *reason = "bad token time claim";
        goto done;
    }

    rc = NGX_OK;

done:

    if (header) {
        json_decref(header);
    }

    if (claims) {
        json_decref(claims);
    }

    return rc;
}


static json_t *
ngx_http_presence_jwt_part(u_char *p, size_t len)
{
    u_char     buf[NGX_HTTP_PRESENCE_TOKEN_MAX];
    json_t    *json;
    ngx_str_t  src, dst;

    src.data = p;
    src.len = len;
    dst.data = buf;

    if (ngx_base64_decoded_length(len) > sizeof(buf)
        || ngx_decode_base64url(&dst, &src) != NGX_OK)
    {
        return NULL;
    }

    json = json_loadb((char *) dst.data, dst.len, JSON_REJECT_DUPLICATES,
                      NULL);

    if (json && !json_is_object(json)) {
        json_decref(json);
        return NULL;
    }

    return json;
}


static ngx_int_t
ngx_http_presence_jwt_time(json_t *claims, const char *name, time_t *t)
{
    double   d;
    json_t  *v;

    *t = 0;

    v = json_object_get(claims, name);

    if (v == NULL) {
        return NGX_OK;
    }

    if (json_is_integer(v)) {
        *t = (time_t) json_integer_value(v);

    } else if (json_is_real(v)) {
        d = json_real_value(v);

        /* 1e300 is no time: its cast to time_t would be undefined */
        if (!(d >= 1 && d < (double) NGX_MAX_TIME_T_VALUE)) {
            return NGX_ERROR;
        }

        *t = (time_t) d;

    } else {
        return NGX_ERROR;
    }

    /* a zero or negative time would read as "none" */
    return *t > 0 ? NGX_OK : NGX_ERROR;
}


static ngx_http_presence_key_t *
ngx_http_presence_key(ngx_str_t *secret)
{
    u_char                    md[EVP_MAX_MD_SIZE];
    size_t                    n;
    ngx_uint_t                i;
    OSSL_PARAM                params[2];
    EVP_MAC                  *mac;
    ngx_http_presence_key_t  *k;

    for (i = 0; i < NGX_HTTP_PRESENCE_SECRETS; i++) {
        k = &ngx_http_presence_keys[i];

        if (k->secret == secret->data) {
            return k;
        }

        if (k->secret == NULL) {
            break;
        }
    }

    if (i == NGX_HTTP_PRESENCE_SECRETS) {
        /* more secrets than slots: the last slot takes turns */
        k = &ngx_http_presence_keys[NGX_HTTP_PRESENCE_SECRETS - 1];
        ngx_http_presence_key_free(k);
    }

    mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (mac == NULL) {
        return NULL;
    }

    k->mac = EVP_MAC_CTX_new(mac);
    k->ticket = EVP_MAC_CTX_new(mac);
    EVP_MAC_free(mac);

    if (k->mac == NULL || k->ticket == NULL) {
        ngx_http_presence_key_free(k);
        return NULL;
    }

    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 (char *) "SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();

    if (!EVP_MAC_init(k->mac, secret->data, secret->len, params)) {
        ngx_http_presence_key_free(k);
        return NULL;
    }

    /* the tickets' key: HMAC-SHA256(secret, label) */

    n = ngx_http_presence_mac(k->mac, (u_char *) NGX_HTTP_PRESENCE_TICKET_LABEL,
                              sizeof(NGX_HTTP_PRESENCE_TICKET_LABEL) - 1, md);

    if (n == 0 || !EVP_MAC_init(k->ticket, md, n, params)) {
        OPENSSL_cleanse(md, sizeof(md));
        ngx_http_presence_key_free(k);
        return NULL;
    }

    OPENSSL_cleanse(md, sizeof(md));

    k->secret = secret->data;
    k->header_len = 0;

    return k;
}


static void
ngx_http_presence_key_free(ngx_http_presence_key_t *k)
{
    EVP_MAC_CTX_free(k->mac);
    EVP_MAC_CTX_free(k->ticket);
    ngx_memzero(k, sizeof(ngx_http_presence_key_t));
}


/* the MAC of "data" with a keyed context; 0: it failed */

static size_t
ngx_http_presence_mac(EVP_MAC_CTX *mac, u_char *data, size_t len, u_char *md)
{
    size_t  n;

    /* a NULL key: the one the context was keyed with */
    if (!EVP_MAC_init(mac, NULL, 0, NULL)
        || !EVP_MAC_update(mac, data, len)
        || !EVP_MAC_final(mac, md, &n, EVP_MAX_MD_SIZE))
    {
        return 0;
    }

    return n;
}


static void
ngx_http_presence_hmac(ngx_str_t *secret, u_char *data, size_t len,
    ngx_str_t *sig)
{
    u_char                    md[EVP_MAX_MD_SIZE];
    size_t                    n;
    ngx_str_t                 raw;
    ngx_http_presence_key_t  *k;

    sig->len = 0;

    k = ngx_http_presence_key(secret);
    if (k == NULL) {
        return;
    }

    n = ngx_http_presence_mac(k->mac, data, len, md);
    if (n == 0) {
        return;
    }

    raw.data = md;
    raw.len = n;

    ngx_encode_base64url(sig, &raw);
}


ngx_int_t
ngx_http_presence_jwt_sign(ngx_pool_t *pool, ngx_str_t *secret, uint32_t uid,
    time_t now, time_t ttl, ngx_str_t *token)
{
    u_char     *p, claims[128];
    ngx_str_t   header, payload, src, sig;

    ngx_str_set(&header, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");

    src.data = claims;

    if (ttl) {
        src.len = ngx_sprintf(claims, "{\"sub\":\"%uD\",\"iat\":%T,\"exp\":%T}",
                              uid, now, now + ttl)
                  - claims;

    } else {
        src.len = ngx_sprintf(claims, "{\"sub\":\"%uD\",\"iat\":%T}", uid, now)
                  - claims;
    }

    payload.len = ngx_base64_encoded_length(src.len);

    token->data = ngx_pnalloc(pool, header.len + 1 + payload.len + 1
                                    + ngx_base64_encoded_length(EVP_MAX_MD_SIZE));
    if (token->data == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(token->data, header.data, header.len);
    *p++ = '.';

    payload.data = p;
    ngx_encode_base64url(&payload, &src);
    p += payload.len;

    sig.data = p + 1;
    ngx_http_presence_hmac(secret, token->data, p - token->data, &sig);

    if (sig.len == 0) {
        return NGX_ERROR;
    }

    *p++ = '.';
    token->len = p + sig.len - token->data;

    return NGX_OK;
}


ngx_int_t
ngx_http_presence_ticket_sign(ngx_pool_t *pool, ngx_str_t *secret,
    uint32_t uid, uint64_t exp, ngx_str_t *route, ngx_str_t *ticket)
{
    u_char                    raw[NGX_HTTP_PRESENCE_TICKET_BUF], *p;
    size_t                    n;
    ngx_str_t                 src, dst, none;
    ngx_uint_t                i;
    ngx_http_presence_key_t  *k;

    ngx_str_null(&none);

    if (route == NULL || ngx_http_presence_route_valid(route) != NGX_OK) {
        route = &none;
    }

    k = ngx_http_presence_key(secret);
    if (k == NULL) {
        return NGX_ERROR;
    }

    raw[0] = NGX_HTTP_PRESENCE_TICKET_V;

    for (i = 0; i < 4; i++) {
        raw[1 + i] = (u_char) (uid >> (24 - 8 * i));
    }

    for (i = 0; i < 8; i++) {
        raw[5 + i] = (u_char) (exp >> (56 - 8 * i));
    }

    n = ngx_http_presence_ticket_mac(k, raw, route,
                                     raw + NGX_HTTP_PRESENCE_TICKET_DATA);

    if (n != NGX_HTTP_PRESENCE_TICKET_MAC) {
        return NGX_ERROR;
    }

    p = ngx_pnalloc(pool, route->len + 1 + NGX_HTTP_PRESENCE_TICKET_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ticket->data = p;

    if (route->len) {
        p = ngx_cpymem(p, route->data, route->len);
        *p++ = '.';
    }

    src.data = raw;
    src.len = NGX_HTTP_PRESENCE_TICKET_RAW;
    dst.data = p;

    ngx_encode_base64url(&dst, &src);

    ticket->len = p + dst.len - ticket->data;

    return NGX_OK;
}


ngx_int_t
ngx_http_presence_ticket_verify(ngx_str_t *secret, ngx_str_t *ticket,
    uint64_t now, uint32_t *uid, char **reason)
{
    u_char                    raw[NGX_HTTP_PRESENCE_TICKET_RAW];
    u_char                    md[EVP_MAX_MD_SIZE], *p, *last;
    size_t                    n;
    uint32_t                  id;
    uint64_t                  exp;
    ngx_str_t                 src, dst, route;
    ngx_uint_t                i;
    ngx_http_presence_key_t  *k;

    *reason = "malformed ticket";

    /* the route, up to the last dot */

    last = ticket->data + ticket->len;
    ngx_str_null(&route);

    for (p = last; p > ticket->data; p--) {
        if (p[-1] == '.') {
            route.data = ticket->data;
            route.len = p - 1 - ticket->data;
            break;
        }
    }

    src.data = p;
    src.len = last - p;

    if (src.len != NGX_HTTP_PRESENCE_TICKET_LEN
        || (route.data && ngx_http_presence_route_valid(&route) != NGX_OK))
    {
        return NGX_DECLINED;
    }

    dst.data = raw;

    if (ngx_decode_base64url(&dst, &src) != NGX_OK
        || dst.len != NGX_HTTP_PRESENCE_TICKET_RAW
        || raw[0] != NGX_HTTP_PRESENCE_TICKET_V)
    {
        return NGX_DECLINED;
    }

    k = ngx_http_presence_key(secret);
    if (k == NULL) {
        *reason = "no key for tickets";
        return NGX_DECLINED;
    }

    n = ngx_http_presence_ticket_mac(k, raw, &route, md);

    if (n != NGX_HTTP_PRESENCE_TICKET_MAC
        || CRYPTO_memcmp(md, raw + NGX_HTTP_PRESENCE_TICKET_DATA,
                         NGX_HTTP_PRESENCE_TICKET_MAC)
           != 0)
    {
        *reason = "bad ticket signature";
        return NGX_DECLINED;
    }

    /* the ticket is ours: now its contents */

    id = 0;
    for (i = 0; i < 4; i++) {
        id = (id << 8) | raw[1 + i];
    }

    exp = 0;
    for (i = 0; i < 8; i++) {
        exp = (exp << 8) | raw[5 + i];
    }

    if (id == 0 || id > NGX_HTTP_PRESENCE_MAX_ID) {
        return NGX_DECLINED;
    }

    if (now && now >= exp) {
        *reason = "ticket expired";
        return NGX_DECLINED;
    }

    *uid = id;

    return NGX_OK;
}


/* the MAC of a ticket's data and route; 0: it failed */

static size_t
ngx_http_presence_ticket_mac(ngx_http_presence_key_t *k, u_char *data,
    ngx_str_t *route, u_char *md)
{
    size_t  n;

    if (!EVP_MAC_init(k->ticket, NULL, 0, NULL)
        || !EVP_MAC_update(k->ticket, data, NGX_HTTP_PRESENCE_TICKET_DATA)
        || (route->len
            && !EVP_MAC_update(k->ticket, route->data, route->len))
        || !EVP_MAC_final(k->ticket, md, &n, EVP_MAX_MD_SIZE))
    {
        return 0;
    }

    return n;
}


/* a route: 1..NGX_HTTP_PRESENCE_ROUTE_MAX base64url characters */

static ngx_int_t
ngx_http_presence_route_valid(ngx_str_t *route)
{
    u_char  c, *p, *last;

    if (route->len == 0 || route->len > NGX_HTTP_PRESENCE_ROUTE_MAX) {
        return NGX_DECLINED;
    }

    last = route->data + route->len;

    for (p = route->data; p < last; p++) {
        c = *p;

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
              || (c >= '0' && c <= '9') || c == '-' || c == '_'))
        {
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_presence_parse_id(u_char *p, size_t len, uint32_t *id)
{
    uint64_t  n;

    if (len == 0 || len > 10 || *p == '0') {
        return NGX_ERROR;
    }

    for (n = 0; len; len--, p++) {
        if (*p < '0' || *p > '9') {
            return NGX_ERROR;
        }

        n = n * 10 + (*p - '0');
    }

    if (n > NGX_HTTP_PRESENCE_MAX_ID) {
        return NGX_ERROR;
    }

    *id = (uint32_t) n;

    return NGX_OK;
}

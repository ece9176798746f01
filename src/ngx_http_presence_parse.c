
/*
 * Copyright (C) The presence module authors
 *
 * The pure parsers of the API: ids, path ids, request bodies (PUT
 * /v1/status, POST /v1/users, POST /v1/presence), the search's arguments
 * and the channels of an event stream.  No table, no store: what they
 * read is the request, what they write is its pool.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>
#include "ngx_http_presence.h"


/* the digits of NGX_HTTP_PRESENCE_MAX_ID */
#define NGX_HTTP_PRESENCE_ID_DIGITS  10

#define NGX_HTTP_PRESENCE_LIMIT_MAX    100
#define NGX_HTTP_PRESENCE_LIMIT        20

/* ids of one list, tagged with the list, to find an id in two lists */
#define ngx_http_presence_tag(id, list)  (((uint64_t) (id) << 2) | (list))


/* the 400's message of a body, NUL-terminated */
#define ngx_http_presence_gateway_fail(rep, ...)                              \
    *ngx_snprintf((rep)->error, NGX_HTTP_PRESENCE_GATEWAY_ERR_LEN - 1,        \
                  __VA_ARGS__) = '\0'


/* an array of integers read by the fast path (see below) */
typedef struct {
    uint32_t                   *ids;
    ngx_uint_t                  n;
    ngx_uint_t                  bad;        /* index of the first bad id */
    int64_t                     value;      /* its value */
    ngx_uint_t                  has_bad;
    ngx_uint_t                  used;       /* claimed by a list */
} ngx_http_presence_fast_t;


static ngx_int_t ngx_http_presence_valid_name(const char *name, size_t len);
static ngx_int_t ngx_http_presence_gateway_fast(ngx_pool_t *pool, u_char *p,
    u_char *last, ngx_http_presence_fast_t *fast, u_char **end);
static ngx_int_t ngx_http_presence_gateway_json(ngx_pool_t *pool,
    ngx_str_t *body, ngx_uint_t max, ngx_http_presence_report_t *rep);
static ngx_int_t ngx_http_presence_gateway_text(ngx_pool_t *pool,
    ngx_str_t *body, ngx_uint_t max, ngx_http_presence_report_t *rep);
static ngx_int_t ngx_http_presence_gateway_list(ngx_str_t *key);
static ngx_int_t ngx_http_presence_gateway_device(
    ngx_http_presence_report_t *rep, u_char *p, size_t len);
static ngx_int_t ngx_http_presence_gateway_token(
    ngx_http_presence_report_t *rep, ngx_uint_t list, ngx_uint_t i,
    u_char *p, size_t len, uint32_t *id);
static ngx_int_t ngx_http_presence_gateway_twice(ngx_pool_t *pool,
    ngx_http_presence_report_t *rep);
static int ngx_libc_cdecl ngx_http_presence_tag_cmp(const void *one,
    const void *two);


static ngx_str_t  ngx_http_presence_lists[] = {
    ngx_string("online"),
    ngx_string("idle"),
    ngx_string("gone")
};


#if (NGX_HAVE_LITTLE_ENDIAN)

/*
 * The id of 1 to 7 digits at p followed by a comma, 8 bytes readable at
 * p: its length, its value in *v; 0: not such an id (the scalar scan
 * decides).  Eight characters at a time: a byte is a digit when neither
 * it - '0' borrows nor it + 0x46 carries into its top bit; the first
 * that is not ends the id; the digits, moved to the top, are summed in
 * pairs, fours and eights by three multiplications.
 */

static ngx_inline ngx_uint_t
ngx_http_presence_parse_id8(u_char *p, uint32_t *v)
{
    uint64_t    x, bad;
    ngx_uint_t  len;

    ngx_memcpy(&x, p, 8);

    bad = ((x - 0x3030303030303030ULL) | (x + 0x4646464646464646ULL) | x)
          & 0x8080808080808080ULL;

    if (bad == 0) {
        /* 8 digits or more */
        return 0;
    }

    len = __builtin_ctzll(bad) / 8;

    if (len == 0 || p[len] != ',' || p[0] == '0') {
        return 0;
    }

    /* the digits in the top len bytes, zeros below them */
    x <<= 8 * (8 - len);

    x = ((x & 0x0f0f0f0f0f0f0f0fULL) * 2561) >> 8;
    x = ((x & 0x00ff00ff00ff00ffULL) * 6553601) >> 16;
    *v = (uint32_t) (((x & 0x0000ffff0000ffffULL) * 42949672960001ULL) >> 32);

    return len;
}

#endif


/*
 * A comma-separated list of ids, URI-escaped or not.  NGX_DECLINED: not a
 * list of valid ids, NGX_BUSY: more than max of them.
 */

ngx_int_t
ngx_http_presence_parse_ids(ngx_http_request_t *r, ngx_str_t *arg,
    ngx_uint_t max, uint32_t **ids, ngx_uint_t *pn)
{
    u_char      *p, *last, *start, *dst;
    uint32_t    *list, id;
    uint64_t     v;
    ngx_str_t    s;
    ngx_uint_t   n, ok, len;

    if (memchr(arg->data, '%', arg->len) == NULL) {
        /* nothing escaped: the argument as it is, read only */
        s = *arg;

    } else {
        s.data = ngx_pnalloc(r->pool, arg->len);
        if (s.data == NULL) {
            return NGX_ERROR;
        }

        dst = s.data;
        p = arg->data;
        ngx_unescape_uri(&dst, &p, arg->len, 0);
        s.len = dst - s.data;
    }

    last = s.data + s.len;

    /* an id and its comma take 2 characters at least */
    list = ngx_palloc(r->pool, ngx_min(s.len / 2 + 1, max) * sizeof(uint32_t));
    if (list == NULL) {
        return NGX_ERROR;
    }

    /*
     * All ids valid, or none taken: a bad list is one 400.  The rules of
     * ngx_http_presence_parse_id() (1 to NGX_HTTP_PRESENCE_ID_DIGITS
     * digits, no leading zero, at most NGX_HTTP_PRESENCE_MAX_ID), in the
     * scan for the comma.
     */

    p = s.data;
    n = 0;

    for ( ;; ) {

#if (NGX_HAVE_LITTLE_ENDIAN)

        /* the ids but the last, the ordinary case, eight bytes at a time */

        if (last - p >= 8) {
            len = ngx_http_presence_parse_id8(p, &id);

            if (len) {
                if (n == max) {
                    return NGX_BUSY;
                }

                list[n++] = id;
                p += len + 1;
                continue;
            }
        }

#endif

        v = 0;
        ok = (p < last && *p != '0');

        /* the digits, then one test of what ended them and of their count */

        for (start = p; p < last && (u_char) (*p - '0') <= 9; p++) {
            v = v * 10 + (*p - '0');
        }

        ok = ok && (p == last || *p == ',') && p > start
             && p - start <= NGX_HTTP_PRESENCE_ID_DIGITS
             && v <= NGX_HTTP_PRESENCE_MAX_ID;

        if (n == max) {
            return ok ? NGX_BUSY : NGX_DECLINED;
        }

        if (!ok) {
            return NGX_DECLINED;
        }

        list[n++] = (uint32_t) v;

        if (p == last) {
            break;
        }

        p++;
    }

    *ids = list;
    *pn = n;

    return NGX_OK;
}


/*
 * The id after the location's name: NGX_OK; NGX_DECLINED: there is no
 * "/..." part ("rest" is empty); NGX_ERROR: not a user id.
 */

ngx_int_t
ngx_http_presence_path_id(ngx_http_request_t *r, ngx_str_t *rest,
    uint32_t *id)
{
    if (rest->len == 0) {
        return NGX_DECLINED;
    }

    if (ngx_http_presence_parse_id(rest->data + 1, rest->len - 1, id)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* a PUT /v1/status body; NGX_DECLINED: not one */

ngx_int_t
ngx_http_presence_parse_status(ngx_str_t *body, ngx_uint_t *online)
{
    json_t      *json, *v;
    ngx_int_t    rc;
    const char  *status;

    json = json_loadb((char *) body->data, body->len, JSON_REJECT_DUPLICATES,
                      NULL);

    v = json_is_object(json) ? json_object_get(json, "status") : NULL;
    status = json_is_string(v) ? json_string_value(v) : NULL;

    rc = NGX_DECLINED;

    if (status && ngx_strcmp(status, "online") == 0) {
        *online = 1;
        rc = NGX_OK;

    } else if (status && ngx_strcmp(status, "offline") == 0) {
        *online = 0;
        rc = NGX_OK;
    }

    if (json) {
        json_decref(json);
    }

    return rc;
}


/*
 * The name of a POST /v1/users body, copied to the pool; NGX_DECLINED: not
 * such a body.
 */

ngx_int_t
ngx_http_presence_parse_user(ngx_pool_t *pool, ngx_str_t *body,
    ngx_str_t *name)
{
    json_t      *json, *v;
    ngx_int_t    rc;
    const char  *s;

    json = json_loadb((char *) body->data, body->len, JSON_REJECT_DUPLICATES,
                      NULL);

    v = json_is_object(json) ? json_object_get(json, "name") : NULL;
    s = json_is_string(v) ? json_string_value(v) : NULL;

    if (s == NULL
        || ngx_http_presence_valid_name(s, json_string_length(v)) != NGX_OK)
    {
        rc = NGX_DECLINED;
        goto done;
    }

    name->len = json_string_length(v);
    name->data = ngx_pnalloc(pool, name->len);
    if (name->data == NULL) {
        rc = NGX_ERROR;
        goto done;
    }

    ngx_memcpy(name->data, s, name->len);
    rc = NGX_OK;

done:

    if (json) {
        json_decref(json);
    }

    return rc;
}


/*
 * 1..255 characters of printable UTF-8: no C0 or C1 control characters,
 * no DEL.  jansson already checked that the bytes are UTF-8.
 */

static ngx_int_t
ngx_http_presence_valid_name(const char *name, size_t len)
{
    u_char      *p, *last;
    uint32_t     c;
    ngx_uint_t   n;

    p = (u_char *) name;
    last = p + len;
    n = 0;

    while (p < last) {
        /* ngx_utf8_decode() takes multibyte sequences only */
        c = (*p < 0x80) ? *p++ : ngx_utf8_decode(&p, last - p);

        if (c > 0x10ffff || c < 0x20 || (c >= 0x7f && c <= 0x9f)
            || c == 0x2028 || c == 0x2029)
        {
            return NGX_ERROR;
        }

        n++;
    }

    return (n >= 1 && n <= NGX_HTTP_PRESENCE_NAME_MAX) ? NGX_OK : NGX_ERROR;
}

/*
 * The search's "q" and "limit"; NGX_DECLINED: they are not valid ("reason"
 * says why).  The "+" of "q" are spaces.
 */

ngx_int_t
ngx_http_presence_search_args(ngx_http_request_t *r, ngx_str_t *q,
    ngx_int_t *limit, char **reason)
{
    u_char     *dst, *src;
    ngx_str_t   arg;

    if (ngx_http_arg(r, (u_char *) "q", sizeof("q") - 1, &arg) != NGX_OK
        || arg.len == 0
        || arg.len > 4 * NGX_HTTP_PRESENCE_NAME_MAX * 3)
    {
        *reason = "q must hold 1 to "
                  NGX_PRESENCE_S(NGX_HTTP_PRESENCE_NAME_MAX)
                  " characters";
        return NGX_DECLINED;
    }

    q->data = ngx_pnalloc(r->pool, arg.len);
    if (q->data == NULL) {
        return NGX_ERROR;
    }

    /* query strings use "+" for spaces */
    for (src = arg.data; src < arg.data + arg.len; src++) {
        if (*src == '+') {
            *src = ' ';
        }
    }

    dst = q->data;
    src = arg.data;
    ngx_unescape_uri(&dst, &src, arg.len, 0);
    q->len = dst - q->data;

    if (q->len == 0
        || ngx_utf8_length(q->data, q->len) == (size_t) -1
        || ngx_utf8_length(q->data, q->len) > NGX_HTTP_PRESENCE_NAME_MAX
        || ngx_strlchr(q->data, q->data + q->len, '\0'))
    {
        *reason = "q must hold 1 to "
                  NGX_PRESENCE_S(NGX_HTTP_PRESENCE_NAME_MAX)
                  " characters of UTF-8";
        return NGX_DECLINED;
    }

    *limit = NGX_HTTP_PRESENCE_LIMIT;

    if (ngx_http_arg(r, (u_char *) "limit", sizeof("limit") - 1, &arg)
        == NGX_OK)
    {
        *limit = ngx_atoi(arg.data, arg.len);

        if (*limit < 1 || *limit > NGX_HTTP_PRESENCE_LIMIT_MAX) {
            *reason = "limit must be in 1.."
                  NGX_PRESENCE_S(NGX_HTTP_PRESENCE_LIMIT_MAX);
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


/* the length of the channel list of these ids, "presence.1,presence.2" */

size_t
ngx_http_presence_channels_len(uint32_t *list, ngx_uint_t n)
{
    u_char      buf[NGX_INT32_LEN];
    size_t      len;
    ngx_uint_t  i;

    len = 0;

    for (i = 0; i < n; i++) {
        len += (i ? 1 : 0) + sizeof(NGX_PRESENCE_CHANNEL_PREFIX) - 1
               + (ngx_sprintf(buf, "%uD", list[i]) - buf);
    }

    return len;
}


/*
 * The nchan channels of the ids in "?ids=", "presence.1,presence.2".
 * NGX_DECLINED: the list is not valid or does not fit nchan's channel id.
 */

ngx_int_t
ngx_http_presence_parse_channels(ngx_http_request_t *r, ngx_str_t *channels)
{
    u_char      *p;
    uint32_t    *list;
    ngx_str_t    arg;
    ngx_uint_t   i, n;

    if (ngx_http_arg(r, (u_char *) "ids", sizeof("ids") - 1, &arg) != NGX_OK
        || ngx_http_presence_parse_ids(r, &arg,
                                       NGX_HTTP_PRESENCE_EVENTS_IDS_MAX,
                                       &list, &n)
           != NGX_OK
        || ngx_http_presence_channels_len(list, n)
           > NGX_HTTP_PRESENCE_CHANNELS_MAX)
    {
        return NGX_DECLINED;
    }

    p = ngx_pnalloc(r->pool,
                    n * (sizeof(NGX_PRESENCE_CHANNEL_PREFIX) + NGX_INT32_LEN));
    if (p == NULL) {
        return NGX_ERROR;
    }

    channels->data = p;

    for (i = 0; i < n; i++) {
        p = ngx_sprintf(p, "%s" NGX_PRESENCE_CHANNEL_PREFIX "%uD",
                        i ? "," : "", list[i]);
    }

    channels->len = p - channels->data;

    return NGX_OK;
}


/*
 * A gateway body, JSON or the text form.  NGX_DECLINED: not a valid one
 * (more than "max" ids, a bad id, an id in two lists...), the reason in
 * rep->error; NGX_ERROR: out of memory.  "body" must be NUL-terminated.
 */

ngx_int_t
ngx_http_presence_gateway_parse(ngx_pool_t *pool, ngx_str_t *body,
    ngx_uint_t text, ngx_uint_t max, ngx_http_presence_report_t *rep)
{
    ngx_int_t   rc;
    ngx_uint_t  list;

    for (list = 0; list < NGX_HTTP_PRESENCE_LISTS; list++) {
        rep->ids[list] = NULL;
        rep->n[list] = 0;
    }

    ngx_str_set(&rep->device, "gateway");
    rep->error[0] = '\0';

    rc = text ? ngx_http_presence_gateway_text(pool, body, max, rep)
              : ngx_http_presence_gateway_json(pool, body, max, rep);

    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_presence_gateway_twice(pool, rep);
}


/*
 * The fast path: an array that is the value of a member of the top-level
 * object and holds nothing but JSON integers is read here, and replaced
 * in a copy of the body by the marker -(k + 1) (k: its place among such
 * arrays); jansson then parses and checks the whole of what is left, a
 * tree of a few nodes instead of one per id.  An array with anything else
 * in it (a float, a string, a nested array...) is left to jansson.
 */

static ngx_int_t
ngx_http_presence_gateway_fast(ngx_pool_t *pool, u_char *p, u_char *last,
    ngx_http_presence_fast_t *fast, u_char **end)
{
    u_char      *q, *t, *d;
    int64_t      v;
    ngx_uint_t   n, i;

    /* p is at '[': only digits, signs, commas and blanks up to ']' */

    n = 0;

    for (q = p + 1; q < last; q++) {
        if (*q == ',') {
            n++;
            continue;
        }

        if (!((*q >= '0' && *q <= '9') || *q == '-' || *q == ' '
              || *q == '\t' || *q == '\r' || *q == '\n'))
        {
            break;
        }
    }

    if (q == last || *q != ']') {
        return NGX_DECLINED;
    }

    *end = q + 1;

    for (t = p + 1; t < q; t++) {
        if (*t != ' ' && *t != '\t' && *t != '\r' && *t != '\n') {
            break;
        }
    }

    fast->n = 0;
    fast->has_bad = 0;
    fast->used = 0;

    if (t == q) {
        /* [] */
        fast->ids = NULL;
        return NGX_OK;
    }

    n++;

    fast->ids = ngx_pnalloc(pool, n * sizeof(uint32_t));
    if (fast->ids == NULL) {
        return NGX_ERROR;
    }

    t = p + 1;

    for (i = 0; i < n; i++) {
        while (*t == ' ' || *t == '\t' || *t == '\r' || *t == '\n') {
            t++;
        }

        /* a JSON integer: -?(0|[1-9][0-9]*), at most 18 digits here */

        d = (*t == '-') ? t + 1 : t;

        if (*d < '0' || *d > '9' || (*d == '0' && d[1] >= '0' && d[1] <= '9'))
        {
            return NGX_DECLINED;
        }

        for (v = 0; *d >= '0' && *d <= '9'; d++) {
            if (v > 99999999999999999LL) {
                return NGX_DECLINED;
            }

            v = v * 10 + (*d - '0');
        }

        if (*t == '-') {
            v = -v;
        }

        t = d;

        while (*t == ' ' || *t == '\t' || *t == '\r' || *t == '\n') {
            t++;
        }

        if (*t != (i == n - 1 ? ']' : ',')) {
            return NGX_DECLINED;
        }

        t++;

        if ((v < 1 || v > NGX_HTTP_PRESENCE_MAX_ID) && !fast->has_bad) {
            fast->has_bad = 1;
            fast->bad = i;
            fast->value = v;
        }

        fast->ids[i] = (uint32_t) v;
    }

    fast->n = n;

    return NGX_OK;
}


/* the body with its integer arrays read and marked; jansson for the rest */

static ngx_int_t
ngx_http_presence_gateway_json(ngx_pool_t *pool, ngx_str_t *body,
    ngx_uint_t max, ngx_http_presence_report_t *rep)
{
    u_char                    *skel, *p, *last, *end;
    json_t                    *json, *v, *e, *arr[NGX_HTTP_PRESENCE_LISTS];
    uint32_t                  *ids;
    ngx_int_t                  rc, found;
    ngx_str_t                  key;
    json_int_t                 id;
    ngx_uint_t                 total, list, i, n, depth, object, nfast;
    const char                *k;
    ngx_http_presence_fast_t   fast[NGX_HTTP_PRESENCE_LISTS];
    ngx_http_presence_fast_t  *f[NGX_HTTP_PRESENCE_LISTS];

    skel = ngx_pnalloc(pool, body->len + 1);
    if (skel == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(skel, body->data, body->len);
    skel[body->len] = '\0';

    p = skel;
    last = skel + body->len;

    while (p < last && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    {
        p++;
    }

    /*
     * Whatever the marks make of a body that is not JSON, it is no valid
     * gateway body either: a mark can only complete a number ("1e" and
     * "-1" make a real number, not an array).
     */

    object = (p < last && *p == '{');
    depth = 0;
    nfast = 0;

    while (p < last) {
        switch (*p) {

        case '"':
            for (p++; p < last && *p != '"'; p++) {
                if (*p == '\\' && ++p == last) {
                    break;
                }
            }

            break;

        case '{':
            depth++;
            break;

        case '[':
            if (depth == 1 && object && nfast < NGX_HTTP_PRESENCE_LISTS) {
                rc = ngx_http_presence_gateway_fast(pool, p, last,
                                                    &fast[nfast], &end);
                if (rc == NGX_ERROR) {
                    return NGX_ERROR;
                }

                if (rc == NGX_OK) {
                    /* the marker, then blanks up to the end of the array */
                    p[0] = '-';
                    p[1] = (u_char) ('1' + nfast++);
                    ngx_memset(p + 2, ' ', end - p - 2);
                    p = end;
                    continue;
                }
            }

            depth++;
            break;

        case '}':
        case ']':
            depth--;
            break;
        }

        p++;
    }

    json = json_loadb((char *) skel, body->len, JSON_REJECT_DUPLICATES, NULL);

    if (!json_is_object(json)) {
        ngx_http_presence_gateway_fail(rep, "body must be a JSON object "
                                       "{\\\"online\\\": [ids], ...} or "
                                       "text/plain lines");
        rc = NGX_DECLINED;
        goto done;
    }

    /* the lists' sizes first: no id is looked at past "max" */

    for (list = 0; list < NGX_HTTP_PRESENCE_LISTS; list++) {
        arr[list] = NULL;
        f[list] = NULL;
    }

    total = 0;

    json_object_foreach(json, k, v) {
        key.data = (u_char *) k;
        key.len = ngx_strlen(k);

        if (key.len == sizeof("device") - 1
            && ngx_strncmp(k, "device", sizeof("device") - 1) == 0)
        {
            if (!json_is_string(v)
                || ngx_http_presence_gateway_device(rep,
                                         (u_char *) json_string_value(v),
                                         json_string_length(v))
                   != NGX_OK)
            {
                ngx_http_presence_gateway_fail(rep, "device must be 1..%d "
                                               "characters of a-z 0-9 _ -",
                                               NGX_HTTP_PRESENCE_DEVICE_LEN);
                rc = NGX_DECLINED;
                goto done;
            }

            /* jansson's string goes with the tree */
            rep->device.data = ngx_pstrdup(pool, &rep->device);
            if (rep->device.data == NULL) {
                rc = NGX_ERROR;
                goto done;
            }

            continue;
        }

        found = ngx_http_presence_gateway_list(&key);

        if (found == NGX_ERROR) {
            ngx_http_presence_gateway_fail(rep, "unknown field: the fields "
                                           "are device, online, idle and "
                                           "gone");
            rc = NGX_DECLINED;
            goto done;
        }

        list = (ngx_uint_t) found;

        if (json_is_array(v)) {
            arr[list] = v;
            total += json_array_size(v);
            continue;
        }

        /* a marker, each claimed once: a literal -1 of the body is none */

        if (json_is_integer(v)
            && json_integer_value(v) <= -1
            && json_integer_value(v) >= -(json_int_t) nfast
            && !fast[-json_integer_value(v) - 1].used)
        {
            f[list] = &fast[-json_integer_value(v) - 1];
            f[list]->used = 1;
            total += f[list]->n;
            continue;
        }

        ngx_http_presence_gateway_fail(rep, "%V must be an array of "
                                       "user ids",
                                       &ngx_http_presence_lists[list]);
        rc = NGX_DECLINED;
        goto done;
    }

    if (total > max) {
        ngx_http_presence_gateway_fail(rep, "more than %ui ids "
                                       "(presence_gateway_max)", max);
        rc = NGX_DECLINED;
        goto done;
    }

    for (list = 0; list < NGX_HTTP_PRESENCE_LISTS; list++) {

        if (f[list]) {
            if (f[list]->has_bad) {
                ngx_http_presence_gateway_fail(rep, "%V[%ui]: %L is not a "
                                               "user id (1..%d)",
                                         &ngx_http_presence_lists[list],
                                         f[list]->bad, f[list]->value,
                                         NGX_HTTP_PRESENCE_MAX_ID);
                rc = NGX_DECLINED;
                goto done;
            }

            rep->ids[list] = f[list]->ids;
            rep->n[list] = f[list]->n;
            continue;
        }

        n = json_array_size(arr[list]);

        if (n == 0) {
            continue;
        }

        ids = ngx_pnalloc(pool, n * sizeof(uint32_t));
        if (ids == NULL) {
            rc = NGX_ERROR;
            goto done;
        }

        for (i = 0; i < n; i++) {
            e = json_array_get(arr[list], i);

            if (!json_is_integer(e)) {
                ngx_http_presence_gateway_fail(rep, "%V[%ui] is not a user "
                                               "id (1..%d)",
                                         &ngx_http_presence_lists[list], i,
                                         NGX_HTTP_PRESENCE_MAX_ID);
                rc = NGX_DECLINED;
                goto done;
            }

            id = json_integer_value(e);

            if (id < 1 || id > NGX_HTTP_PRESENCE_MAX_ID) {
                ngx_http_presence_gateway_fail(rep, "%V[%ui]: %L is not a "
                                               "user id (1..%d)",
                                         &ngx_http_presence_lists[list], i,
                                         (int64_t) id,
                                         NGX_HTTP_PRESENCE_MAX_ID);
                rc = NGX_DECLINED;
                goto done;
            }

            ids[i] = (uint32_t) id;
        }

        rep->ids[list] = ids;
        rep->n[list] = n;
    }

    rc = NGX_OK;

done:

    if (json) {
        json_decref(json);
    }

    return rc;
}


/*
 * The text form: one line per list, "online 1,2,3", "idle 4", "gone 5",
 * "device ws"; each at most once, blank lines ignored, "\r\n" as "\n",
 * blanks around ids allowed.
 */

static ngx_int_t
ngx_http_presence_gateway_text(ngx_pool_t *pool, ngx_str_t *body,
    ngx_uint_t max, ngx_http_presence_report_t *rep)
{
    u_char      *p, *last, *eol, *sp, *comma, *t, *te;
    uint32_t    *ids;
    ngx_int_t    found;
    ngx_str_t    key;
    ngx_uint_t   total, line, list, n, i, seen;

    p = body->data;
    last = body->data + body->len;
    total = 0;
    line = 0;
    seen = 0;

    while (p < last) {
        line++;

        eol = ngx_strlchr(p, last, '\n');
        if (eol == NULL) {
            eol = last;
        }

        te = eol;

        while (te > p && (te[-1] == '\r' || te[-1] == ' ' || te[-1] == '\t'))
        {
            te--;
        }

        if (te == p) {
            p = eol + 1;
            continue;
        }

        sp = p;

        while (sp < te && *sp != ' ' && *sp != '\t') {
            sp++;
        }

        key.data = p;
        key.len = sp - p;

        while (sp < te && (*sp == ' ' || *sp == '\t')) {
            sp++;
        }

        if (key.len == sizeof("device") - 1
            && ngx_strncmp(key.data, "device", sizeof("device") - 1) == 0)
        {
            if (seen & (1 << NGX_HTTP_PRESENCE_LISTS)) {
                ngx_http_presence_gateway_fail(rep, "line %ui: device "
                                               "given twice", line);
                return NGX_DECLINED;
            }

            seen |= 1 << NGX_HTTP_PRESENCE_LISTS;

            if (ngx_http_presence_gateway_device(rep, sp, te - sp) != NGX_OK)
            {
                ngx_http_presence_gateway_fail(rep, "line %ui: device must "
                                               "be 1..%d characters of "
                                               "a-z 0-9 _ -", line,
                                               NGX_HTTP_PRESENCE_DEVICE_LEN);
                return NGX_DECLINED;
            }

            p = eol + 1;
            continue;
        }

        found = ngx_http_presence_gateway_list(&key);

        if (found == NGX_ERROR) {
            ngx_http_presence_gateway_fail(rep, "line %ui: a line is "
                                           "\\\"online|idle|gone ids\\\" "
                                           "or \\\"device name\\\"", line);
            return NGX_DECLINED;
        }

        list = (ngx_uint_t) found;

        if (seen & (1 << list)) {
            ngx_http_presence_gateway_fail(rep, "line %ui: %V given twice",
                                           line,
                                           &ngx_http_presence_lists[list]);
            return NGX_DECLINED;
        }

        seen |= 1 << list;

        if (sp == te) {
            /* an empty list */
            p = eol + 1;
            continue;
        }

        n = 1;

        for (t = sp; t < te; t++) {
            n += (*t == ',');
        }

        if (n > max - total) {
            ngx_http_presence_gateway_fail(rep, "more than %ui ids "
                                           "(presence_gateway_max)", max);
            return NGX_DECLINED;
        }

        total += n;

        ids = ngx_pnalloc(pool, n * sizeof(uint32_t));
        if (ids == NULL) {
            return NGX_ERROR;
        }

        for (i = 0, t = sp; i < n; i++, t = comma + 1) {
            comma = ngx_strlchr(t, te, ',');
            if (comma == NULL) {
                comma = te;
            }

            if (ngx_http_presence_gateway_token(rep, list, i, t, comma - t,
                                                &ids[i])
                != NGX_OK)
            {
                return NGX_DECLINED;
            }
        }

        rep->ids[list] = ids;
        rep->n[list] = n;

        p = eol + 1;
    }

    return NGX_OK;
}


/* "online", "idle", "gone": the list's index; NGX_ERROR: none of them */

static ngx_int_t
ngx_http_presence_gateway_list(ngx_str_t *key)
{
    ngx_uint_t  list;

    for (list = 0; list < NGX_HTTP_PRESENCE_LISTS; list++) {
        if (key->len == ngx_http_presence_lists[list].len
            && ngx_strncmp(key->data, ngx_http_presence_lists[list].data,
                           key->len)
               == 0)
        {
            return list;
        }
    }

    return NGX_ERROR;
}


/* a device name, 1..16 of [a-z0-9_-], kept in rep->device (not copied) */

static ngx_int_t
ngx_http_presence_gateway_device(ngx_http_presence_report_t *rep, u_char *p,
    size_t len)
{
    size_t  i;

    if (len == 0 || len > NGX_HTTP_PRESENCE_DEVICE_LEN) {
        return NGX_DECLINED;
    }

    for (i = 0; i < len; i++) {
        if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9')
              || p[i] == '_' || p[i] == '-'))
        {
            return NGX_DECLINED;
        }
    }

    rep->device.data = p;
    rep->device.len = len;

    return NGX_OK;
}


/*
 * One id of the text form, blanks around it allowed.  A bad one is named
 * by its place, and by its text when that is a number (safe in JSON).
 */

static ngx_int_t
ngx_http_presence_gateway_token(ngx_http_presence_report_t *rep,
    ngx_uint_t list, ngx_uint_t i, u_char *p, size_t len, uint32_t *id)
{
    u_char  *last, *d;

    last = p + len;

    while (p < last && (*p == ' ' || *p == '\t')) {
        p++;
    }

    while (last > p && (last[-1] == ' ' || last[-1] == '\t')) {
        last--;
    }

    if (ngx_http_presence_parse_id(p, last - p, id) == NGX_OK) {
        return NGX_OK;
    }

    d = (p < last && *p == '-') ? p + 1 : p;

    if (last - d >= 1 && last - d <= (ssize_t) NGX_INT64_LEN) {
        while (d < last && *d >= '0' && *d <= '9') {
            d++;
        }
    }

    if (p < last && d == last && last[-1] != '-') {
        ngx_http_presence_gateway_fail(rep, "%V[%ui]: %*s is not a user id "
                                       "(1..%d)",
                                       &ngx_http_presence_lists[list], i,
                                       (size_t) (last - p), p,
                                       NGX_HTTP_PRESENCE_MAX_ID);

    } else {
        ngx_http_presence_gateway_fail(rep, "%V[%ui] is not a user id "
                                       "(1..%d)",
                                       &ngx_http_presence_lists[list], i,
                                       NGX_HTTP_PRESENCE_MAX_ID);
    }

    return NGX_DECLINED;
}


/*
 * An id in two lists says two things of one device at once: 400.  The
 * same id twice in one list is harmless and kept.  All ids tagged with
 * their list, sorted: O(n log n), about 0.5 ms for 10,000 ids.
 */

static ngx_int_t
ngx_http_presence_gateway_twice(ngx_pool_t *pool,
    ngx_http_presence_report_t *rep)
{
    uint64_t    *all;
    ngx_uint_t   list, i, n, lists;

    n = 0;
    lists = 0;

    for (list = 0; list < NGX_HTTP_PRESENCE_LISTS; list++) {
        n += rep->n[list];
        lists += (rep->n[list] != 0);
    }

    if (lists < 2) {
        return NGX_OK;
    }

    all = ngx_palloc(pool, n * sizeof(uint64_t));
    if (all == NULL) {
        return NGX_ERROR;
    }

    n = 0;

    for (list = 0; list < NGX_HTTP_PRESENCE_LISTS; list++) {
        for (i = 0; i < rep->n[list]; i++) {
            all[n++] = ngx_http_presence_tag(rep->ids[list][i], list);
        }
    }

    ngx_qsort(all, n, sizeof(uint64_t), ngx_http_presence_tag_cmp);

    for (i = 1; i < n; i++) {
        if ((all[i] >> 2) == (all[i - 1] >> 2) && all[i] != all[i - 1]) {
            ngx_http_presence_gateway_fail(rep, "user %uD is in both %V and "
                                           "%V",
                                     (uint32_t) (all[i] >> 2),
                                     &ngx_http_presence_lists[all[i - 1] & 3],
                                     &ngx_http_presence_lists[all[i] & 3]);
            return NGX_DECLINED;
        }
    }

    return NGX_OK;
}


static int ngx_libc_cdecl
ngx_http_presence_tag_cmp(const void *one, const void *two)
{
    uint64_t  a, b;

    a = *(const uint64_t *) one;
    b = *(const uint64_t *) two;

    return (a > b) - (a < b);
}

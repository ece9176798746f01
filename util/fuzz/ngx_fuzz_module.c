
/*
 * Copyright (C) The presence module authors
 *
 * libFuzzer inside Debian's own nginx: a core module whose init_process
 * hands the process to LLVMFuzzerRunDriver().  nginx is started with
 * "master_process off", so the fuzz target runs with the real core (pools,
 * ngx_unescape_uri(), ngx_http_arg(), base64url, ngx_sprintf) and the
 * module's real sources, compiled in with the target.  nginx-dev has no
 * core sources to link a fuzzer binary with.
 *
 * FUZZ_ARGS (declared by "env" in the configuration) holds libFuzzer's
 * command line: options, corpus folders, or an input to run again.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <jansson.h>
#include "ngx_fuzz.h"


#define NGX_FUZZ_ARGS_MAX  64


int LLVMFuzzerRunDriver(int *argc, char ***argv,
    int (*cb)(const uint8_t *data, size_t size));
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static ngx_int_t ngx_fuzz_init_process(ngx_cycle_t *cycle);
static ngx_int_t ngx_fuzz_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_fuzz_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


static ngx_core_module_t  ngx_fuzz_module_ctx = {
    ngx_string("fuzz"),
    NULL,
    NULL
};


ngx_module_t  ngx_fuzz_module = {
    NGX_MODULE_V1,
    &ngx_fuzz_module_ctx,                  /* module context */
    NULL,                                  /* module directives */
    NGX_CORE_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_fuzz_init_process,                 /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


/* what configure writes for a dynamic module */

ngx_module_t  *ngx_modules[] = {
    &ngx_fuzz_module,
    NULL
};

char  *ngx_module_names[] = {
    "ngx_fuzz_module",
    NULL
};

char  *ngx_module_order[] = {
    NULL
};


/*
 * The presence module's own ngx_module_t, which http.c names for its
 * request context: module.c, which defines it, is not linked (it names
 * every handler, the table and the stores), and no target makes a context.
 */

ngx_module_t  ngx_http_presence_module;


static ngx_int_t
ngx_fuzz_init_process(ngx_cycle_t *cycle)
{
    int          argc, rc;
    char        *args, *p, *argv[NGX_FUZZ_ARGS_MAX + 2], **pargv;
    ngx_uint_t   i;

    static int   signals[] = { SIGALRM, SIGINT, SIGTERM, SIGHUP, SIGQUIT,
                               SIGUSR1, SIGUSR2, SIGWINCH, SIGXFSZ, SIGCHLD,
                               SIGIO };

    if (ngx_process != NGX_PROCESS_SINGLE) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "fuzz: run nginx with \"master_process off\"");
        exit(2);
    }

    /*
     * libFuzzer leaves alone a signal that has a handler already: its
     * timeouts (SIGALRM) and interrupts must not reach nginx's
     */

    for (i = 0; i < sizeof(signals) / sizeof(int); i++) {
        signal(signals[i], SIG_DFL);
    }

    ngx_http_top_header_filter = ngx_fuzz_header_filter;
    ngx_http_top_body_filter = ngx_fuzz_body_filter;

    argc = 0;
    argv[argc++] = "fuzz";

    p = getenv("FUZZ_ARGS");
    args = p ? strdup(p) : NULL;

    for (p = args ? strtok(args, " ") : NULL;
         p && argc <= NGX_FUZZ_ARGS_MAX;
         p = strtok(NULL, " "))
    {
        argv[argc++] = p;
    }

    argv[argc] = NULL;
    pargv = argv;

    rc = LLVMFuzzerRunDriver(&argc, &pargv, LLVMFuzzerTestOneInput);

    /* libFuzzer exits by itself when it is done or finds a crash */
    exit(rc);
}


void
ngx_fuzz_failed(const char *file, int line, const char *cond)
{
    fprintf(stderr, "fuzz: %s:%d: %s does not hold\n", file, line, cond);
    abort();
}


ngx_http_request_t *
ngx_fuzz_request(ngx_fuzz_request_t *fr)
{
    ngx_http_request_t  *r;

    ngx_memzero(fr, sizeof(ngx_fuzz_request_t));

    fr->log = *ngx_cycle->log;
    fr->c.log = &fr->log;
    fr->c.fd = (ngx_socket_t) -1;

    r = &fr->r;
    r->connection = &fr->c;
    r->main = r;
    r->count = 1;

    /* a body never to be read: ngx_http_discard_request_body() is a no-op */
    r->discard_body = 1;

    /* max 0: every allocation is ngx_palloc_large(), an exact malloc() */
    r->pool = ngx_create_pool(sizeof(ngx_pool_t), &fr->log);
    if (r->pool == NULL) {
        abort();
    }

    fr->c.pool = r->pool;

    if (ngx_list_init(&r->headers_out.headers, r->pool, 2,
                      sizeof(ngx_table_elt_t))
        != NGX_OK)
    {
        abort();
    }

    return r;
}


void
ngx_fuzz_request_free(ngx_fuzz_request_t *fr)
{
    ngx_destroy_pool(fr->r.pool);
}


u_char *
ngx_fuzz_copy(ngx_fuzz_request_t *fr, const uint8_t *data, size_t size)
{
    u_char  *p;

    /* from a pool of max 0: a malloc() of this size */
    p = ngx_pnalloc(fr->r.pool, size);
    if (p == NULL) {
        abort();
    }

    ngx_memcpy(p, data, size);

    return p;
}


ngx_uint_t
ngx_fuzz_canonical_id(u_char *p, size_t len)
{
    size_t    i;
    uint64_t  n;

    if (len == 0 || len > 10 || p[0] == '0') {
        return 0;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (!isdigit(p[i])) {
            return 0;
        }

        n = n * 10 + (p[i] - '0');
    }

    return n >= 1 && n <= NGX_HTTP_PRESENCE_MAX_ID;
}


static ngx_int_t
ngx_fuzz_header_filter(ngx_http_request_t *r)
{
    ngx_fuzz_assert(r->headers_out.status >= 200
                    && r->headers_out.status < 600);

    r->header_sent = 1;

    return NGX_OK;
}


/* every answer of the module is JSON, errors included */

static ngx_int_t
ngx_fuzz_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    json_t     *json;
    ngx_buf_t  *b;

    ngx_fuzz_assert(in && in->next == NULL && r->header_sent);

    b = in->buf;

    json = json_loadb((char *) b->pos, b->last - b->pos, 0, NULL);
    ngx_fuzz_assert(json != NULL);

    json_decref(json);

    return NGX_OK;
}


/*
 * Copyright (C) The presence module authors
 *
 * What the fuzz targets share: a request good enough for the module's
 * parsers, and the checks of their results.
 */


#ifndef _NGX_FUZZ_H_INCLUDED_
#define _NGX_FUZZ_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "../../src/ngx_http_presence.h"


/* a property of the parser broke: stop here, the input is the report */
#define ngx_fuzz_assert(cond)                                                 \
    if (!(cond)) {                                                            \
        ngx_fuzz_failed(__FILE__, __LINE__, #cond);                           \
    }


typedef struct {
    ngx_http_request_t   r;
    ngx_connection_t     c;
    ngx_log_t            log;
} ngx_fuzz_request_t;


void ngx_fuzz_failed(const char *file, int line, const char *cond);

/*
 * A request with a pool of its own that hands every allocation out as a
 * malloc() of its exact size, so that AddressSanitizer sees an overrun of
 * any of them; its response headers and body go to stubs that keep the
 * status and check that the body is JSON.
 */
ngx_http_request_t *ngx_fuzz_request(ngx_fuzz_request_t *fr);
void ngx_fuzz_request_free(ngx_fuzz_request_t *fr);

/* the input in a buffer of its exact size that the parser may write to */
u_char *ngx_fuzz_copy(ngx_fuzz_request_t *fr, const uint8_t *data,
    size_t size);

/* 1: the bytes are the canonical decimal of a user id (an oracle) */
ngx_uint_t ngx_fuzz_canonical_id(u_char *p, size_t len);


#endif /* _NGX_FUZZ_H_INCLUDED_ */
